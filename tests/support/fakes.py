"""Small fakes shared by unit tests."""

from __future__ import annotations

import sys
import threading

from ext_authz.ratelimit import Limit, Limiter


class FakeClock:
    """A settable clock, in seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hammer(limiter: Limiter, limit: Limit, threads: int, hits_each: int) -> int:
    """Hit one key from many threads at once, switching threads as often as possible; return
    how many hits were allowed."""
    start = threading.Barrier(threads)
    allowed = [0] * threads

    def worker(n: int) -> None:
        start.wait()
        allowed[n] = sum(limiter.hit("shared", limit).allowed for _ in range(hits_each))

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
    return sum(allowed)
