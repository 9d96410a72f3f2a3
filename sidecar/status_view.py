"""`sidecar status` as text: pure functions from the xDS server's status document (and one
Envoy's endpoint health) to the lines printed and the exit code.

Everything a peer sent (node ids, clusters, peers, Envoy's error messages, type names) and the
catalog's own error texts pass through `shown` before they reach a terminal: control and
format characters (escape sequences, line breaks, bidirectional overrides) are printed as
`\\xNN` / `\\uNNNN`, and a backslash as `\\\\`, so no remote text can move the cursor, rewrite a
line, set a title or reach the clipboard, and none can pass for another.

Exit codes, the same for the text and `--json`:

    0  ALL_WELL         a version is served, at least one proxy is connected, every proxy has
                        ACKed every type, no stream is refused, the catalog on disk is valid,
                        and (with --envoy-admin) every service has a healthy endpoint
    1                   the status could not be read (`sidecar.cli`)
    2  NEEDS_ATTENTION  something above does not hold, but a version is served to a proxy
    3  NOTHING_SERVES   no valid catalog was ever loaded, or no proxy is connected
"""

from __future__ import annotations

import unicodedata
from collections import Counter
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
NOTHING_SERVES = 3


def shown(text: object) -> str:
    """`text` safe to print on a terminal: control and format characters escaped."""
    return "".join(_escaped(c) for c in str(text))


def _escaped(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if unicodedata.category(c) in _UNPRINTED:
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    return c


# Control, format (bidirectional overrides, zero-width), line and paragraph separators.
_UNPRINTED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def sync_lines(document: StatusDocument) -> list[str]:
    """The catalog served, every proxy's state per type, rejected versions, refused streams."""
    catalog = document.catalog
    rejected = {r.version for r in document.rejected}
    if document.version is None:
        out = [f"serving nothing: no valid catalog was loaded from {shown(catalog.path)}"]
    else:
        out = [f"serving version {document.version} from {shown(catalog.path)}"]
    if not catalog.valid:
        if document.version is None:
            out.append("catalog on disk is INVALID:")
        elif document.version in rejected:
            out.append("catalog on disk is INVALID; serving a version Envoy rejected:")
        else:
            out.append("catalog on disk is INVALID; still serving the last good version:")
        out.extend(f"  {shown(error)}" for error in catalog.errors)
    elif document.version in rejected:
        out.append(f"version {document.version} was rejected by Envoy (see REJECTED below)")
    out.append(f"{len(document.proxies)} proxy(ies) connected")
    twice = {n for n, count in Counter(p.node_id for p in document.proxies).items() if count > 1}
    for proxy in document.proxies:
        out.extend(_proxy_lines(proxy, proxy.node_id in twice))
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


def exit_code(
    document: StatusDocument,
    health: Sequence[endpoints.EndpointHealth],
    health_unknown: bool = False,
) -> int:
    """The exit code of `sidecar status` (the module docstring's table). `health_unknown`: the
    endpoint health was asked for and could not be read."""
    if document.version is None or not document.proxies:
        return NOTHING_SERVES
    well = (
        document.state is State.SYNCED
        and document.catalog.valid
        and not document.refused
        and not health_unknown
        and not endpoints.without_healthy(list(health))
    )
    return ALL_WELL if well else NEEDS_ATTENTION


def _proxy_lines(proxy: ProxyReport, duplicate: bool = False) -> list[str]:
    head = f"  {shown(proxy.node_id)} ({shown(proxy.node_cluster)}, {shown(proxy.protocol)})"
    if proxy.peer:
        head += f" from {shown(proxy.peer)}"
    if proxy.user_agent and proxy.user_agent != "envoy":
        head += f" [{shown(proxy.user_agent)}]"
    if proxy.authenticated:
        head += " (authenticated)"
    out = [head + ("  DUPLICATE node id: another stream names it too" if duplicate else "")]
    out.extend(_type_line(short, report) for short, report in proxy.types.items())
    return out


def _type_line(short: str, report: TypeReport) -> str:
    line = f"    {shown(short):<10} {report.state:<7} acked {shown(report.acked_version)}"
    if report.state is State.NACKED:
        line += f"  error: {shown(report.error)}"
    if report.partial:
        line += "  PARTIAL: may also run what passed of the version it rejected"
    return line


def _rejected_line(rejected: RejectionReport) -> str:
    back = rejected.rolled_back_to
    return (
        f"  REJECTED version {shown(rejected.version)} by {shown(rejected.node_id)} "
        f"({shown(rejected.type)}): {shown(rejected.error)}"
        + (f"; every proxy rolled back to {shown(back)}" if back else "")
    )


def _refused_line(refused: RefusalReport) -> str:
    return (
        f"  REFUSED {shown(refused.node_id) or '(no node id)'} from {shown(refused.peer)}: "
        f"{shown(refused.reason)} ({refused.count} stream(s))"
    )
