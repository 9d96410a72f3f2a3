"""Binding a gRPC server's port with the error our start-up code expects, and the options that
keep the port the server's alone."""

from __future__ import annotations

from typing import Protocol

import grpc

# Options every gRPC server of ours is built with. grpcio sets SO_REUSEPORT on Linux unless told
# not to, so a second server (another of ours, or any process of the same user that sets it too)
# would bind the same port without an error and the kernel would split new connections between
# the two. With it off, that second bind fails and `listen` names the address.
EXCLUSIVE: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)


class _Binds(Protocol):
    def add_insecure_port(self, address: str) -> int: ...

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int: ...


def listen(server: _Binds, address: str, credentials: grpc.ServerCredentials | None = None) -> None:
    """Bind `address` (with TLS when `credentials` are given: `sidecar_shared.tls`) or raise
    OSError naming it. grpcio raises RuntimeError when it cannot bind (older releases returned
    0), and logs the reason from its C core to stderr. The server's options (`EXCLUSIVE`)
    apply to a TLS port as to a plain one."""
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot listen on {address}: the port is in use, or the address is not one of "
            "this host's"
        )
