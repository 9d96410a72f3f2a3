"""How checks reach the decision core. Each transport turns its requests into `CheckInput`s and
`Outcome`s into its responses, and nothing else; the server starts and stops them together.

- `grpc`: `envoy.service.auth.v3.Authorization/Check` (the contract), plus gRPC health.
- `http`: Envoy's HTTP ext_authz protocol on an asyncio server (the fast path).
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    name: str

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be used."""

    def stop(self, grace_s: float) -> None:
        """Stop accepting, finish what is in flight within `grace_s`, release everything."""

    def set_serving(self, serving: bool) -> None:
        """Tell health probes (when the transport answers them) whether checks are served."""
