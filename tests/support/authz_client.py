"""Envoy's side of ext_authz over gRPC: one Check, as Envoy sends it for a route's policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from sidecar_shared.contract import POLICY_KEY, RoutePolicy
from tests.support.policies import encode

OPEN_POLICY = encode(RoutePolicy(service="svc", rbac_required=False))


def check(
    port: int,
    authorization: str,
    timeout: float = 5.0,
    policy: str = OPEN_POLICY,
    headers: Mapping[str, str] | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    source: str = "",
) -> external_auth_pb2.CheckResponse:
    """`headers`: more of the client's headers; `metadata`: the call's own (Envoy sends its
    `traceparent` there); `source`: the client's address, as Envoy names it."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = "GET"
    http.path = "/svc/1"
    http.headers["authorization"] = authorization
    http.headers.update(headers or {})
    request.attributes.context_extensions[POLICY_KEY] = policy
    request.attributes.source.address.socket_address.address = source
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        response: external_auth_pb2.CheckResponse = stub.Check(
            request, timeout=timeout, metadata=tuple(metadata)
        )
        return response


def allowed(port: int, token: str) -> bool:
    return bool(check(port, f"Bearer {token}").HasField("ok_response"))
