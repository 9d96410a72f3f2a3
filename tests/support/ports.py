"""Loopback ports for the servers tests start.

Ports come from a range below the kernel's ephemeral range (32768 and up), so no outgoing
connection of any process can hold one, and, when pytest-xdist runs tests in several workers,
each worker has a range of its own (`PYTEST_XDIST_WORKER` gwN, N < WORKER_RANGES), so two
workers never hand out the same port. A port is checked free (bound and released) when handed
out.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager

_HANDED_OUT: set[int] = set()
LOW, HIGH = 20_000, 32_000  # [LOW, HIGH): above the demo's 191xx, below the ephemeral range
WORKER_RANGES = 4


def _range() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else -1
    if index < 0 or index >= WORKER_RANGES:
        return range(LOW, HIGH)
    size = (HIGH - LOW) // WORKER_RANGES
    return range(LOW + index * size, LOW + (index + 1) * size)


_RANGE = _range()
_random = random.Random()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in a test run.

    A port is handed out before its server binds it (Envoy binds its listener only when xDS
    delivers it), so without the memory a second call could return the same port meanwhile.
    """
    if len(_HANDED_OUT) >= len(_RANGE) - 100:
        _HANDED_OUT.clear()  # thousands of tests later: the earliest servers are long gone
    while True:
        port = _random.choice(_RANGE)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
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
