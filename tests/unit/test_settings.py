"""What ext_authz's settings refuse, and as what: a value that cannot work is a `SettingsError`,
never reported as a key problem (`KeyConfigError`); a JWT secret given twice (as the secret and
as a file) is refused by the server's keys and by `sidecar token` with the same words, naming
both settings."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ext_authz import settings
from ext_authz.keys import KeyConfigError, KeySource
from sidecar import cli
from sidecar_shared.errors import SettingsError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def test_a_settings_error_is_not_a_key_problem() -> None:
    assert not issubclass(SettingsError, KeyConfigError)
    assert not issubclass(KeyConfigError, SettingsError)


def test_a_bad_value_with_no_key_configured_is_reported_as_the_bad_value() -> None:
    with pytest.raises(SettingsError) as caught:
        settings.parse(["--audit-allow-sample", "2"], environ={})
    assert not isinstance(caught.value, KeyConfigError)
    assert "audit-allow-sample must be between 0 and 1" in str(caught.value)


def secret_twice(tmp_path: Path, given_as: str) -> tuple[list[str], dict[str, str]]:
    """The flags and variables that give a secret and a secret file (a good one) together."""
    path = tmp_path / "secret"
    path.write_text(SECRET)
    if given_as == "flags":
        return ["--jwt-secret", SECRET, "--jwt-secret-file", str(path)], {}
    return [], {"SIDECAR_JWT_SECRET": SECRET, "SIDECAR_JWT_SECRET_FILE": str(path)}


def names_both(message: str) -> bool:
    return (
        re.search(r"\bSIDECAR_JWT_SECRET\b", message) is not None
        and "SIDECAR_JWT_SECRET_FILE" in message
        and "not both" in message
    )


def server_refusal(args: list[str], environ: dict[str, str]) -> str:
    """Why ext_authz refuses to start with these settings (its keys are loaded at start)."""
    conf = settings.parse(args, environ=environ)
    with pytest.raises(KeyConfigError) as caught:
        KeySource(conf.keys).load()
    return str(caught.value)


@pytest.mark.parametrize("given_as", ["flags", "variables"])
def test_a_secret_and_a_secret_file_together_are_refused_by_the_server(
    given_as: str, tmp_path: Path
) -> None:
    reason = server_refusal(*secret_twice(tmp_path, given_as))
    assert names_both(reason), reason


@pytest.mark.parametrize("given_as", ["flags", "variables"])
def test_sidecar_token_refuses_a_secret_and_a_secret_file_as_the_server_does(
    given_as: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args, environ = secret_twice(tmp_path, given_as)
    for name in [n for n in os.environ if n.startswith("SIDECAR_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    code = cli.main(["token", "--sub", "alice", *args])

    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""  # no token minted
    assert out.err == f"sidecar token: {server_refusal(args, environ)}\n"
    assert names_both(out.err), out.err
