"""`cacheable` through a real Envoy with ext_authz: a repeated GET is answered by Envoy's cache
on that service only; only answers public by their own headers are shared; every request is
still authorized; a cacheable service keeps its timeout and retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import tokens
from tests.support.gateway import Gateway, gateway, guarded
from tests.support.upstreams import Upstream, running

PUBLIC = {"cache-control": "public, max-age=60"}
READER = {"reader": ["*:read", "*:write"]}


@pytest.fixture
def cached(tmp_path: Path) -> Iterator[tuple[Gateway, Upstream, Upstream]]:
    """A cacheable service and a plain one, both behind tokens."""
    with (
        running("cached", "plain") as (up, plain),
        gateway(
            tmp_path,
            [
                guarded(
                    "cat",
                    up.url,
                    cacheable=True,
                    timeout_ms=800,
                    retry_policy={"max_retries": 2, "retry_on": ["5xx"]},
                ),
                guarded("plain", plain.url),
            ],
            roles=READER,
            authz=True,
        ) as gw,
    ):
        yield gw, up, plain


def alice() -> dict[str, str]:
    return tokens.bearer(sub="alice", roles=["reader"])


def bob() -> dict[str, str]:
    return tokens.bearer(sub="bob", roles=["reader"])


def test_a_repeated_get_is_served_from_envoys_cache_on_that_service_only(
    cached: tuple[Gateway, Upstream, Upstream],
) -> None:
    gw, up, plain = cached
    for u in (up, plain):
        u.behave("ok", headers=PUBLIC)
    first = gw.request("GET", "/cat/items", alice())
    second = gw.request("GET", "/cat/items", alice())
    assert first.status == second.status == 200
    assert second.json()["serial"] == first.json()["serial"]
    assert "age" in second.headers
    assert up.count("GET") == 1
    # HEAD is answered from the same entry; another path is another entry.
    assert gw.request("HEAD", "/cat/items", alice()).status == 200
    assert gw.request("GET", "/cat/other", alice()).status == 200
    assert up.count() == 2
    # A service that is not cacheable: every GET reaches its upstream, same headers or not.
    gw.request("GET", "/plain/items", alice())
    gw.request("GET", "/plain/items", alice())
    assert plain.count("GET") == 2


def test_the_client_can_ask_for_a_fresh_answer(cached: tuple[Gateway, Upstream, Upstream]) -> None:
    gw, up, _ = cached
    up.behave("ok", headers=PUBLIC)
    gw.request("GET", "/cat/items", alice())
    fresh = gw.request("GET", "/cat/items", {**alice(), "cache-control": "no-cache"})
    assert fresh.status == 200
    assert up.count("GET") == 2


@pytest.mark.parametrize(
    "cache_control", ["max-age=60", "private, max-age=60", "no-store", "must-revalidate, max-age=9"]
)
def test_an_answer_not_public_by_its_headers_never_reaches_another_user(
    cached: tuple[Gateway, Upstream, Upstream], cache_control: str
) -> None:
    gw, up, _ = cached
    up.behave("ok", headers={"cache-control": cache_control})
    assert gw.request("GET", "/cat/me", alice()).json()["headers"]["x-user-id"] == "alice"
    seen_by_bob = gw.request("GET", "/cat/me", bob())
    assert seen_by_bob.status == 200
    assert seen_by_bob.json()["headers"]["x-user-id"] == "bob"
    assert up.count("GET") == 2
    # Not stored at all: alice's next request reaches the upstream again.
    gw.request("GET", "/cat/me", alice())
    assert up.count("GET") == 3
    assert "private" in seen_by_bob.headers["cache-control"]


def test_a_shared_answer_is_still_only_given_to_authorized_callers(
    cached: tuple[Gateway, Upstream, Upstream],
) -> None:
    gw, up, _ = cached
    up.behave("ok", headers=PUBLIC)
    assert gw.request("GET", "/cat/list", alice()).status == 200
    assert gw.request("GET", "/cat/list", bob()).json()["serial"] == 1
    assert gw.request("GET", "/cat/list").status == 401
    assert gw.request("GET", "/cat/list", tokens.bearer(sub="eve", roles=["nobody"])).status == 403
    assert up.count("GET") == 1


def test_the_upstream_gets_the_clients_authorization_on_a_cacheable_service(
    cached: tuple[Gateway, Upstream, Upstream],
) -> None:
    gw, _, _ = cached
    headers = alice()
    for method in ("GET", "POST"):
        seen = gw.request(method, "/cat/x", headers, body=b"{}" if method == "POST" else None)
        assert seen.json()["headers"]["authorization"] == headers["authorization"]
        assert not any(h.startswith("x-sidecar") for h in seen.json()["headers"])


def test_a_cacheable_service_keeps_its_timeout_and_retries(
    cached: tuple[Gateway, Upstream, Upstream],
) -> None:
    gw, up, _ = cached
    up.behave("hang")
    resp, took = gw.timed("GET", "/cat/slow", alice())
    assert resp.status == 504
    assert 0.75 <= took < 5, took
    up.forget()
    up.behave("ok", fail_first=2, headers=PUBLIC)
    assert gw.request("GET", "/cat/flaky", alice()).status == 200
    assert up.count("GET", "/cat/flaky") == 3
