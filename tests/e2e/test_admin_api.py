"""The operator API and CSDS on a running xDS server with a real Envoy connected: Explain
against the live catalog, WatchStatus, ValidateCatalog, CSDS per resource with ACK state; no
anonymous caller (off loopback without mTLS, or without a client certificate under mTLS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2

from sidecar_shared.admin_api import ADMIN_SERVICE
from sidecar_shared.admin_api import admin_pb2 as pb
from tests.support import stack, tokens, wait
from tests.support.catalogs import sample_data, write_json
from tests.support.mtls import Ca
from xds_server import typeurls
from xds_server.csds import CSDS_SERVICE

CUSTOMER = {"sub": "u1", "roles": ["customer"], "tenant_id": "acme"}
# Not a loopback address of this host: a caller there is not inside the trust boundary.
OFF_LOOPBACK = "192.0.2.2"


def explain(channel: grpc.Channel, request: pb.ExplainRequest) -> pb.Decision:
    call = channel.unary_unary(
        f"/{ADMIN_SERVICE}/Explain",
        request_serializer=pb.ExplainRequest.SerializeToString,
        response_deserializer=pb.Decision.FromString,
    )
    decision: pb.Decision = call(request, timeout=20)
    return decision


def validate(channel: grpc.Channel, raw: bytes) -> pb.Problems:
    call = channel.unary_unary(
        f"/{ADMIN_SERVICE}/ValidateCatalog",
        request_serializer=pb.ValidateCatalogRequest.SerializeToString,
        response_deserializer=pb.Problems.FromString,
    )
    problems: pb.Problems = call(pb.ValidateCatalogRequest(catalog=raw), timeout=30)
    return problems


def csds(channel: grpc.Channel, **request: object) -> csds_pb2.ClientStatusResponse:
    call = channel.unary_unary(
        f"/{CSDS_SERVICE}/FetchClientStatus",
        request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
        response_deserializer=csds_pb2.ClientStatusResponse.FromString,
    )
    response: csds_pb2.ClientStatusResponse = call(
        csds_pb2.ClientStatusRequest(**request),
        timeout=20,
    )
    return response


def watch(channel: grpc.Channel) -> Iterator[pb.ProxyStatus]:
    call = channel.unary_stream(
        f"/{ADMIN_SERVICE}/WatchStatus",
        request_serializer=pb.WatchStatusRequest.SerializeToString,
        response_deserializer=pb.ProxyStatus.FromString,
    )
    stream: Iterator[pb.ProxyStatus] = call(pb.WatchStatusRequest(), timeout=20)
    return stream


@pytest.fixture
def channel(xds: stack.XdsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{xds.port}") as ch:
        yield ch


def test_explain_answers_from_the_catalog_served_without_counting(
    envoy: stack.Envoy, xds: stack.XdsServer, channel: grpc.Channel
) -> None:
    allowed = explain(
        channel,
        pb.ExplainRequest(method="GET", path="/orders/42", claims_json=json.dumps(CUSTOMER)),
    )
    assert (allowed.status, allowed.reason, allowed.route) == (200, "ok", "orders")
    assert allowed.version == xds.version()
    assert [s.name for s in allowed.steps] == [
        "route",
        "policy",
        "token",
        "role",
        "tenant",
        "limit",
    ]
    assert json.loads(allowed.policy_json)["service"] == "orders"
    denied = explain(
        channel,
        pb.ExplainRequest(method="DELETE", path="/orders/1", claims_json=json.dumps(CUSTOMER)),
    )
    assert (denied.status, denied.reason) == (403, "role_not_allowed")
    assert {s.name: s.verdict for s in denied.steps}["role"] == "fail"
    anonymous = explain(channel, pb.ExplainRequest(method="GET", path="/orders/1"))
    assert (anonymous.status, anonymous.reason) == (401, "missing_token")
    with pytest.raises(grpc.RpcError) as caught:
        explain(channel, pb.ExplainRequest(method="GET", path="/", claims_json="[1]"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sidecar_explain_remote_prints_the_trace(envoy: stack.Envoy, xds: stack.XdsServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "explain",
            "--remote",
            f"127.0.0.1:{xds.port}",
            "--claims",
            json.dumps(CUSTOMER),
            "DELETE",
            "/orders/1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "role     fail" in result.stdout
    assert "decision 403 role_not_allowed" in result.stdout
    # A token is verified here, with ext_authz's key; the server gets its identity.
    tok = tokens.token(sub="u1", roles=["customer"], tenant="acme")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sidecar", "explain", "--json"),
            *("--remote", f"127.0.0.1:{xds.port}", "--token", tok, "GET", "/orders/1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SIDECAR_JWT_SECRET": tokens.TEST_SECRET.decode()},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["status"], data["version"]) == (200, xds.version())
    assert "user u1" in next(s["detail"] for s in data["steps"] if s["name"] == "token")


def test_a_reload_whose_access_tests_fail_is_refused_and_the_served_version_stays(
    envoy: stack.Envoy, xds: stack.XdsServer, sample_catalog: Path
) -> None:
    wait.wait_until(lambda: xds.synced(envoy.node_id), what="Envoy synced")
    served = xds.version()
    data = json.loads(sample_catalog.read_text())
    data["roles"]["customer"].append("orders:delete")  # the sample's tests[1] forbids it
    write_json(sample_catalog, data)
    status = wait.wait_until(
        lambda: (s := xds.status()) and not s["catalog"]["valid"] and s, what="the refusal"
    )
    assert any(e.startswith("tests[1]: ") for e in status["catalog"]["errors"])
    assert status["version"] == served
    assert xds.synced(envoy.node_id)


def test_validate_catalog_runs_the_same_validation_and_access_tests(
    envoy: stack.Envoy, channel: grpc.Channel
) -> None:
    good = sample_data()
    answer = validate(channel, json.dumps(good).encode())
    assert answer.valid and answer.services == len(good["services"])
    bad = sample_data()
    bad["services"][0]["timeout_ms"] = -1
    bad["roles"]["customer"].append("orders:delete")  # the sample's tests catch this
    answer = validate(channel, json.dumps(bad).encode())
    assert not answer.valid
    paths = {p.path for p in answer.problems}
    assert "services[0].timeout_ms" in paths
    answer = validate(channel, json.dumps({**good, "roles": bad["roles"]}).encode())
    assert [p.path for p in answer.problems] == ["tests[1]"]


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_watch_status_streams_the_fleet_and_its_changes(
    envoy: stack.Envoy, xds: stack.XdsServer, channel: grpc.Channel, sample_catalog: Path
) -> None:
    call = channel.unary_stream(
        f"/{ADMIN_SERVICE}/WatchStatus",
        request_serializer=pb.WatchStatusRequest.SerializeToString,
        response_deserializer=pb.ProxyStatus.FromString,
    )
    stream = call(pb.WatchStatusRequest(), timeout=60)
    try:
        first: pb.ProxyStatus = next(stream)
        while not any(
            p.node_id == envoy.node_id
            and all(t.state == "SYNCED" for t in p.types)
            and len(p.types) == 4
            for p in first.proxies
        ):
            first = next(stream)
        assert first.version == xds.version()
        assert json.loads(first.document_json)["version"] == first.version
        data = json.loads(sample_catalog.read_text())
        data["services"][3]["timeout_ms"] += 1
        write_json(sample_catalog, data)
        change: pb.ProxyStatus = next(stream)
        while change.version == first.version:
            change = next(stream)
        assert change.version != first.version
    finally:
        stream.cancel()


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_csds_reports_each_resource_and_its_ack_state(
    envoy: stack.Envoy, xds: stack.XdsServer, channel: grpc.Channel
) -> None:
    wait.wait_until(lambda: xds.synced(envoy.node_id), what="Envoy synced")
    response = csds(channel)
    (config,) = [c for c in response.config if c.node.id == envoy.node_id]
    by_type: dict[str, list[csds_pb2.ClientConfig.GenericXdsConfig]] = {}
    for item in config.generic_xds_configs:
        by_type.setdefault(item.type_url, []).append(item)
    snapshot = xds.snapshot()
    assert set(by_type) == set(typeurls.PUSH_ORDER)
    for type_url, items in by_type.items():
        assert {i.name for i in items} == set(snapshot.resources[type_url])
        for item in items:
            assert item.config_status == csds_pb2.SYNCED
            assert item.client_status == config_dump_shared_pb2.ClientResourceStatus.ACKED
            assert item.version_info == snapshot.versions[type_url]
            assert item.xds_config.type_url == type_url
    lean = csds(channel, exclude_resource_contents=True)
    assert not any(i.HasField("xds_config") for c in lean.config for i in c.generic_xds_configs)
    stream = channel.stream_stream(
        f"/{CSDS_SERVICE}/StreamClientStatus",
        request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
        response_deserializer=csds_pb2.ClientStatusResponse.FromString,
    )
    (streamed,) = list(stream(iter([csds_pb2.ClientStatusRequest()]), timeout=20))
    assert [c.node.id for c in streamed.config] == [envoy.node_id]


def test_no_anonymous_caller_reads_policies_or_decisions(
    sample_catalog: Path, tmp_path: Path
) -> None:
    """Off loopback and without mTLS, the admin API and CSDS refuse every caller (ADS is
    served: an operator chose to expose it, and the server warned)."""
    xds = stack.start_xds(sample_catalog, tmp_path, args=["--xds-host", OFF_LOOPBACK])
    try:
        with grpc.insecure_channel(f"{OFF_LOOPBACK}:{xds.port}") as ch:
            for attempt in (
                lambda: explain(ch, pb.ExplainRequest(method="GET", path="/orders/1")),
                lambda: validate(ch, b"{}"),
                lambda: csds(ch),
                lambda: next(watch(ch)),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    attempt()
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        xds.proc.stop()


def test_under_mtls_only_a_certificate_the_ca_signed_may_call(
    sample_catalog: Path, tmp_path: Path
) -> None:
    ca = Ca(tmp_path / "pki")
    server = ca.server_tls(name="xds")
    operator = ca.client("operator")
    xds = stack.start_xds(
        sample_catalog,
        tmp_path,
        args=[
            *("--xds-tls-cert", str(server.cert), "--xds-tls-key", str(server.key)),
            *("--xds-tls-client-ca", str(server.client_ca)),
        ],
    )
    try:
        trusted = grpc.ssl_channel_credentials(
            ca.ca_file.read_bytes(), operator.key_file.read_bytes(), operator.cert_file.read_bytes()
        )
        with grpc.secure_channel(f"127.0.0.1:{xds.port}", trusted) as ch:
            decision = explain(ch, pb.ExplainRequest(method="GET", path="/orders/1"))
            assert decision.reason == "missing_token"
            assert not csds(ch).config  # no proxy connected
        no_certificate = grpc.ssl_channel_credentials(ca.ca_file.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{xds.port}", no_certificate) as ch:
            with pytest.raises(grpc.RpcError) as caught:
                explain(ch, pb.ExplainRequest(method="GET", path="/orders/1"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no handshake
        with grpc.insecure_channel(f"127.0.0.1:{xds.port}") as ch, pytest.raises(grpc.RpcError):
            csds(ch)
    finally:
        xds.proc.stop()
