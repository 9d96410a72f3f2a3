"""`ext-authz` turns a `SettingsError` raised while it starts (here: tracing that cannot be set
up) into one line on stderr and exit status 1, as it does for a bad flag: no traceback."""

from __future__ import annotations

import signal
from collections.abc import Mapping

import pytest

from ext_authz import cli
from sidecar_shared import tracing
from sidecar_shared.errors import SettingsError
from tests.support import tokens

pytestmark = pytest.mark.unit


def test_a_settings_error_from_tracing_ends_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(service_name: str, environ: Mapping[str, str]) -> None:
        raise SettingsError("OTEL_EXPORTER_OTLP_ENDPOINT: tracing is on but cannot be set up")

    monkeypatch.setattr(tracing, "tracer_provider", broken)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's own handlers
    monkeypatch.setenv("SIDECAR_JWT_SECRET", tokens.TEST_SECRET.decode())

    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("ext-authz: ")]
    assert said == ["ext-authz: OTEL_EXPORTER_OTLP_ENDPOINT: tracing is on but cannot be set up"]
