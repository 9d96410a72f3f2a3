"""Rate-limit keys and response headers (pure).

Keys: a protected route counts per service (or endpoint with its own limit, `orders.export`:
`RoutePolicy.limit_scope`), verified tenant and user; a public route per service (or endpoint)
and client address; every part length-prefixed, so keys never collide. The client
address is Envoy's peer address, or, behind `trusted_hops` proxies that each append to
`x-forwarded-for`, the entry those proxies vouch for. Both are believed only from a trusted
caller (`trusted_caller`); any other caller's checks count against the caller's own address.

Headers: the IETF draft fields by default (`RateLimit-Policy: "orders";q=120;w=60` and
`RateLimit: "orders";r=45;t=30`), or the older `RateLimit-Limit`, `-Remaining` and `-Reset`
for clients that expect those. `q` is the limit a client should plan for and `r` what is left of
it; the burst on top is tolerated, not advertised (a client at `r=0` may still get up to `burst`
more through). A 429 adds `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from ext_authz.ratelimit import Limit, LimitDecision

HeaderStyle = Literal["draft", "legacy"]
Headers = tuple[tuple[str, str], ...]


# The addresses an Envoy beside ext_authz calls from (IPv4, IPv6, IPv4 on a dual-stack socket).
# Only these: a process elsewhere on 127.0.0.0/8 is a different source, and one on another
# host must present a client certificate.
LOOPBACK_CALLERS: Final = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def trusted_caller(peer_host: str, authenticated: bool) -> bool:
    """Whether ext_authz's socket peer is an Envoy whose client address and forwarded headers
    are believed: one with a verified client certificate (`authenticated`), or on loopback."""
    return authenticated or peer_host in LOOPBACK_CALLERS


def client_address(headers: Mapping[str, str], peer: str, trusted_hops: int) -> str:
    if trusted_hops <= 0:
        return peer
    entries = [e.strip() for e in headers.get("x-forwarded-for", "").split(",") if e.strip()]
    if not entries:
        return peer
    # Envoy appended the peer last; each trusted proxy appended the address it saw.
    return entries[max(0, len(entries) - 1 - trusted_hops)]


def user_key(service: str, tenant: str | None, user: str) -> str:
    """Each part is length-prefixed, so no two (service, tenant, user) share a key whatever
    characters they hold (`a|b`,`c` and `a`,`b|c` differ). The same key in memory and Redis."""
    tenant = tenant or ""
    return f"{len(service)}:{service}|u|{len(tenant)}:{tenant}|{len(user)}:{user}"


def address_key(service: str, address: str) -> str:
    return f"{len(service)}:{service}|ip|{len(address)}:{address}"


def rate_headers(name: str, limit: Limit, decision: LimitDecision, style: HeaderStyle) -> Headers:
    remaining = max(0, decision.remaining - limit.burst)
    if style == "legacy":
        out: tuple[tuple[str, str], ...] = (
            ("ratelimit-limit", str(limit.limit)),
            ("ratelimit-remaining", str(remaining)),
            ("ratelimit-reset", str(decision.reset_s)),
        )
    else:
        out = (
            ("ratelimit-policy", f'"{name}";q={limit.limit};w={limit.window_s}'),
            ("ratelimit", f'"{name}";r={remaining};t={decision.reset_s}'),
        )
    if not decision.allowed:
        out += (("retry-after", str(max(1, decision.retry_after_s))),)
    return out
