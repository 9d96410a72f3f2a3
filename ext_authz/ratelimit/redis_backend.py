"""Rate limiting shared between replicas through Redis: one round trip per check.

Storage: one Redis HASH per ``(key, window_s)`` named ``f"{prefix}{{{key}}}:{window_s}"`` (the
braces are a Redis Cluster hash tag), field = bucket index, value = count. A Lua script, loaded
once per limiter with SCRIPT LOAD and run with EVALSHA (reloaded on NOSCRIPT), atomically drops
fields below ``b(now) - N``, sums the counted buckets, increments ``b(now)`` if the sum is below
capacity and sets PEXPIRE to ``W + w`` plus a second of slack. It returns whether it counted the
request plus the remaining buckets as they were *before* the increment; the client then builds
the :class:`LimitDecision` with :func:`window.decide` on that same state, so decisions match the
memory backend exactly for the same sequence of ``(key, time, limit)``.

Time comes from the injected clock (never Redis TIME) and is passed to the script, so replicas
sharing a Redis must have NTP-synced clocks: skew between them loosens the window guarantee by
about the skew.

Deployments (:mod:`ext_authz.ratelimit.redis_url` has the URL forms): one server, Redis Cluster
through redis-py's cluster client (the hash tag keeps each key's hash on one slot, so a check is
still one EVALSHA to the node owning it; MOVED and ASK are followed by the client, and after a
connection error it re-learns the slots and tries once more), or the master Sentinel names
(followed through failovers by :class:`~ext_authz.ratelimit.sentinel_watch.MasterWatch`: the
limiter stops writing to the old master as soon as the Sentinels announce the new one, instead
of when the old one is demoted seconds later).

Start-up (:func:`check_backend`) connects with a generous timeout and runs one check: a server
that answers but cannot be used (authentication, ACL permissions, a Cluster node behind
``redis://``, a plain server behind ``redis+cluster://``) is a :class:`BackendConfigError`; a
server that cannot be reached is reported, and the failure policy applies until it answers.

Every Redis/socket failure after start is raised as :class:`LimiterUnavailable`; no redis
exception type escapes this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as redis_async
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from ext_authz.ratelimit.base import (
    DEFAULT_CLOCK,
    BackendConfigError,
    Clock,
    Limit,
    LimitDecision,
    LimiterUnavailable,
)
from ext_authz.ratelimit.redis_url import RedisTarget, parse_redis_url
from ext_authz.ratelimit.sentinel_watch import FollowingPool, MasterWatch
from ext_authz.ratelimit.window import N_BUCKETS, bucket_of, decide, expiry_ms, to_ms
from sidecar_shared import defaults

DEFAULT_PREFIX = defaults.REDIS_KEY_PREFIX
TTL_SLACK_MS = 1000
"""Added to ``W + w`` so a bucket written by a replica whose clock runs ahead is not lost."""
ACL_NEEDED = "+evalsha +script|load +hgetall +hdel +hincrby +pexpire ~{}*"
"""What an ACL user needs (the script's commands included); ``+info`` is optional."""
STARTUP_TIMEOUT_S = 2.0
"""Socket timeout of the start-up check (requests use ``SIDECAR_REDIS_TIMEOUT_MS``)."""
RECONNECT_EVERY_S = 1.0
"""How often a cluster client that could not learn the slots tries again."""

Client = redis.Redis | RedisCluster
_FAILURES = (RedisError, RedisClusterException, OSError)

# KEYS[1] = hash (bucket index -> count)
# ARGV[1] = current bucket index b, ARGV[2] = N, ARGV[3] = capacity, ARGV[4] = TTL in ms
# Returns {counted (0|1), idx1, count1, idx2, count2, ...} with the buckets kept before counting.
WINDOW_SCRIPT = """
local key = KEYS[1]
local b = tonumber(ARGV[1])
local lo = b - tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local flat = redis.call('HGETALL', key)
local out = {0}
local used = 0
for i = 1, #flat, 2 do
  local idx = tonumber(flat[i])
  local count = tonumber(flat[i + 1])
  if idx == nil or count == nil or idx < lo then
    redis.call('HDEL', key, flat[i])
  else
    if idx <= b then
      used = used + count
    end
    out[#out + 1] = idx
    out[#out + 1] = count
  end
end
if used < capacity then
  out[1] = 1
  redis.call('HINCRBY', key, ARGV[1], 1)
end
redis.call('PEXPIRE', key, ARGV[4])
return out
"""

WINDOW_SCRIPT_SHA = hashlib.sha1(WINDOW_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def redis_key(prefix: str, key: str, window_s: int) -> str:
    """The hash holding ``key``'s buckets for ``window_s``: ``{prefix}{{{key}}}:{window_s}``."""
    return f"{prefix}{{{key}}}:{window_s}"


def connect(
    target: RedisTarget, timeout_s: float, connect_timeout_s: float | None = None
) -> Client:
    """A pooled client for ``target`` with ``timeout_s`` command timeouts and
    ``connect_timeout_s`` (default ``timeout_s``) to open a connection, TLS handshake included.
    A cluster client connects now (to learn the slots) and raises what redis-py raises; the
    others connect on first use."""
    connect_s = timeout_s if connect_timeout_s is None else connect_timeout_s
    options = {k: v for k, v in target.options.items() if not k.startswith("sentinel_")}
    if target.tls:
        options["ssl"] = True
    common: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_s,
        **options,
    }
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],  # type: ignore[no-untyped-call]
            retry=Retry(NoBackoff(), 1),
            **common,
        )
    if target.kind == "sentinel":
        assert target.service is not None
        sentinels = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.nodes),
            sentinel_kwargs={
                "socket_timeout": timeout_s,
                "socket_connect_timeout": connect_s,
                "username": target.options.get("sentinel_username"),
                "password": target.options.get("sentinel_password"),
            },
        )
        client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call,unused-ignore]
            target.service,
            db=target.db,
            retry=Retry(NoBackoff(), 1),
            connection_pool_class=FollowingPool,
            **common,
        )
        return client
    host, port = target.nodes[0]
    return redis.Redis(host=host, port=port, db=target.db, retry=Retry(NoBackoff(), 0), **common)


class RedisLimiter:
    """:class:`~ext_authz.ratelimit.base.Limiter` whose state lives in Redis.

    Thread-safe (redis-py's pool hands each call its own connection). Raises only
    :class:`LimiterUnavailable`. Given ``connect`` instead of a client, it makes its client on
    first use, and again at most every second while that fails (a cluster client cannot exist
    before it has reached a node).
    """

    def __init__(
        self,
        client: Client | None,
        clock: Clock = DEFAULT_CLOCK,
        prefix: str = DEFAULT_PREFIX,
        connect: Callable[[], Client] | None = None,
    ) -> None:
        self._client = client
        self._connect = connect
        self._clock = clock
        self._prefix = prefix
        self._loaded = False
        self._lock = threading.Lock()
        self._next_connect = 0.0
        self._watch: MasterWatch | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_ms: int = defaults.REDIS_TIMEOUT_MS,
        connect_timeout_ms: int = defaults.REDIS_CONNECT_TIMEOUT_MS,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = DEFAULT_CLOCK,
    ) -> RedisLimiter:
        """A limiter for ``url`` with ``timeout_ms`` command timeouts and ``connect_timeout_ms``
        to open a connection (TLS handshake included). Does not connect: the first :meth:`hit`
        does. Raises BackendConfigError when the URL is not one of the forms."""
        target = parse_redis_url(url)
        return cls(
            None,
            clock,
            prefix,
            connect=lambda: connect(target, timeout_ms / 1000, connect_timeout_ms / 1000),
        )

    def close(self) -> None:
        """Close the client's connections (and stop following Sentinel)."""
        if self._watch is not None:
            self._watch.stop()
        if self._client is not None:
            self._client.close()

    def _ready_client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        assert self._connect is not None
        with self._lock:
            if self._client is None:
                now = time.monotonic()
                if now < self._next_connect:
                    raise LimiterUnavailable("redis is not connected yet")
                self._next_connect = now + RECONNECT_EVERY_S
                self._client = self._connect()
                self._watch = watch_master(self._client)
            return self._client

    def key_for(self, key: str, window_s: int) -> str:
        """The Redis key holding ``key``'s buckets for ``window_s``."""
        return redis_key(self._prefix, key, window_s)

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        """Count one request for ``key`` if allowed, in one round trip (after the first load)."""
        now_ms = to_ms(self._clock())
        try:
            raw = self._run(self.key_for(key, limit.window_s), script_args(now_ms, limit))
        except _FAILURES as e:
            raise LimiterUnavailable(f"redis rate limit check failed: {_describe(e)}") from e
        return to_decision(raw, now_ms, limit)

    def _run(self, rkey: str, args: tuple[str, int, int, int]) -> object:
        client = self._ready_client()
        if not self._loaded:
            client.script_load(WINDOW_SCRIPT)
            self._loaded = True
        try:
            return client.evalsha(WINDOW_SCRIPT_SHA, 1, rkey, *args)
        except NoScriptError:  # script cache flushed or failover to a fresh server
            client.script_load(WINDOW_SCRIPT)
            return client.evalsha(WINDOW_SCRIPT_SHA, 1, rkey, *args)


def watch_master(client: Client) -> MasterWatch | None:
    """A started watch keeping `client` on Sentinel's master; None for other deployments."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, FollowingPool):
        return None
    manager = pool.sentinel_manager
    sentinels = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]
    return MasterWatch(pool, sentinels, manager.sentinel_kwargs).start()


def check_backend(
    url: str,
    prefix: str = DEFAULT_PREFIX,
    *,
    connect_timeout_ms: int = defaults.REDIS_CONNECT_TIMEOUT_MS,
) -> str | None:
    """Connect to ``url`` and run one check, now. None when Redis answers; otherwise why it
    cannot be used yet (the failure policy applies until it can): it cannot be reached, or
    opening a TLS connection took longer than ``connect_timeout_ms``, so the checks' own
    connections would time out in the handshake. Raises BackendConfigError when the URL is not
    one of the forms, or when Redis answers but cannot be used as configured (credentials, ACL,
    a certificate that is not trusted)."""
    target = parse_redis_url(url)
    client: Client | None = None
    try:
        client = connect(target, STARTUP_TIMEOUT_S)
        if target.kind != "cluster":
            if target.tls and isinstance(client, redis.Redis):
                took_ms = _connecting_ms(client)
                if took_ms > connect_timeout_ms:
                    return (
                        f"redis ({target.describe()}): connecting took {took_ms:.0f} ms, more "
                        f"than SIDECAR_REDIS_CONNECT_TIMEOUT_MS ({connect_timeout_ms}): raise it"
                    )
            _refuse_a_cluster_node(client)
        limiter = RedisLimiter(client, prefix=prefix)
        # A real check on a key of its own: proves the script, EVALSHA and the ACL key pattern.
        limiter._run(redis_key(prefix, "startup-check", 1), ("0", N_BUCKETS, 1 << 30, 2000))
    except _FAILURES as e:
        unusable = _unusable(e, target, prefix)
        if unusable is not None:
            raise BackendConfigError(
                f"SIDECAR_REDIS_URL ({target.describe()}): {unusable}"
            ) from None
        return f"redis ({target.describe()}) cannot be reached: {_describe(e)}"
    finally:
        if client is not None:
            client.close()
    return None


def _connecting_ms(client: redis.Redis) -> float:
    """How long `client`'s pool takes to open a connection (TCP, TLS handshake, AUTH), in ms;
    the connection is kept in the pool. Runs no command the ACL might refuse."""
    pool = client.connection_pool
    started = time.monotonic()
    connection = pool.get_connection()
    took_ms = (time.monotonic() - started) * 1000
    pool.release(connection)
    return took_ms


def _refuse_a_cluster_node(client: Client) -> None:
    try:
        info = client.info("cluster")
    except NoPermissionError:
        return  # an ACL user without INFO: the check below still catches MOVED
    if isinstance(info, dict) and info.get("cluster_enabled") in (1, "1"):
        raise BackendConfigError(
            "SIDECAR_REDIS_URL points at a Redis Cluster node: write "
            "redis+cluster://host:port[,host:port...] so that every key reaches its node"
        )


def _unusable(e: BaseException, target: RedisTarget, prefix: str) -> str | None:
    """Why a Redis that answered cannot be used; None when it simply could not be reached."""
    text = _describe(e)
    if _untrusted_certificate(e):
        return (
            "its TLS certificate is not trusted (check ssl_ca_certs and the host name in the "
            f"URL): {text}"
        )
    if isinstance(e, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"authentication failed (check the user and password in the URL): {text}"
    if (
        isinstance(e, AuthorizationError | NoPermissionError)
        or "NOPERM" in text
        or "can't run this command" in text
    ):
        return (
            f"the Redis user may not run what rate limiting needs ({ACL_NEEDED.format(prefix)})"
            f": {text}"
        )
    if isinstance(e, AskError):
        return "a Redis Cluster node answered: write redis+cluster://host:port[,host:port...]"
    if isinstance(e, RedisClusterException) and "cluster mode is not enabled" in text.lower():
        return "the server is not in cluster mode: write redis://host:port"
    if isinstance(e, ResponseError) and "unknown command" in text.lower():
        return f"the server refuses a command rate limiting needs: {text}"
    return None


def _untrusted_certificate(e: BaseException) -> bool:
    """Whether `e` (or what caused it) is a TLS certificate that failed verification."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class AsyncRedisLimiter:
    """:class:`RedisLimiter` on redis-py's asyncio client: the same keys, script and
    decisions, awaited on an event loop. Checks that arrive in the same turn of the loop go to
    Redis together, as one pipeline of EVALSHAs (one round trip, and a fraction of redis-py's
    cost per command: about 17 µs of CPU each in a pipeline of 8 against 50 to 70 alone); each
    check is still one atomic script. Use it on one loop only. Raises only
    :class:`LimiterUnavailable`."""

    def __init__(
        self,
        client: redis_async.Redis,
        clock: Clock = DEFAULT_CLOCK,
        prefix: str = DEFAULT_PREFIX,
        max_batch: int = 64,
    ) -> None:
        self._client = client
        self._clock = clock
        self._prefix = prefix
        self._max_batch = max_batch
        self._sha: str | None = None  # set by SCRIPT LOAD
        self._batch: list[tuple[str, tuple[str, int, int, int], asyncio.Future[object]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_ms: int = defaults.REDIS_TIMEOUT_MS,
        connect_timeout_ms: int = defaults.REDIS_CONNECT_TIMEOUT_MS,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = DEFAULT_CLOCK,
    ) -> AsyncRedisLimiter:
        """As :meth:`RedisLimiter.from_url`; connects on the first :meth:`hit`."""
        client = redis_async.Redis.from_url(
            url,
            socket_timeout=timeout_ms / 1000,
            socket_connect_timeout=connect_timeout_ms / 1000,
            retry_on_timeout=False,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        return cls(client, clock=clock, prefix=prefix)

    async def aclose(self) -> None:
        """Close the client's connections (on the loop that used them)."""
        await self._client.aclose()

    async def hit(self, key: str, limit: Limit) -> LimitDecision:
        now_ms = to_ms(self._clock())
        answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._batch.append(
            (redis_key(self._prefix, key, limit.window_s), script_args(now_ms, limit), answer)
        )
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        elif len(self._batch) >= self._max_batch:
            self._flush()
        return to_decision(await answer, now_ms, limit)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(
        self, batch: list[tuple[str, tuple[str, int, int, int], asyncio.Future[object]]]
    ) -> None:
        try:
            if self._sha is None:
                self._sha = str(await self._client.script_load(WINDOW_SCRIPT))
            replies = await self._evalshas(batch, self._sha)
            if any(isinstance(r, NoScriptError) for r in replies):  # cache flushed, failover
                self._sha = str(await self._client.script_load(WINDOW_SCRIPT))
                replies = await self._evalshas(batch, self._sha)
        except (RedisError, OSError, TimeoutError) as e:
            failed = LimiterUnavailable(f"redis rate limit check failed: {_describe(e)}")
            for *_, answer in batch:
                if not answer.done():
                    answer.set_exception(failed)
            return
        for (*_, answer), reply in zip(batch, replies, strict=True):
            if answer.done():
                continue
            if isinstance(reply, Exception):
                answer.set_exception(
                    LimiterUnavailable(f"redis rate limit check failed: {_describe(reply)}")
                )
            else:
                answer.set_result(reply)

    async def _evalshas(
        self, batch: list[tuple[str, tuple[str, int, int, int], asyncio.Future[object]]], sha: str
    ) -> list[object]:
        pipe = self._client.pipeline(transaction=False)
        for rkey, args, _ in batch:
            pipe.evalsha(sha, 1, rkey, *args)
        return list(await pipe.execute(raise_on_error=False))


def script_args(now_ms: int, limit: Limit) -> tuple[str, int, int, int]:
    """ARGV of the window script for a check at ``now_ms``."""
    return (
        str(bucket_of(now_ms, limit.window_s)),
        N_BUCKETS,
        limit.capacity,
        expiry_ms(limit.window_s) + TTL_SLACK_MS,
    )


def to_decision(raw: object, now_ms: int, limit: Limit) -> LimitDecision:
    """The decision of the script's reply, checked against the window rule."""
    counted, buckets = _parse(raw)
    decision, _ = decide(buckets, now_ms, limit)
    if decision.allowed != counted:
        raise LimiterUnavailable("redis rate limit script disagrees with the window rule")
    return decision


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _parse(raw: object) -> tuple[bool, dict[int, int]]:
    """Validate the script's reply: ``[counted, idx, count, idx, count, ...]``."""
    if (
        not isinstance(raw, Sequence)
        or isinstance(raw, str | bytes)
        or len(raw) % 2 != 1
        or not all(isinstance(x, int) for x in raw)
    ):
        raise LimiterUnavailable("unexpected reply from redis rate limit script")
    values: list[int] = list(raw)
    buckets = dict(zip(values[1::2], values[2::2], strict=True))
    return values[0] == 1, buckets
