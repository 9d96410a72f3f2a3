"""One request can be followed everywhere: one trace (Envoy → ext_authz → upstream) in a real
OTLP receiver, and one request id in Envoy's access log, ext_authz's audit line and the
upstream's headers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.echo import EchoServer
from tests.support import http, stack, tokens, wait
from tests.support.catalogs import write_json
from tests.support.otlp import GRPC, HTTP, OtlpReceiver, Span


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """Over gRPC unless a test asks for another protocol (`indirect` parametrization)."""
    otlp = OtlpReceiver(getattr(request, "param", GRPC)).start()
    yield otlp
    otlp.stop()


@pytest.fixture
def traced(
    receiver: OtlpReceiver, tmp_path: Path, echo: Callable[[str], EchoServer]
) -> Iterator[tuple[stack.Envoy, stack.Authz, stack.XdsServer]]:
    catalog = tmp_path / "catalog" / "service_catalog.json"
    catalog.parent.mkdir()
    upstream = echo("orders")
    write_json(
        catalog,
        {
            "services": [
                {
                    "service_name": "orders",
                    "base_path": "/orders",
                    "internal_url": f"http://127.0.0.1:{upstream.port}",
                }
            ],
            "roles": {"admin": ["*"]},
        },
    )
    otel = {**receiver.env, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    xds = stack.start_xds(catalog, tmp_path, args=["--envoy-trace-sampling", "100"], env=otel)
    authz = stack.start_authz(tmp_path, env=otel)
    envoy = stack.start_envoy(xds, tmp_path, authz=authz)
    yield envoy, authz, xds
    for proc in (envoy.proc, authz.proc, xds.proc):
        proc.stop()


@pytest.mark.parametrize("receiver", [GRPC, HTTP], indirect=True)
def test_one_request_is_one_trace_across_envoy_ext_authz_and_the_upstream(
    traced: tuple[stack.Envoy, stack.Authz, stack.XdsServer], receiver: OtlpReceiver
) -> None:
    envoy, authz, _ = traced
    resp = wait.wait_until(
        lambda: (r := http.try_get(envoy.url + "/orders/1", tokens.bearer())) and r.status == 200,
        what="the traced route",
    )
    seen = http.get(envoy.url + "/orders/2", tokens.bearer()).json()["headers"]
    assert resp
    trace_id = seen["traceparent"].split("-")[1]
    request_id = seen["x-request-id"]

    def spans() -> list[Span] | None:
        """The whole trace, once its spans have all arrived (each exporter sends batches)."""
        mine = [s for s in receiver.spans() if s.trace_id == trace_id]
        ids = {s.span_id for s in mine}
        checks = [s for s in mine if s.service == "ext-authz"]
        complete = all(not s.parent_span_id or s.parent_span_id in ids for s in mine)
        return mine if checks and complete else None

    trace = wait.wait_until(spans, timeout=20, what="Envoy's and ext_authz's spans")
    by_id = {s.span_id: s for s in trace}
    check = next(s for s in trace if s.service == "ext-authz")
    # ext_authz's span is a child of Envoy's span for the ext_authz call, itself in the
    # request's trace, whose root is Envoy's ingress span.
    caller = by_id[check.parent_span_id]
    assert caller.service == "envoy"
    assert check.attributes["sidecar.decision"] == "allow"
    assert check.attributes["sidecar.service"] == "orders"
    roots = [s for s in trace if not s.parent_span_id]
    assert len(roots) == 1 and roots[0].service == "envoy"
    # The upstream's traceparent names Envoy's span for the upstream call, in that trace.
    upstream_call = by_id[seen["traceparent"].split("-")[2]]
    assert upstream_call.service == "envoy"

    def access_line() -> dict[str, Any] | None:
        for line in envoy.proc.output().splitlines():
            if line.startswith("{") and request_id in line:
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    logged = wait.wait_until(access_line, what="Envoy's access log line")
    assert logged["trace_id"] == trace_id
    assert logged["path"] == "/orders/2"
    assert logged["status"] == 200
    audit = wait.wait_until(
        lambda: [a for a in authz.audit_lines() if a["request_id"] == request_id],
        what="the audit line",
    )
    assert audit[0]["trace_id"] == trace_id


def test_the_access_log_never_holds_a_query_string(
    traced: tuple[stack.Envoy, stack.Authz, stack.XdsServer],
) -> None:
    envoy, _, _ = traced
    wait.wait_until(
        lambda: (r := http.try_get(envoy.url + "/orders/1", tokens.bearer())) and r.status == 200,
        what="the route",
    )
    http.get(envoy.url + "/orders/3?access_token=secret-in-query", tokens.bearer())
    wait.wait_until(
        lambda: '"/orders/3"' in envoy.proc.output(), what="the request's access log line"
    )
    assert "secret-in-query" not in envoy.proc.output()


def test_a_catalog_edit_is_a_reload_span_with_a_push_span_per_proxy(
    traced: tuple[stack.Envoy, stack.Authz, stack.XdsServer], receiver: OtlpReceiver
) -> None:
    envoy, _, xds = traced
    wait.wait_until(lambda: xds.synced(envoy.node_id), what="initial sync")
    before = xds.version()
    data = json.loads(xds.catalog.read_text())
    data["services"][0]["timeout_ms"] = 4321
    write_json(xds.catalog, data)
    version = wait.wait_until(
        lambda: (v := xds.version()) != before and xds.synced(envoy.node_id) and v,
        what="the edit synced",
    )

    def pushed() -> tuple[Span, Span] | None:
        spans = receiver.spans()
        reloads = {
            s.span_id: s
            for s in spans
            if s.name == "catalog reload"
            and s.attributes.get("sidecar.snapshot.version") == version
        }
        for push in spans:
            if push.name == "xds push" and push.parent_span_id in reloads:
                return reloads[push.parent_span_id], push
        return None

    reload, push = wait.wait_until(pushed, timeout=20, what="the reload and push spans")
    assert reload.service == push.service == "xds-server"
    assert push.attributes["sidecar.node_id"] == envoy.node_id
    assert push.trace_id == reload.trace_id
