"""Binding a gRPC server's port with the error our start-up code expects, and the options that
keep the port the server's alone."""

from __future__ import annotations

from typing import Protocol

# Options every gRPC server of ours is built with. grpcio sets SO_REUSEPORT on Linux unless told
# not to, so a second server (another of ours, or any process of the same user that sets it too)
# would bind the same port without an error and the kernel would split new connections between
# the two. With it off, that second bind fails and `listen` names the address.
EXCLUSIVE: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)


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
