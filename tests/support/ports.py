"""Loopback ports from the OS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in a test run.

    A port is handed out before its server binds it (Envoy binds its listener only when xDS
    delivers it), so without the memory a second call could return the same port meanwhile.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


HOLDERS = ("plain", "sharing")  # what `taken_port` may hold a port with


@contextmanager
def taken_port(holder: str = "plain") -> Iterator[int]:
    """A loopback port something else is listening on, for as long as the block runs. A
    "sharing" holder sets SO_REUSEPORT, as a second copy of a server that sets it does: a
    server that set it too would bind the same port without an error."""
    with socket.socket() as sock:
        if holder == "sharing":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
