"""A service in dry run through a real Envoy: a request its policy would deny reaches the
upstream (with the identity ext_authz verified, if any), and ext_authz records the denial it
would have made in the audit log and its metrics (`decision="would_deny"`); an enforcing
service beside it still denies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar_shared.contract import AUTHZ_TRANSPORTS
from tests.support import engines, tokens, wait
from tests.support.gateway import gateway, guarded
from tests.support.metrics import scraped
from tests.support.upstreams import running

ROLES = {"reader": ["*:read"]}


@pytest.mark.parametrize("transport", AUTHZ_TRANSPORTS)
def test_a_dry_run_service_lets_through_and_records_what_it_would_deny(
    tmp_path: Path, transport: str
) -> None:
    with running("trial", "strict") as (trial, strict):
        services: list[dict[str, Any]] = [
            guarded("trial", trial.url, enforce="dry_run"),
            guarded("strict", strict.url),
        ]
        with gateway(tmp_path, services, roles=ROLES, authz=True, transport=transport) as gw:
            assert gw.authz is not None
            reader = tokens.bearer(sub="rita", roles=["reader"])

            deleted = gw.request("DELETE", "/trial/7", reader)
            assert deleted.status == 200
            (seen,) = trial.seen("DELETE")
            assert seen.headers.get("x-user-id") == "rita"
            anonymous = gw.request("GET", "/trial/7")
            assert anonymous.status == 200
            assert trial.count("GET") == 1

            assert gw.request("DELETE", "/strict/7", reader).status == 403
            assert strict.count() == 0

            def recorded() -> list[dict[str, Any]] | None:
                assert gw.authz is not None
                found = [
                    line for line in gw.authz.audit_lines() if line.get("decision") == "would_deny"
                ]
                return found if len(found) >= 2 else None

            lines = wait.wait_until(recorded, what="two would_deny audit lines")
            assert {(line["status"], line["reason"]) for line in lines} == {
                (403, "role_not_allowed"),
                (401, "missing_token"),
            }
            assert all(line["service"] == "trial" for line in lines)
            metrics = gw.authz.metrics()
            assert (
                scraped(
                    metrics,
                    "ext_authz_checks_total",
                    decision="would_deny",
                    status="403",
                    reason="role_not_allowed",
                    service="trial",
                )
                == 1
            )
            assert (
                scraped(
                    metrics,
                    "ext_authz_checks_total",
                    decision="deny",
                    status="403",
                    service="strict",
                )
                == 1
            )


@pytest.mark.parametrize("decision", ["native", "auto"])
def test_a_dry_run_service_is_never_compiled_to_envoys_filters(
    tmp_path: Path, decision: str
) -> None:
    """With keys Envoy could verify (a JWKS), `native` and `auto` decide an enforcing service
    in Envoy, but a dry-run service stays with ext_authz: Envoy's filters would deny for real."""
    keys = engines.keys_env(tmp_path)
    reader = tokens.bearer(engines.rs256_token(sub="rita", roles=["reader"], tenant=None))
    with running("trial", "strict") as (trial, strict):
        services: list[dict[str, Any]] = [
            guarded("trial", trial.url, enforce="dry_run"),
            guarded("strict", strict.url),
        ]
        with gateway(
            tmp_path,
            services,
            roles=ROLES,
            authz=True,
            xds_env={**keys, "SIDECAR_DECISION": decision},
            authz_env=keys,
        ) as gw:
            assert gw.authz is not None
            assert gw.request("DELETE", "/trial/7", reader).status == 200
            assert trial.count("DELETE") == 1
            assert gw.request("DELETE", "/strict/7", reader).status == 403
            assert strict.count() == 0
            lines = wait.wait_until(
                lambda: (
                    [
                        line
                        for line in gw.authz.audit_lines()  # type: ignore[union-attr]
                        if line.get("decision") == "would_deny"
                    ]
                    or None
                ),
                what="the would_deny audit line",
            )
            assert [(line["service"], line["status"]) for line in lines] == [("trial", 403)]
            rbac = gw.envoy.admin("/stats?filter=rbac.denied").body.decode()
            assert rbac.strip().endswith(": 1"), rbac  # /strict: Envoy's own filter said no
