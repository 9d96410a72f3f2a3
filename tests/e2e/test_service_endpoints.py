"""Endpoints inside a service, through a real Envoy and ext_authz: an endpoint's own limit, roles
and methods hold for what it matches, and the rest of the service keeps the service's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from tests.support import tokens
from tests.support.gateway import Gateway, gateway, guarded

ROLES = {
    "admin": ["*"],
    "reader": ["orders:read"],
    "writer": ["orders:read", "orders:write"],
}
ENDPOINTS: list[dict[str, Any]] = [
    # Expensive: 2 a minute, POST only; a GET of the same path is the service's.
    {
        "name": "export",
        "path": "/orders/{id}/export",
        "match": "template",
        "methods": ["POST"],
        "rate_limit": {"requests_per_minute": 2},
    },
    # Admin-only, whatever the method.
    {"name": "tools", "path": "/orders/tools", "roles": ["admin"]},
    # A POST that reads: a reader may search.
    {
        "name": "search",
        "path": "/orders/search",
        "match": "exact",
        "methods": ["POST"],
        "action": "read",
    },
]


@pytest.fixture
def orders(tmp_path: Path, echo: Callable[[str], EchoServer]) -> Iterator[Gateway]:
    upstream = echo("orders")
    service = guarded(
        "orders",
        f"http://127.0.0.1:{upstream.port}",
        rate_limit={"requests_per_minute": 100},
        endpoints=ENDPOINTS,
    )
    with gateway(tmp_path, [service], roles=ROLES, authz=True) as gw:
        yield gw


def as_user(role: str) -> dict[str, str]:
    return tokens.bearer(sub=f"{role}-1", roles=[role])


def test_an_endpoint_reaches_its_lower_limit_while_the_service_still_answers(
    orders: Gateway,
) -> None:
    writer = as_user("writer")
    first = [orders.request("POST", "/orders/7/export", writer) for _ in range(2)]
    assert [r.status for r in first] == [200, 200]
    assert first[0].headers["ratelimit-policy"] == '"orders.export";q=2;w=60'
    limited = orders.request("POST", "/orders/8/export", writer)
    assert limited.status == 429
    assert limited.headers["ratelimit-policy"].startswith('"orders.export";')
    # The same user, the rest of the service: its own limit, untouched by the endpoint's.
    for method, path in [("GET", "/orders/7"), ("POST", "/orders/7"), ("GET", "/orders/7/export")]:
        resp = orders.request(method, path, writer)
        assert resp.status == 200, (method, path, resp.status)
        assert resp.headers["ratelimit-policy"] == '"orders";q=100;w=60'


def test_an_admin_only_endpoint_refuses_a_reader_the_service_allows(orders: Gateway) -> None:
    reader = as_user("reader")
    assert orders.request("GET", "/orders/7", reader).status == 200
    assert orders.request("GET", "/orders/toolsx", reader).status == 200  # not under it
    refused = orders.request("GET", "/orders/tools/purge", reader)
    assert refused.status == 403
    assert refused.json()["error"] == "forbidden"
    assert orders.request("GET", "/orders/tools", reader).status == 403
    assert orders.request("GET", "/orders/tools/purge", as_user("admin")).status == 200
    # A look-alike of the endpoint's path never reaches the service's route (strict paths).
    for lookalike in ("/orders/TOOLS/purge", "/orders/tools;x/purge", "/orders/tools%2e"):
        assert orders.request("GET", lookalike, reader).status == 400, lookalike


def test_a_method_specific_endpoint_applies_to_post_and_not_get(orders: Gateway) -> None:
    reader = as_user("reader")
    # POST /orders/search counts as a read; any other POST is a write, which a reader may not do.
    assert orders.request("POST", "/orders/search", reader).status == 200
    assert orders.request("POST", "/orders/other", reader).status == 403
    assert orders.request("POST", "/orders/search/x", reader).status == 403  # exact: not it
    # GET of the endpoint's path is the service's (the look-alike guard lets it through).
    got = orders.request("GET", "/orders/search", reader)
    assert got.status == 200
    assert got.headers["ratelimit-policy"] == '"orders";q=100;w=60'
    # The export endpoint's limit counts POSTs only: GETs of its path never reach 429.
    writer = as_user("writer")
    statuses = [orders.request("GET", "/orders/9/export", writer).status for _ in range(4)]
    assert statuses == [200] * 4
    posts = [orders.request("POST", "/orders/9/export", writer).status for _ in range(3)]
    assert posts == [200, 200, 429]
