"""The gRPC transport: `envoy.service.auth.v3.Authorization/Check` ↔ the decision core, and
`grpc.health.v1` for probes, on one grpcio server (sync: it costs less CPU per unary call than
`grpc.aio`).

`source.address` (the client's address) is believed only from a trusted caller
(`ext_authz.limits.trusted_caller`); any other caller's checks count against its own address.

grpcio's own cost per call (its thread hand-off) is several times the whole decision. Options
tried through a real Envoy (bench/check_throughput.py, one cached token, same run): 1 worker
thread lost about 40 % of the throughput, 2, 4 (the default) and 16 were alike, and
`grpc.optimization_target` ("latency" or "throughput") moved nothing beyond noise. The HTTP
transport is the fast path; this one is the contract."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2_grpc

from ext_authz.core import Authorizer
from ext_authz.decision import CheckInput, Headers, Outcome
from ext_authz.grpc_status import denial_headers
from ext_authz.limits import trusted_caller
from sidecar_shared import grpc_ports, tls
from sidecar_shared import health as grpc_health
from sidecar_shared.contract import AUTHZ_HEALTH_SERVICE

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 429: code_pb2.RESOURCE_EXHAUSTED}
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)


def _options(headers: Headers) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
        )
        for k, v in headers
    ]


def peer_host(peer: str) -> str:
    """The address in a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""


def untrusted_peer(context: grpc.ServicerContext) -> str | None:
    """The caller's address when it is not a trusted caller (`trusted_caller`); None when it
    is. A caller is authenticated when TLS verified its certificate (gRPC then names it)."""
    host = peer_host(context.peer())
    return None if trusted_caller(host, context.peer_identities() is not None) else host


def to_input(
    request: external_auth_pb2.CheckRequest,
    trace_parent: str | None = None,
    untrusted_peer: str | None = None,
) -> CheckInput:
    attrs = request.attributes
    http = attrs.request.http
    return CheckInput(
        method=http.method,
        path=http.path,
        headers=http.headers,
        context=attrs.context_extensions,
        client_ip=attrs.source.address.socket_address.address,
        trace_parent=trace_parent,
        untrusted_peer=untrusted_peer,
    )


def _trace_parent(context: grpc.ServicerContext) -> str | None:
    """Envoy's `traceparent` for its ext_authz call, from the call's metadata."""
    for key, value in context.invocation_metadata():
        if key == "traceparent":
            return str(value)
    return None


def to_response(outcome: Outcome, extra: Headers = ()) -> external_auth_pb2.CheckResponse:
    """`extra`: headers for a denial beside the outcome's (`grpc_status.denial_headers`)."""
    if outcome.allowed:
        return external_auth_pb2.CheckResponse(
            status=_OK_STATUS,
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_options(outcome.set_headers),
                headers_to_remove=list(outcome.remove_headers),
                response_headers_to_add=_options(outcome.response_headers),
            ),
        )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=_GRPC_CODE.get(outcome.status, code_pb2.PERMISSION_DENIED),
            message=outcome.reason,
        ),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=outcome.status),
            headers=_options(
                outcome.response_headers + extra if extra else outcome.response_headers
            ),
            body=outcome.body.decode(),
        ),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer, traced: bool = False) -> None:
        """`traced`: read the call's trace context (only worth its cost when tracing is on)."""
        self._authorizer = authorizer
        self._traced = traced

    def Check(self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext) -> Any:
        parent = _trace_parent(context) if self._traced else None
        caller = untrusted_peer(context)
        outcome = self._authorizer.check(to_input(request, parent, caller))
        if outcome.allowed:
            return to_response(outcome)
        headers = request.attributes.request.http.headers
        return to_response(outcome, denial_headers(outcome.status, headers))


class GrpcTransport:
    name = "grpc"

    def __init__(
        self,
        authorizer: Authorizer,
        host: str,
        port: int,
        workers: int,
        traced: bool = False,
        server_tls: tls.ServerTls | None = None,
    ) -> None:
        """`server_tls`: the port speaks TLS (and, with a client CA, mTLS: a peer without a
        certificate that CA signed cannot call Check or health)."""
        self.address = f"{host}:{port}"
        self._tls = server_tls
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check"),
            options=grpc_ports.EXCLUSIVE,
        )
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationService(authorizer, traced), self._server
        )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        grpc_health.set_sync(self._health, [AUTHZ_HEALTH_SERVICE], grpc_health.NOT_SERVING)

    def start(self) -> None:
        credentials = tls.grpc_credentials(self._tls) if self._tls else None
        grpc_ports.listen(self._server, self.address, credentials)
        self._server.start()

    def set_serving(self, serving: bool) -> None:
        status = grpc_health.SERVING if serving else grpc_health.NOT_SERVING
        grpc_health.set_sync(self._health, [AUTHZ_HEALTH_SERVICE], status)

    def stop(self, grace_s: float) -> None:
        self._server.stop(grace=grace_s).wait()
