"""The supervisor restarts children that exit, with back-off, and stops them all."""

from __future__ import annotations

import sys
from pathlib import Path

from sidecar_shared.supervise import Supervisor
from tests.support.fakes import FakeClock
from tests.support.wait import wait_until

EXIT_AT_ONCE = [sys.executable, "-c", "raise SystemExit(3)"]
RUN_LONG = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_child_that_exits_is_restarted_after_a_growing_back_off() -> None:
    clock = FakeClock(1000.0)
    sup = Supervisor(backoff_base_s=0.5, backoff_max_s=2.0, stable_after_s=30.0, clock=clock)
    child = sup.start("flaky", EXIT_AT_ONCE)
    try:
        delays = []
        for _ in range(4):
            wait_until(lambda: child.process.poll() is not None, what="the child to exit")
            (event,) = sup.keep_alive()
            assert event.message.startswith("exited with status 3; restarting in ")
            assert child.restart_at is not None
            delays.append(child.restart_at - clock.now)
            assert sup.keep_alive() == []  # not due yet
            clock.now = child.restart_at
            (event,) = sup.keep_alive()
            assert event.message.startswith("restarted (pid ")
        assert delays == [0.5, 1.0, 2.0, 2.0]
    finally:
        sup.stop_all()


def test_a_child_that_ran_long_enough_restarts_after_the_base_delay_again() -> None:
    clock = FakeClock(1000.0)
    sup = Supervisor(backoff_base_s=0.5, backoff_max_s=8.0, stable_after_s=30.0, clock=clock)
    child = sup.start("flaky", EXIT_AT_ONCE)
    try:
        child.restarts = 3  # it had been failing
        clock.now += 31  # ... then it ran for a while before this exit
        wait_until(lambda: child.process.poll() is not None, what="the child to exit")
        sup.keep_alive()
        assert child.restart_at == clock.now + 0.5
    finally:
        sup.stop_all()


def test_stop_all_ends_every_child() -> None:
    sup = Supervisor()
    children = [sup.start(f"c{i}", RUN_LONG) for i in range(3)]
    sup.stop_all(grace_seconds=5)
    assert all(c.process.poll() is not None for c in children)


def test_stop_all_stops_one_child_at_a_time_newest_first(tmp_path: Path) -> None:
    """The newest child takes a while to stop; the older one is signalled only after it."""
    order = tmp_path / "order"
    ready = tmp_path / "ready"

    def child(name: str, linger_s: float) -> list[str]:
        code = (
            "import pathlib, signal, sys, time\n"
            "def bye(*_):\n"
            f"    time.sleep({linger_s})\n"
            f"    with open({str(order)!r}, 'a') as f: f.write({name!r} + '\\n')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            f"with open({str(ready)!r}, 'a') as f: f.write('x')\n"
            "signal.pause()\n"  # until stop_all's SIGTERM
        )
        return [sys.executable, "-c", code]

    sup = Supervisor()
    sup.start("older", child("older", 0.0))
    sup.start("newer", child("newer", 0.5))
    wait_until(lambda: ready.exists() and len(ready.read_text()) == 2, what="both children up")
    sup.stop_all(grace_seconds=5)
    assert order.read_text().split() == ["newer", "older"]
