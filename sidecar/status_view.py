"""`sidecar status` as text: pure functions from the xDS server's status document (and one
Envoy's endpoint health) to the lines printed and the exit code."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar import endpoints
from xds_server.status import (
    ProxyReport,
    RefusalReport,
    RejectionReport,
    State,
    StatusDocument,
    TypeReport,
)

ALL_WELL = 0
NEEDS_ATTENTION = 2


def sync_lines(document: StatusDocument) -> list[str]:
    """The catalog served, every proxy's state per type, rejected versions, refused streams."""
    catalog = document.catalog
    out = [f"serving version {document.version} from {catalog.path}"]
    if not catalog.valid:
        out.append("catalog on disk is INVALID; still serving the last good version:")
        out.extend(f"  {error}" for error in catalog.errors)
    out.append(f"{len(document.proxies)} proxy(ies) connected")
    for proxy in document.proxies:
        out.extend(_proxy_lines(proxy))
    out.extend(_rejected_line(rejected) for rejected in document.rejected)
    out.extend(_refused_line(refused) for refused in document.refused)
    return out


def health_lines(admin: str, health: Sequence[endpoints.EndpointHealth]) -> list[str]:
    """Endpoint health as the Envoy whose admin listens at `admin` sees it, then each service
    with no healthy endpoint."""
    out = [f"endpoint health seen by the Envoy at {admin}:"]
    out.extend(endpoints.lines(list(health)))
    out.extend(
        f"  NO HEALTHY ENDPOINT: {service} answers 503"
        for service in endpoints.without_healthy(list(health))
    )
    return out


def exit_code(document: StatusDocument, health: Sequence[endpoints.EndpointHealth]) -> int:
    """ALL_WELL when every proxy has ACKed every type served, no stream is being refused and
    every service has a healthy endpoint in `health`; NEEDS_ATTENTION otherwise."""
    well = (
        document.state is State.SYNCED
        and not document.refused
        and not endpoints.without_healthy(list(health))
    )
    return ALL_WELL if well else NEEDS_ATTENTION


def _proxy_lines(proxy: ProxyReport) -> list[str]:
    out = [f"  {proxy.node_id} ({proxy.node_cluster}, {proxy.protocol})"]
    out.extend(_type_line(short, report) for short, report in proxy.types.items())
    return out


def _type_line(short: str, report: TypeReport) -> str:
    line = f"    {short:<10} {report.state:<7} acked {report.acked_version}"
    if report.state is State.NACKED:
        line += f"  error: {report.error}"
    return line


def _rejected_line(rejected: RejectionReport) -> str:
    back = rejected.rolled_back_to
    return (
        f"  REJECTED version {rejected.version} by {rejected.node_id} "
        f"({rejected.type}): {rejected.error}"
        + (f"; every proxy rolled back to {back}" if back else "")
    )


def _refused_line(refused: RefusalReport) -> str:
    return (
        f"  REFUSED {refused.node_id or '(no node id)'} from {refused.peer}: "
        f"{refused.reason} ({refused.count} stream(s))"
    )
