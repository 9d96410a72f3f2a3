"""The ext-authz process against an identity provider over https with a private CA: discovery
from the issuer, a JWKS server that goes down and comes back, `Cache-Control: max-age`, and
unknown-kid refetches, each visible in the logs and metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import idp_tokens, metrics, ports, stack, wait
from tests.support.authz_client import allowed
from tests.support.keys import KeyPair, ec_key, rsa_key
from tests.support.oidc_server import OidcServer
from tests.support.tls import ServerTls, make_server_tls


@pytest.fixture
def tls(tmp_path: Path) -> ServerTls:
    return make_server_tls(tmp_path)


@pytest.fixture
def idp(tls: ServerTls) -> Iterator[OidcServer]:
    server = OidcServer(tls, ports.free_port())
    server.keys = [rsa_key()]
    server.start()
    yield server
    server.stop()


def token(idp: OidcServer, key: KeyPair, alg: str = "RS256") -> str:
    claims = {**idp_tokens.keycloak(), "iss": idp.issuer}
    return idp_tokens.sign(claims, key, alg)


def start(tmp_path: Path, idp: OidcServer, tls: ServerTls, *args: str) -> stack.Authz:
    return stack.start_authz(
        tmp_path,
        env={
            "SIDECAR_JWT_SECRET": "",
            "SIDECAR_JWT_ISSUER": idp.issuer,
            "SIDECAR_JWKS_CA_FILE": str(tls.ca_file),
            "SIDECAR_IDP": "keycloak",
        },
        args=["--jwks-refresh-min", "0.2", *args],
    )


def log_lines(authz: stack.Authz) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in authz.proc.output().splitlines()
        if line.startswith("{") and '"level"' in line
    ]


def messages(authz: stack.Authz, pattern: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(authz) if re.search(pattern, line["message"])]


def metric(authz: stack.Authz, name: str) -> float:
    samples = metrics.scraped_samples(authz.metrics(), name)
    assert samples, f"no metric {name}"
    return sum(s.value for s in samples)


def test_only_the_issuer_and_a_ca_file_are_needed(
    tmp_path: Path, idp: OidcServer, tls: ServerTls
) -> None:
    authz = start(tmp_path, idp, tls)
    with stack.stopping(authz.proc):
        assert allowed(authz.port, token(idp, rsa_key()))
        discovered = messages(authz, "^JWKS discovered$")
        assert discovered[0]["jwks"] == f"https://127.0.0.1:{idp.port}{idp.jwks_path}"


def test_without_the_ca_file_it_refuses_to_start_and_says_what_to_set(idp: OidcServer) -> None:
    result = stack.run_authz_to_exit({"SIDECAR_JWT_ISSUER": idp.issuer})
    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr
    assert "set SIDECAR_JWKS_CA_FILE" in result.stderr


def test_an_issuer_the_configuration_does_not_name_is_refused(
    idp: OidcServer, tls: ServerTls
) -> None:
    result = stack.run_authz_to_exit(
        {"SIDECAR_JWT_ISSUER": idp.issuer + "/", "SIDECAR_JWKS_CA_FILE": str(tls.ca_file)}
    )
    assert result.returncode == 1
    assert f"names issuer '{idp.issuer}', not SIDECAR_JWT_ISSUER='{idp.issuer}/'" in result.stderr


def test_a_jwks_url_over_https_uses_the_ca_file(
    tmp_path: Path, idp: OidcServer, tls: ServerTls
) -> None:
    authz = stack.start_authz(
        tmp_path,
        env={
            "SIDECAR_JWT_SECRET": "",
            "SIDECAR_JWKS": f"https://localhost:{idp.port}{idp.jwks_path}",
            "SIDECAR_JWKS_CA_FILE": str(tls.ca_file),
        },
    )
    with stack.stopping(authz.proc):
        assert allowed(authz.port, token(idp, rsa_key()))


def test_an_outage_is_logged_once_counted_and_survived_and_recovery_is_logged(
    tmp_path: Path, idp: OidcServer, tls: ServerTls
) -> None:
    idp.cache_control = "max-age=1"  # refresh every second
    authz = start(tmp_path, idp, tls)
    with stack.stopping(authz.proc):
        old = token(idp, rsa_key())
        assert allowed(authz.port, old)
        idp.stop()
        wait.wait_until(
            lambda: metric(authz, "ext_authz_jwks_fetch_failures_total") >= 2,
            timeout=15,
            what="two failed fetches",
        )
        assert metric(authz, "ext_authz_jwks_age_seconds") >= 1
        assert allowed(authz.port, old)  # the last good keys stay in use
        newcomer = ec_key("ec-after-outage")
        idp.keys = [rsa_key(), newcomer]
        idp.start()
        wait.wait_until(
            lambda: messages(authz, "^verification keys readable again$"),
            timeout=15,
            what="the recovery logged",
        )
        wait.wait_until(lambda: allowed(authz.port, token(idp, newcomer, "ES256")), timeout=15)
        failures = messages(authz, "^cannot reload verification keys")
        assert len(failures) == 1
        assert failures[0]["source"].endswith(idp.jwks_path)
        recovered = messages(authz, "^verification keys readable again$")[0]
        assert recovered["failures"] >= 2
        assert metric(authz, "ext_authz_jwks_age_seconds") < 5


def test_a_short_max_age_retires_a_removed_key_sooner_than_the_refresh_period(
    tmp_path: Path, idp: OidcServer, tls: ServerTls
) -> None:
    idp.cache_control = "public, max-age=1"
    authz = start(tmp_path, idp, tls, "--key-refresh", "60")
    with stack.stopping(authz.proc):
        doomed = ec_key("ec-doomed")
        idp.keys = [rsa_key(), doomed]
        tok = token(idp, doomed, "ES256")
        wait.wait_until(lambda: allowed(authz.port, tok), timeout=15, what="the key in use")
        idp.keys = [rsa_key()]
        wait.wait_until(
            lambda: not allowed(authz.port, tok), timeout=15, what="the removed key refused"
        )


def test_an_unknown_kid_refetch_is_logged(tmp_path: Path, idp: OidcServer, tls: ServerTls) -> None:
    authz = start(tmp_path, idp, tls)
    with stack.stopping(authz.proc):
        assert not allowed(authz.port, token(idp, ec_key("ec-nobody"), "ES256"))
        line = wait.wait_until(
            lambda: messages(authz, "^JWKS refetched for an unknown key id"),
            what="the refetch logged",
        )[0]
        assert (line["kid"], line["found"]) == ("ec-nobody", False)
        assert metric(authz, "ext_authz_jwks_unknown_kid_refetches_total") == 1


def test_a_redirect_from_https_to_plain_http_is_refused(idp: OidcServer, tls: ServerTls) -> None:
    moved = f"https://127.0.0.1:{idp.port}/moved/certs"
    idp.redirects["/moved/certs"] = f"http://127.0.0.1:{idp.port}{idp.jwks_path}"
    result = stack.run_authz_to_exit(
        {"SIDECAR_JWKS": moved, "SIDECAR_JWKS_CA_FILE": str(tls.ca_file)}
    )
    assert result.returncode == 1
    assert "refused a redirect from https to http://" in result.stderr
