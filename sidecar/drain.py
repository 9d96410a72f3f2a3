"""Draining Envoy before it stops: new connections refused, the requests in flight answered.

`start` asks Envoy's admin first to start its drain sequence (`POST /drain_listeners?graceful`;
with `--drain-strategy immediate` (`ENVOY_DRAIN_ARGS`) every connection is closed after the
response it is serving: HTTP/1.1 with `connection: close`, HTTP/2 with GOAWAY), then to stop
its listeners (`POST /drain_listeners`: new connections are refused). `wait` then waits until no
client connection is open, or no request has been in flight for `quiet_s`, or `timeout_s` has
passed. Checked with Envoy 1.40: without the graceful step kept-alive connections go on sending
requests until Envoy exits under them; without the second step, new connections are accepted
for the whole drain time; an idle kept-alive connection stays open (hence `quiet_s`).

After `wait` returns, Envoy can be stopped (SIGTERM) without cutting a request, and only then
the servers it calls (ext_authz answers checks while Envoy drains).
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

ENVOY_DRAIN_ARGS = ("--drain-strategy", "immediate")
"""Envoy's command-line flags that make a drain close every connection at once (Envoy's own
default, `gradual`, spreads it over `--drain-time-s`, 600 s)."""

_STAT = re.compile(
    r"^http\.(?P<prefix>[^:]+)\.downstream_(?P<what>cx_active|rq_active|rq_total): (?P<n>\d+)$"
)


@dataclass(frozen=True)
class Traffic:
    """Envoy's client side, its admin listener left out."""

    connections: int  # open client connections
    in_flight: int  # requests being served
    received: int  # requests received since Envoy started


def parse_stats(text: str) -> Traffic:
    """`Traffic` from Envoy's `/stats` text (every HTTP connection manager's counts summed)."""
    sums = {"cx_active": 0, "rq_active": 0, "rq_total": 0}
    for line in text.splitlines():
        m = _STAT.match(line.strip())
        if m and m["prefix"] != "admin":
            sums[m["what"]] += int(m["n"])
    return Traffic(sums["cx_active"], sums["rq_active"], sums["rq_total"])


class DrainWatch:
    """Decides when a drain that began at `started` is over, from successive `Traffic`
    samples: no connection open; or no request in flight and none received for `quiet_s`;
    or `timeout_s` passed."""

    def __init__(self, started: float, timeout_s: float, quiet_s: float) -> None:
        self._deadline = started + timeout_s
        self._quiet_s = quiet_s
        self._last: Traffic | None = None
        self._quiet_since: float | None = None

    def over(self, traffic: Traffic, now: float) -> str | None:
        """Why the drain is over, or None while it is not."""
        if traffic.connections == 0:
            return "no client connection open"
        moved = self._last is None or traffic.received != self._last.received
        self._last = traffic
        if traffic.in_flight > 0:
            self._quiet_since = None
        elif moved or self._quiet_since is None:
            self._quiet_since = now  # the last answer went out by now
        if self._quiet_since is not None and now - self._quiet_since >= self._quiet_s:
            return f"no request in flight for {self._quiet_s:g} s"
        if now >= self._deadline:
            return f"drain timeout: {traffic.in_flight} request(s) still in flight"
        return None


def _admin(url: str, method: str = "GET") -> str:
    request = urllib.request.Request(url, method=method)  # noqa: S310 (Envoy's admin URL)
    with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
        return bytes(resp.read()).decode("utf-8", "replace")


def start(admin: str) -> None:
    """Make the Envoy whose admin listens on `admin` (host:port) close each connection after
    its response and refuse new ones. Raises OSError when the admin does not answer."""
    _admin(f"http://{admin}/drain_listeners?graceful", "POST")
    _admin(f"http://{admin}/drain_listeners", "POST")


def wait(
    admin: str,
    timeout_s: float,
    quiet_s: float,
    *,
    stop_early: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Wait until the drain `start` began is over (`DrainWatch`); returns how it ended.
    `stop_early`: checked on every poll; True ends the wait at once (a second Ctrl-C)."""
    watch = DrainWatch(clock(), timeout_s, quiet_s)
    while True:
        try:
            stats = _admin(f"http://{admin}/stats?filter=downstream_(cx|rq)_(active|total)$")
        except OSError as err:
            return f"Envoy's admin stopped answering ({err})"
        why = watch.over(parse_stats(stats), clock())
        if why is not None:
            return why
        if stop_early():
            return "cut short"
        sleep(0.05)
