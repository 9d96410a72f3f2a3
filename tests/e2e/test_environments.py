"""An environment's overlay served through a real Envoy: an address, a limit and a role
changed by `service_catalog.staging.json`; a bad overlay refused, with its file and JSON path,
while the last good merged version keeps serving; the live reload following the overlay."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.support import tokens, wait
from tests.support.catalogs import write_json
from tests.support.gateway import Gateway, gateway, guarded
from tests.support.upstreams import Upstream, running

ROLES = {"admin": ["*"], "clerk": ["billing:read"]}


def _overlay(b: Upstream) -> dict[str, Any]:
    return {
        "services": {
            # the address, through a variable of the server's environment
            "orders": {
                "internal_url": "http://127.0.0.1:${ORDERS_PORT}",
                "rate_limit": {"requests_per_minute": 2, "burst": 0},  # the limit
            }
        },
        "roles": {"clerk": ["orders:read"]},  # the role
    }


def _services(a: Upstream) -> list[dict[str, Any]]:
    return [
        guarded("orders", a.url, rate_limit={"requests_per_minute": 1000}),
        guarded("billing", a.url),
    ]


def _saved(path: Path, data: Any) -> None:
    """Write and rename, as editors save."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _served_by(gw: Gateway, upstream: Upstream, role: str = "clerk") -> bool:
    """Whether an order is answered by `upstream` (each call a new user: the limit is low)."""
    before = upstream.count()
    resp = gw.request("GET", "/orders/1", tokens.bearer(roles=[role], sub=uuid.uuid4().hex))
    return resp.status == 200 and upstream.count() == before + 1


def test_an_overlay_changes_an_address_a_limit_and_a_role_through_envoy(tmp_path: Path) -> None:
    with running("a", "b") as (a, b):
        (tmp_path / "catalog").mkdir()
        write_json(tmp_path / "catalog" / "service_catalog.staging.json", _overlay(b))
        with gateway(
            tmp_path,
            _services(a),
            roles=ROLES,
            authz=True,
            xds_args=["--env", "staging"],
            xds_env={"ORDERS_PORT": str(b.port)},
        ) as gw:
            # The role: a clerk may read orders in staging (the base lets it read billing only).
            wait.wait_until(lambda: _served_by(gw, b), what="a clerk's order served by b")
            # The address: orders goes to b; billing, untouched by the overlay, still to a.
            assert a.count(path="/orders/1") == 0
            assert gw.request("GET", "/billing/1", tokens.bearer()).status == 200
            assert a.count(path="/billing/1") == 1
            # A role's list of permissions replaces the base's (RFC 7386): no billing now.
            clerk = tokens.bearer(roles=["clerk"], sub="one-clerk")
            assert gw.request("GET", "/billing/1", clerk).status == 403
            # The limit: 2 a minute, no burst.
            assert gw.request("GET", "/orders/2", clerk).status == 200
            assert gw.request("GET", "/orders/3", clerk).status == 200
            assert gw.request("GET", "/orders/4", clerk).status == 429


def test_a_bad_overlay_is_refused_with_its_file_and_path_and_the_last_good_version_serves(
    tmp_path: Path,
) -> None:
    with running("a", "b") as (a, b):
        overlay = tmp_path / "catalog" / "service_catalog.staging.json"
        overlay.parent.mkdir()
        write_json(overlay, _overlay(b))
        with gateway(
            tmp_path,
            _services(a),
            roles=ROLES,
            authz=True,
            xds_args=["--env", "staging", "--reload-debounce-ms", "50"],
            xds_env={"ORDERS_PORT": str(b.port)},
        ) as gw:
            wait.wait_until(lambda: _served_by(gw, b, "admin"), what="orders served by b")
            good = gw.xds.version()
            bad = _overlay(b)
            bad["services"]["orders"]["timeout_ms"] = -1
            _saved(overlay, bad)
            status = wait.wait_until(
                lambda: (s := gw.xds.status()) and not s["catalog"]["valid"] and s,
                what="the bad overlay refused",
            )
            assert status["catalog"]["path"] == f"{gw.catalog} + {overlay}"
            assert status["version"] == good
            assert any(
                e.startswith(f"{overlay}: services.orders.timeout_ms: ")
                for e in status["catalog"]["errors"]
            ), status["catalog"]["errors"]
            assert _served_by(gw, b, "admin")  # the last good merged version still serves
            # An unset variable names itself and its place.
            unset = _overlay(b)
            unset["services"]["orders"]["internal_url"] = "http://127.0.0.1:${NOT_SET_PORT}"
            _saved(overlay, unset)
            wait.wait_until(
                lambda: any(
                    e.startswith(f"{overlay}: services.orders.internal_url: ${{NOT_SET_PORT}}")
                    for e in gw.xds.status()["catalog"]["errors"]
                ),
                what="the unset variable reported",
            )
            # Fixed, pointing orders back at a: the reload follows the overlay.
            fixed = _overlay(b)
            fixed["services"]["orders"]["internal_url"] = a.url
            _saved(overlay, fixed)
            wait.wait_until(lambda: gw.xds.status()["catalog"]["valid"], what="the fix loaded")
            wait.wait_until(lambda: gw.xds.synced(gw.envoy.node_id), what="Envoy synced")
            wait.wait_until(lambda: _served_by(gw, a, "admin"), what="orders served by a")
