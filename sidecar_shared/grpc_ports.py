"""Binding a gRPC server's port with the error our start-up code expects."""

from __future__ import annotations

from typing import Protocol


class _Binds(Protocol):
    def add_insecure_port(self, address: str) -> int: ...


def listen(server: _Binds, address: str) -> None:
    """Bind `address` or raise OSError naming it. grpcio raises RuntimeError when it cannot
    bind (older releases returned 0), and logs the reason from its C core to stderr."""
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot listen on {address}: the port is in use, or the address is not one of "
            "this host's"
        )
