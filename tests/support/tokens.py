"""Tokens signed with the test secret. Mint them inside each test: a token made at import
time could expire before a long run reaches the test that uses it."""

from __future__ import annotations

from typing import Any

from ext_authz.tokens import mint

TEST_SECRET = b"test-secret-that-is-long-enough-for-hs256!"


def token(
    sub: str = "alice",
    roles: list[str] | None = None,
    tenant: str | None = "globex",
    secret: bytes = TEST_SECRET,
    ttl_s: int = 600,
) -> str:
    return mint(
        secret, sub=sub, roles=["admin"] if roles is None else roles, tenant=tenant, ttl_s=ttl_s
    )


def bearer(tok: str | None = None, **kw: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(**kw) if tok is None else tok}"}
