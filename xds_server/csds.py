"""Envoy's Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`)
on the xDS gRPC port, so standard tools (grpcdebug, any CSDS client) read what each connected
proxy has. It answers the callers the admin API answers (`admin.caller`), no anonymous one.

For each connected proxy (a node may hold several streams: each is a `ClientConfig`), one
`GenericXdsConfig` per resource of each type it subscribed to, from the snapshot served now:
- `version_info`: the version of that type the proxy ACKed (empty when none);
- `config_status`: SYNCED (it ACKed the version served now), ERROR (it NACKed it; the
  error in `error_state`), STALE (it holds another version, or has not answered yet),
  NOT_SENT (nothing of that version was sent to it);
- `client_status`: ACKED, NACKED or REQUESTED, the same facts as the proxy would say them;
- `xds_config`: the resource as served now (left out with `exclude_resource_contents`).
`node_matchers` with an exact or prefix `node_id` select proxies; other matchers select all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2

from sidecar_shared.tls import ServerTls
from xds_server import typeurls
from xds_server.admin import Context, refuse_anonymous
from xds_server.cache import SnapshotSource
from xds_server.proxies import ProxyStatus, TypeStatus
from xds_server.snapshot import Snapshot

CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"

_CLIENT = config_dump_shared_pb2.ClientResourceStatus


def _statuses(st: TypeStatus | None, current: str | None) -> tuple[int, int]:
    """(config_status, client_status) of one type of one proxy against the version served."""
    if st is None or st.sent_version is None:
        return csds_pb2.NOT_SENT, _CLIENT.REQUESTED
    if current is not None and st.acked_version == current:
        return csds_pb2.SYNCED, _CLIENT.ACKED
    if current is not None and st.nacked_version == current:
        return csds_pb2.ERROR, _CLIENT.NACKED
    return csds_pb2.STALE, _CLIENT.REQUESTED


def _selected(node_id: str, matchers: list[node_pb2.NodeMatcher]) -> bool:
    for matcher in matchers:
        if not matcher.HasField("node_id"):
            continue
        want = matcher.node_id
        if want.HasField("exact") and node_id != want.exact:
            return False
        if want.HasField("prefix") and not node_id.startswith(want.prefix):
            return False
    return True


def client_config(
    proxy: ProxyStatus, snapshot: Snapshot | None, contents: bool = True
) -> csds_pb2.ClientConfig:
    out = csds_pb2.ClientConfig()
    out.node.id = proxy.node_id
    out.node.cluster = proxy.node_cluster
    out.node.user_agent_name = proxy.user_agent
    for type_url in typeurls.PUSH_ORDER:
        st = proxy.types.get(type_url)
        current = snapshot.versions.get(type_url) if snapshot else None
        config_status, client_status = _statuses(st, current)
        resources = snapshot.resources.get(type_url, {}) if snapshot else {}
        for name, resource in resources.items():
            config = out.generic_xds_configs.add(
                type_url=type_url,
                name=name,
                version_info=(st.acked_version or "") if st else "",
                config_status=config_status,
                client_status=client_status,
            )
            if contents:
                config.xds_config.CopyFrom(resource.packed)
            if client_status == _CLIENT.NACKED and st is not None:
                config.error_state.details = st.error or ""
                config.error_state.version_info = st.nacked_version or ""
    return out


class CsdsService:
    def __init__(
        self,
        source: SnapshotSource,
        proxies: Callable[[], list[ProxyStatus]],
        server_tls: ServerTls | None,
    ) -> None:
        self._source = source
        self._proxies = proxies
        self._tls = server_tls

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            CSDS_SERVICE,
            {
                "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                    self.FetchClientStatus,
                    request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                    response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
                ),
                "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                    self.StreamClientStatus,
                    request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                    response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
                ),
            },
        )

    def answer(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        snapshot = self._source.current()
        out = csds_pb2.ClientStatusResponse()
        matchers = list(request.node_matchers)
        for proxy in sorted(self._proxies(), key=lambda p: (p.node_id, p.stream_id)):
            if proxy.node_id and _selected(proxy.node_id, matchers):
                out.config.append(
                    client_config(proxy, snapshot, not request.exclude_resource_contents)
                )
        return out

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: Context
    ) -> csds_pb2.ClientStatusResponse:
        if await refuse_anonymous(context, self._tls):
            return csds_pb2.ClientStatusResponse()
        return self.answer(request)

    async def StreamClientStatus(
        self, requests: AsyncIterator[csds_pb2.ClientStatusRequest], context: Context
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        if await refuse_anonymous(context, self._tls):
            return
        async for request in requests:
            yield self.answer(request)
