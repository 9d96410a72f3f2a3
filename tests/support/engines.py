"""Running the decision suites on each engine (`--decision`, docs/engines.md): tokens of the
suites' shape signed RS256 (an HS secret is never compiled into Envoy), the JWKS both servers
read, and what Envoy itself tells about a decision (its counters, its access-log line)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt

from tests.support import http, stack
from tests.support.keys import rsa_key, write_jwks

SIGNER = "engine-suites"


def rs256_token(
    sub: str = "alice",
    roles: list[str] | None = None,
    tenant: str | None = "globex",
    secret: bytes = b"",
    ttl_s: int = 600,
) -> str:
    """`tokens.token`'s claims signed with `SIGNER`'s RSA key (`secret` is ignored): the
    suites monkeypatch `tokens.token` with it."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "roles": ["admin"] if roles is None else roles,
        "iat": now,
        "exp": now + ttl_s,
    }
    if tenant is not None:
        claims["tenant_id"] = tenant
    return jwt.encode(claims, rsa_key(SIGNER).private, algorithm="RS256", headers={"kid": SIGNER})


def keys_env(workdir: Path) -> dict[str, str]:
    """The variables that give ext_authz and the xDS server `SIGNER`'s JWKS and no HS secret."""
    jwks = write_jwks(workdir / "jwks.json", rsa_key(SIGNER))
    return {"SIDECAR_JWKS": str(jwks), "SIDECAR_JWT_SECRET": ""}


def counters(envoy: stack.Envoy, prefix: str) -> int:
    """The sum of Envoy's counters under `http.ingress_http.<prefix>`."""
    text = envoy.admin(f"/stats?filter=^http\\.ingress_http\\.{prefix}").body.decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if ":" in line)


def flush_access_log(envoy: stack.Envoy) -> None:
    """Have Envoy write out its access-log buffer now (it does every second as
    `commands.envoy` runs it): the admin's `/reopen_logs` flushes before reopening."""
    assert http.http("POST", f"http://127.0.0.1:{envoy.admin_port}/reopen_logs").status == 200


def access_log(envoy: stack.Envoy, flush: bool = True) -> list[dict[str, Any]]:
    """Envoy's access-log lines (its JSON lines on stdout; its own log lines are text), its
    buffer flushed first unless not `flush`."""
    if flush:
        flush_access_log(envoy)
    return [json.loads(line) for line in envoy.proc.output().splitlines() if line.startswith("{")]


def access_line(envoy: stack.Envoy, request_id: str) -> dict[str, Any] | None:
    """Envoy's access-log line for the request `request_id`, once written."""
    return next((a for a in access_log(envoy) if a.get("request_id") == request_id), None)
