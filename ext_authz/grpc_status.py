"""The gRPC status a gRPC client sees for a denial (pure).

Envoy answers a gRPC request that ext_authz denied with a trailers-only reply whose
`grpc-status` it derives from the denial's HTTP status (gRPC's HTTP→gRPC table): 401 →
UNAUTHENTICATED (16) and 403 → PERMISSION_DENIED (7), as we want, but 429 → UNAVAILABLE (14),
which a standard retry policy retries at once, and 431 → UNKNOWN (2). A `grpc-status` header
among the denial's headers replaces Envoy's (checked with Envoy 1.40, on both transports: the
gRPC `DeniedHttpResponse.headers` and, in HTTP mode, a header listed in
`authorization_response.allowed_client_headers`), so for those statuses ext_authz names the
code gRPC means: RESOURCE_EXHAUSTED (8) for "over a limit". Only for gRPC requests
(`content-type: application/grpc…`): an HTTP client never sees a `grpc-status` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ext_authz.decision import Headers

GRPC_STATUS_HEADER: Final = "grpc-status"
RESOURCE_EXHAUSTED: Final = 8
# Denials whose HTTP status Envoy would map to the wrong gRPC code; 401 and 403 map right.
_OVERRIDES: Final[Mapping[int, Headers]] = {
    429: ((GRPC_STATUS_HEADER, str(RESOURCE_EXHAUSTED)),),  # rate limit, failure budget
    431: ((GRPC_STATUS_HEADER, str(RESOURCE_EXHAUSTED)),),  # metadata too large (gRPC's own)
}


def is_grpc(headers: Mapping[str, str]) -> bool:
    """Whether the client's request is a gRPC call."""
    return headers.get("content-type", "").startswith("application/grpc")


def denial_headers(status: int, headers: Mapping[str, str]) -> Headers:
    """Headers to add to a denial with HTTP `status` of a request with `headers`, so that a
    gRPC client gets the right status code (none for other requests and other statuses)."""
    extra = _OVERRIDES.get(status)
    return extra if extra is not None and is_grpc(headers) else ()
