"""`MasterWatch`: stop writing to a master that Sentinel is replacing.

redis-py's Sentinel pool asks the Sentinels for the master only when it opens a connection, and
drops a connection to an old master only once that master refuses a write (READONLY). Sentinel
demotes the old master about ten seconds after a failover (and never while it is cut off from
the Sentinels), and names the new master only about a second after it has promoted it: every
check counted on the old master meanwhile is thrown away when it is demoted.

A watch follows the Sentinels' announcements instead, on one Sentinel at a time:
``+failover-state-send-slaveof-noone`` (the replica chosen is told to become master: from
then on the old master's writes are lost) points the pool at that replica at once;
``+switch-master`` (the Sentinels now name it) and the failover's abort events hand the choice
back to the Sentinels. It also asks them for the master every ``poll_s``, the fallback when an
announcement is missed. When the master changes, idle connections to the old one are closed and
busy ones when they come back, so the next check reaches the new master. A check that reaches
the replica before it has become master gets READONLY and is not counted (the failure policy
answers it). The counts a failover loses are therefore those of the moment between the
promotion and the announcement reaching us, or at most ``poll_s`` of checks when the
announcements are missed.

The watch runs on a daemon thread of its own, with timeouts of its own (``timeout_s``, longer
than a check's): a slow Sentinel never delays a check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisError
from redis.sentinel import SentinelConnectionPool, SentinelConnectionPoolProxy

__all__ = ["FollowingPool", "MasterWatch"]

POLL_S = 1.0
"""How often the Sentinels are asked for the master when no announcement arrives."""
TIMEOUT_S = 2.0
"""Socket timeout of the watch's own connections to the Sentinels."""
FOLLOW_LIMIT_S = 30.0
"""How long a promotion is followed without the Sentinels naming the promoted replica."""

PROMOTING = "+failover-state-send-slaveof-noone"
SETTLED = (
    "+switch-master",
    "+failover-end-for-timeout",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
)

_log = logging.getLogger("ext_authz.ratelimit")


class _FollowingProxy(SentinelConnectionPoolProxy):
    """The pool's view of the master that a connection asks for when it connects: the replica
    being promoted, while one is, else the master the Sentinels name."""

    promoted: tuple[str, int] | None = None

    def get_master_address(self) -> Any:
        promoted = self.promoted
        if promoted is None:
            return super().get_master_address()  # type: ignore[no-untyped-call]
        self.use(promoted)
        return promoted

    def use(self, address: tuple[str, int]) -> None:
        if self.master_address != address:
            self.master_address = address
            pool = self.connection_pool_ref()
            if pool is not None:
                pool.disconnect(inuse_connections=False)


class FollowingPool(SentinelConnectionPool):
    """redis-py's Sentinel pool that a :class:`MasterWatch` can point at a replica being
    promoted before the Sentinels name it."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._following = _FollowingProxy(  # type: ignore[no-untyped-call]
            connection_pool=self,
            is_master=self.is_master,
            check_connection=self.check_connection,
            service_name=service_name,
            sentinel_manager=sentinel_manager,
        )
        self.proxy = self._following
        self.connection_kwargs["connection_pool"] = self._following
        self.promoted_since = 0.0

    @property
    def promoted(self) -> tuple[str, int] | None:
        return self._following.promoted

    def follow(self, address: tuple[str, int]) -> None:
        """Send checks to `address`, the replica being promoted, from now on."""
        self.promoted_since = time.monotonic()
        self._following.promoted = address
        self._following.use(address)

    def settle(self) -> None:
        """Send checks to the master the Sentinels name (asked now)."""
        self._following.promoted = None
        self.get_master_address()  # type: ignore[no-untyped-call]


class MasterWatch:
    """Keeps `pool` on the master being promoted or named (see the module)."""

    def __init__(
        self,
        pool: FollowingPool,
        sentinels: Sequence[tuple[str, int]],
        sentinel_kwargs: dict[str, Any],
        *,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._pool = pool
        self._sentinels = list(sentinels)
        self._kwargs = {
            k: v for k, v in sentinel_kwargs.items() if k in ("username", "password", "ssl")
        }
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sentinel-watch", daemon=True)
        self._next = 0

    def start(self) -> MasterWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout_s + self._poll_s)

    def poll(self) -> None:
        """Ask the Sentinels for the master now; end a promotion they name (or that lasted
        too long)."""
        pool = self._pool
        try:
            promoted = pool.promoted
            if promoted is None:
                pool.get_master_address()  # type: ignore[no-untyped-call]
                return
            named = pool.sentinel_manager.discover_master(pool.service_name)
            if named == promoted or time.monotonic() - pool.promoted_since > FOLLOW_LIMIT_S:
                pool.settle()
        except (RedisError, OSError) as e:  # no Sentinel answered: the next poll tries again
            _log.debug("sentinel poll failed: %s", e)

    def on_event(self, channel: str, data: str) -> None:
        """React to one Sentinel announcement (`channel`, its text)."""
        words = data.split()
        if channel == PROMOTING:
            # "slave <name> <ip> <port> @ <master-name> <master-ip> <master-port>"
            if len(words) >= 6 and words[5] == self._pool.service_name:
                try:
                    self._pool.follow((words[2], int(words[3])))
                except ValueError:
                    return
        elif channel in SETTLED:
            # "+switch-master <name> ..."; the others "master <name> <ip> <port>"
            at = 0 if channel == "+switch-master" else 1
            name = words[at] if len(words) > at else None
            if name == self._pool.service_name:
                try:
                    self._pool.settle()
                except (RedisError, OSError) as e:
                    _log.debug("sentinel poll failed: %s", e)

    def _run(self) -> None:
        while not self._stop.is_set():
            host, port = self._sentinels[self._next % len(self._sentinels)]
            self._next += 1
            try:
                self._listen(host, port)
            except (RedisError, OSError) as e:
                _log.debug("sentinel %s:%d not listened to: %s", host, port, e)
                self.poll()
                self._stop.wait(self._poll_s)

    def _listen(self, host: str, port: int) -> None:
        """Follow one Sentinel's announcements until it fails or the watch stops."""
        client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            **self._kwargs,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(PROMOTING, *SETTLED)
            self.poll()  # a switch announced before we listened is not missed
            last_poll = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=self._poll_s)
                if message is not None:
                    self.on_event(_text(message.get("channel")), _text(message.get("data")))
                if time.monotonic() - last_poll >= self._poll_s:
                    self.poll()
                    last_poll = time.monotonic()
        finally:
            pubsub.close()
            client.close()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""
