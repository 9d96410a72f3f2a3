"""Proxyless gRPC clients (`xds:///` targets: grpcio, grpc-go, grpc-java with an xDS bootstrap)
are not served, and are told so at once (docs/standalone.md#proxyless-grpc-clients-are-not-served).

Why: such a client asks for an `api_listener` and runs only the few HTTP filters gRPC
implements (router, fault, RBAC); everything our listener protects a service with (ext_authz,
the scrubbing of client identity headers before it, the edge limits) it cannot run. A listener
served without them would let its calls skip authentication, and our own listener it rejects
(a NACK) while its calls wait for a listener that never comes, until their deadline. So the
xDS server ends the stream of a node whose `user_agent_name` is gRPC's with
FAILED_PRECONDITION and `REFUSAL`; the client's calls fail UNAVAILABLE with it in their
details, and the refusal is listed in `sidecar status`.
"""

from __future__ import annotations

from typing import Final

REASON: Final = "proxyless_grpc"
REFUSAL: Final = (
    "proxyless gRPC clients (xds:/// targets) are not served by this control plane: its "
    "listeners need Envoy's ext_authz filter, which gRPC does not run; call the service "
    "through an Envoy"
)


def is_proxyless_grpc(user_agent: str) -> bool:
    """Whether a node's `user_agent_name` is a gRPC library's ("gRPC C-core linux Python",
    "gRPC Go", "gRPC Java"); Envoy's is "envoy"."""
    return user_agent.startswith("gRPC ")
