"""The operator API `sidecar.admin.v1.Admin` (protos/sidecar/admin/v1/admin.proto), on the xDS
gRPC port: Explain, WatchStatus, ValidateCatalog.

Who may call it (`caller`): what a caller reads (route policies, decisions, the fleet) is what
a peer of ADS reads, so it answers the callers ADS trusts, and no anonymous one:
- a caller with a verified client certificate (the port requires one when `--xds-tls-client-ca`
  is set: mTLS, the handshake refuses anyone else);
- without mTLS, a caller on loopback only (the port's default: whoever shares the host is
  inside the trust boundary, as for ADS); any other caller is refused UNAUTHENTICATED.
The CSDS service (`csds`) uses the same rule.

Explain runs ext_authz's decision core (`explain.Explainer`) against the catalog of the
snapshot served now, counting nothing. It takes the caller's claims, not a token: the xDS
server holds no JWT key (`sidecar explain` verifies a token where the key is, and sends its
claims).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc

from sidecar_shared import tls
from sidecar_shared.admin_api import ADMIN_SERVICE
from sidecar_shared.admin_api import admin_pb2 as pb
from sidecar_shared.contract import encode
from sidecar_shared.tls import ServerTls
from xds_server.builder import SnapshotBuilder
from xds_server.cache import SnapshotSource
from xds_server.catalog import Catalog, CatalogError
from xds_server.explain import Explainer, Probe, Trace
from xds_server.resources.common import Options
from xds_server.server import identities
from xds_server.status import StatusDocument

# How often WatchStatus looks for a change of the status document.
WATCH_INTERVAL_S = 0.5
MAX_CLAIMS_BYTES = 64 * 1024


class Context(Protocol):
    """The part of `grpc.aio.ServicerContext` the services use (tests pass a fake)."""

    def peer(self) -> str: ...

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> None: ...


def peer_host(peer: str) -> str:
    """The host of a gRPC peer name (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""  # unix sockets and the rest: not an address we can vouch for


def caller(context: Context, server_tls: ServerTls | None) -> str | None:
    """Who is calling, when the admin API answers them: the certificate's first identity, or
    `loopback` (without mTLS); None when the caller must be refused."""
    proven = identities(context.auth_context())
    if proven:
        return proven[0]
    if (server_tls is None or not server_tls.authenticates_clients) and tls.is_loopback(
        peer_host(context.peer())
    ):
        return "loopback"
    return None


async def refuse_anonymous(context: Context, server_tls: ServerTls | None) -> bool:
    """Abort the call UNAUTHENTICATED unless `caller` accepts it; True when refused."""
    if caller(context, server_tls) is not None:
        return False
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "the admin API answers a client certificate the xDS port trusts, or loopback without mTLS",
    )
    return True


def decision_message(trace: Trace, version: str) -> pb.Decision:
    out = pb.Decision(
        version=version,
        route=trace.route or "",
        service=trace.service or "",
        policy_json=encode(trace.policy) if trace.policy else "",
        status=trace.status,
        reason=trace.reason,
        message=trace.message,
        would_deny=trace.would_deny,
    )
    for step in trace.steps:
        out.steps.add(name=step.name, verdict=step.verdict, detail=step.detail)
    return out


def status_message(document: StatusDocument) -> pb.ProxyStatus:
    out = pb.ProxyStatus(
        version=document.version or "",
        document_json=json.dumps(document.to_json(), sort_keys=True),
    )
    for proxy in document.proxies:
        p = out.proxies.add(
            node_id=proxy.node_id, protocol=proxy.protocol, authenticated=proxy.authenticated
        )
        for name, report in sorted(proxy.types.items()):
            p.types.add(
                type=name,
                state=str(report.state),
                acked_version=report.acked_version or "",
                current_version=report.current_version or "",
                error=report.nacked.error if report.nacked else "",
            )
    return out


def _unchanging(document: dict[str, Any]) -> dict[str, Any]:
    """The document without what changes every time it is written."""
    return {k: v for k, v in document.items() if k != "time"}


class AdminService:
    def __init__(
        self,
        source: SnapshotSource,
        catalog_of: Callable[[str], Catalog | None],
        status: Callable[[], StatusDocument],
        options: Options,
        server_tls: ServerTls | None,
        explainer: Explainer | None = None,
        interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        """`catalog_of`: the catalog a served version was built from; `status`: the document
        `/status` answers; `options`: the translation `ValidateCatalog` builds with."""
        self._source = source
        self._catalog_of = catalog_of
        self._status = status
        self._options = options
        self._tls = server_tls
        self._explainer = explainer
        self._interval_s = interval_s

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE,
            {
                "Explain": grpc.unary_unary_rpc_method_handler(
                    self.Explain,
                    request_deserializer=pb.ExplainRequest.FromString,
                    response_serializer=pb.Decision.SerializeToString,
                ),
                "WatchStatus": grpc.unary_stream_rpc_method_handler(
                    self.WatchStatus,
                    request_deserializer=pb.WatchStatusRequest.FromString,
                    response_serializer=pb.ProxyStatus.SerializeToString,
                ),
                "ValidateCatalog": grpc.unary_unary_rpc_method_handler(
                    self.ValidateCatalog,
                    request_deserializer=pb.ValidateCatalogRequest.FromString,
                    response_serializer=pb.Problems.SerializeToString,
                ),
            },
        )

    async def Explain(self, request: pb.ExplainRequest, context: Context) -> pb.Decision:
        if await refuse_anonymous(context, self._tls):
            return pb.Decision()
        claims = await self._claims(request.claims_json, context)
        if claims is False:
            return pb.Decision()
        current = self._source.current()
        catalog = self._catalog_of(current.version) if current is not None else None
        if current is None or catalog is None:
            why = (
                "no catalog is served yet"
                if current is None
                else f"the catalog of version {current.version} is no longer held (rolled back "
                "to an old version?): edit the catalog to serve a new one"
            )
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
            return pb.Decision()
        if self._explainer is None:
            self._explainer = Explainer()
        probe = Probe(
            request.method or "GET",
            request.path or "/",
            dict(request.headers),
            claims=claims if isinstance(claims, dict) else None,
        )
        trace = await asyncio.to_thread(self._explainer.explain, catalog, probe)
        return decision_message(trace, current.version)

    @staticmethod
    async def _claims(text: str, context: Context) -> dict[str, Any] | bool | None:
        """The claims object, None when there is none, False after refusing the call."""
        if not text:
            return None
        problem = None
        if len(text) > MAX_CLAIMS_BYTES:
            problem = f"claims_json is above {MAX_CLAIMS_BYTES} bytes"
        else:
            try:
                claims = json.loads(text)
            except ValueError as err:
                problem = f"claims_json is not JSON: {err}"
            else:
                if isinstance(claims, dict):
                    return claims
                problem = "claims_json must be a JSON object"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return False

    async def WatchStatus(
        self, request: pb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[pb.ProxyStatus]:
        if await refuse_anonymous(context, self._tls):
            return
        last: dict[str, Any] | None = None
        while True:
            document = self._status()
            seen = _unchanging(document.to_json())
            if seen != last:
                last = seen
                yield status_message(document)
            await asyncio.sleep(self._interval_s)

    async def ValidateCatalog(
        self, request: pb.ValidateCatalogRequest, context: Context
    ) -> pb.Problems:
        if await refuse_anonymous(context, self._tls):
            return pb.Problems()
        # A builder of its own: the served one's memory of services is the live catalog's.
        builder = SnapshotBuilder(self._options)
        try:
            snapshot, services = await asyncio.to_thread(builder, request.catalog, "catalog")
        except CatalogError as err:
            out = pb.Problems(valid=False)
            for problem in err.problems:
                out.problems.add(path=problem.path, message=problem.message)
            return out
        return pb.Problems(valid=True, version=snapshot.version, services=services)
