"""The native engine's keys follow the JWKS file, as ext_authz's do: the xDS server reads the
file at every build, inlines its public keys into jwt_authn and watches it like the catalog,
so a replaced file reaches Envoy with the next push, without restarting Envoy; a file that is
not a usable JWKS is refused and the keys Envoy has keep verifying."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.echo import EchoServer
from tests.support import http, stack, wait
from tests.support.catalogs import write_catalog
from tests.support.idp_tokens import sign
from tests.support.keys import KeyPair, rsa_key, write_jwks


def _token(key: KeyPair) -> dict[str, str]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": f"user-of-{key.kid}", "iat": now, "exp": now + 600}
    return {"authorization": f"Bearer {sign(claims, key)}"}


def _replace(jwks: Path, *keys: KeyPair) -> None:
    """Replace the file as a deployment does: write beside it, rename over it."""
    fresh = jwks.with_name(".jwks.json.new")
    write_jwks(fresh, *keys)
    fresh.rename(jwks)


def test_a_replaced_jwks_reaches_envoy_without_a_restart(
    tmp_path: Path, echo: Callable[[str], EchoServer]
) -> None:
    upstream = echo("docs")
    service = {
        "service_name": "docs",
        "base_path": "/docs",
        "internal_url": f"http://127.0.0.1:{upstream.port}",
        "rbac_required": False,
    }
    catalog = write_catalog(tmp_path, [service])
    jwks = tmp_path / "keys" / "jwks.json"
    jwks.parent.mkdir()
    old, new = rsa_key("rotation-old"), rsa_key("rotation-new")
    write_jwks(jwks, old)
    env = {"SIDECAR_JWKS": str(jwks), "SIDECAR_JWT_SECRET": "", "SIDECAR_DECISION": "native"}
    xds = stack.start_xds(catalog, tmp_path, env=env, args=stack.VETO_UNAUTHENTICATED)
    envoy = stack.start_envoy(xds, tmp_path)  # no ext_authz at all: Envoy decides
    url = envoy.url + "/docs/1"

    def status(key: KeyPair) -> int:
        return http.get(url, _token(key)).status

    with stack.stopping(envoy.proc, xds.proc):
        wait.wait_until(lambda: status(old) == 200, what="the first key verifying")
        assert status(new) == 401
        pid = envoy.proc.popen.pid

        _replace(jwks, old, new)  # the new key published beside the old one
        wait.wait_until(lambda: status(new) == 200, what="the new key verifying")
        assert status(old) == 200

        _replace(jwks, new)  # the old key retired
        wait.wait_until(lambda: status(old) == 401, what="the old key refused")
        assert status(new) == 200

        jwks.write_text('{"keys": [{"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}]}')
        refused = wait.wait_until(
            lambda: (s := xds.status()) and not s["catalog"]["valid"] and s,
            what="the symmetric key refused",
        )
        assert any("SIDECAR_JWKS" in e for e in refused["catalog"]["errors"])
        assert status(new) == 200  # the last good keys still verify
        assert "c2VjcmV0" not in str(envoy.config_dump())

        _replace(jwks, new)
        wait.wait_until(lambda: xds.status()["catalog"]["valid"], what="the JWKS fixed")
        assert envoy.proc.alive() and envoy.proc.popen.pid == pid  # never restarted
