"""Small fakes shared by unit tests."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from ext_authz.ratelimit import Limit, Limiter


class FakeClock:
    """A settable clock, in seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """The part of an asyncio transport the HTTP check server uses: what it wrote, whether it
    closed, and a peer on loopback."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> object:
        """Envoy beside ext_authz, over plain TCP."""
        return ("127.0.0.1", 40000) if name == "peername" else None


def race(work: Callable[[int], None], threads: int) -> None:
    """Run `work(0)` … `work(threads - 1)` in as many threads, released together past a barrier
    and switching as often as the interpreter allows, so that races show."""
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        start.wait()
        work(n)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        sys.setswitchinterval(interval)


def hammer(limiter: Limiter, limit: Limit, threads: int, hits_each: int) -> int:
    """Hit one key from many threads at once; return how many hits were allowed."""
    allowed = [0] * threads

    def work(n: int) -> None:
        allowed[n] = sum(limiter.hit("shared", limit).allowed for _ in range(hits_each))

    race(work, threads)
    return sum(allowed)
