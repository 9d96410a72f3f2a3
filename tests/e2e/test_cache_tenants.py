"""Cached answers never cross tenants, through a real Envoy with ext_authz: Envoy's cache keys
an entry on the URL alone, so a catalog that makes a tenant-scoped service cacheable is refused
(the running gateway keeps its last good catalog, which caches nothing for that service), and
each tenant's user gets an answer made for its tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import tokens, wait
from tests.support.catalogs import write_json
from tests.support.gateway import gateway, guarded
from tests.support.upstreams import running

PUBLIC = {"cache-control": "public, max-age=30"}
ROLES = {"reader": ["*:read"]}


def user(sub: str, tenant: str) -> dict[str, str]:
    return tokens.bearer(sub=sub, roles=["reader"], tenant=tenant)


def test_a_tenants_cached_answer_never_reaches_another_tenant(tmp_path: Path) -> None:
    with running("scoped") as (up,):
        scoped: dict[str, Any] = guarded("cat", up.url, tenant_scope="tenant")
        with gateway(tmp_path, [scoped], roles=ROLES, authz=True) as gw:
            up.behave("ok", headers=PUBLIC)
            before = gw.xds.version()
            # Saved whole (written beside, then renamed), as editors do.
            edited = gw.catalog.with_suffix(".tmp")
            write_json(edited, {"services": [{**scoped, "cacheable": True}], "roles": ROLES})
            edited.replace(gw.catalog)

            def settled() -> bool:
                status = gw.xds.status()
                refused = not status["catalog"]["valid"]
                served = status["version"] != before and gw.xds.synced(gw.envoy.node_id)
                return bool(refused or served)

            wait.wait_until(settled, what="the edit refused or served")
            made_for_globex = gw.request("GET", "/cat/report", user("alice", "globex"))
            assert made_for_globex.status == 200
            seen_by_initech = gw.request("GET", "/cat/report", user("carol", "initech"))
            assert seen_by_initech.status == 200
            assert seen_by_initech.json()["headers"]["x-tenant-id"] == "initech"
            assert seen_by_initech.json()["serial"] != made_for_globex.json()["serial"]
            assert up.count("GET") == 2
            # Refused, saying why.
            status = gw.xds.status()
            assert status["version"] == before
            assert any(
                "services[0].cacheable" in e and "tenant" in e for e in status["catalog"]["errors"]
            ), status["catalog"]["errors"]
