"""The decision core, shared by every transport: request attributes in, `Outcome` out.

Order: route policy (its MAC checked once per distinct policy string) → header room → failure
budget → token (public routes: none) → role and tenant → rate limit → allow. `check` runs it
all on the caller's thread (gRPC's workers); `check_or_defer` is for an event loop: everything
before the rate limit runs at once, and when the limiter waits on I/O (Redis) the answer is an
awaitable, so the loop never blocks. Every failure is a precise denial; no exception escapes
either: an unexpected one becomes a 500 denial (fail closed) and is logged without the
request's headers.

What a denied client sees is terse by default (an `error` code, a generic message per status,
the request id); the precise reason is the `reason` code in the audit line and the metrics.
`GuardSettings.verbose_denials` shows the precise sentence instead (for development).

Whom it believes: a route's policy only with a MAC made by a configured key (the xDS server
signs it; a policy a client or a direct caller wrote is a 403 `policy_unauthenticated`); the
client address (`client_ip`, `x-forwarded-for`) only from a trusted caller, an Envoy on
loopback or with a verified client certificate (`CheckInput.untrusted_peer` is None): any
other caller's checks count against its own address.

Guards against abuse, each costing a comparison or a dict lookup per check:
- header room: Envoy refuses (500 with an empty body, after the allow) a request whose header
  lines, with the identity headers added, pass its limit; such a request is a 431 here
  instead, before anything is verified or counted. Lines are counted as Envoy counts them, a
  repeated name once per line (`header_lines`).
- failure budget (`ext_authz.budget`): an address with too many failed authentications in a
  window gets 429 for what fails for the rest of it; a token that verifies still passes (HMAC
  and cached tokens always; asymmetric signatures within the address's allowance of failed
  checks a second).

On allow, the upstream request gets `x-user-id`, `x-user-roles`, `x-request-id` and, when the
token has one, `x-tenant-id`, each overwriting whatever the client sent; identity headers that
are not set are removed; their values are encoded by one rule (`contract.encode_identity`).
`Authorization` is never touched.

The cached allow has a fast path (`allow_quickly`, `ext_authz.fastpath`): the general path
prepares each allow it makes on a protected route, and a later check with the same token,
policy, method and client tenant is answered from it with the same answer and the same side
effects (limit counted, metrics, audit sample), or, whenever anything could differ, by the
general path.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ext_authz.budget import FailureBudget
from ext_authz.decision import (
    CheckInput,
    Decision,
    DecisionObserver,
    Headers,
    Outcome,
    QuickObserver,
)
from ext_authz.fastpath import AnswerKey, Prepared, PreparedAnswers
from ext_authz.limits import (
    HeaderStyle,
    address_key,
    client_address,
    rate_headers,
    user_key,
)
from ext_authz.policy import Verdict, authorize
from ext_authz.policy_file import PolicyTable
from ext_authz.ratelimit import (
    AsyncLimiter,
    GuardedLimiter,
    LimitDecision,
    Limiter,
    MemoryLimiter,
)
from ext_authz.tokens import DEFERRED, Identity, TokenError, TokenVerifier
from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap
from sidecar_shared.contract import (
    IDENTITY_HEADERS,
    METHOD_OVERRIDE_HEADERS,
    POLICY_KEY,
    RATE_LIMIT_HEADERS,
    REQUEST_ID_HEADER,
    ROLES_HEADER,
    SERVICE_KEY,
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
    USER_HEADER,
    Limit,
    PolicyAuthError,
    PolicyError,
    RoutePolicy,
    decode,
    verify,
)

__all__ = ["Authorizer", "GuardSettings", "LimitSettings", "bearer_token", "denial"]


_ERROR_CODE = {
    401: "invalid_token",
    403: "forbidden",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal",
}
# What a client is told by default: nothing about keys, services or roles.
_TERSE_MESSAGE = {
    401: "a valid bearer token is required",
    403: "this request is not allowed",
    429: "too many requests",
    431: "the request has too many headers",
    500: "authorization failed",
}
# The denials a dry-run route turns into allows (`RoutePolicy.dry_run`): the token, role,
# tenant and limit decisions; a request Envoy cannot pass on (431) or a failure (500) is not.
_DRY_RUN = frozenset({401, 403, 429})
# What an allowed dry-run request keeps of its denial's headers (the limit's; no Retry-After).
_DRY_RUN_HEADERS = frozenset(RATE_LIMIT_HEADERS) - {"retry-after"}
# Identity headers the core may add to a request (x-request-id is already there).
_ADDED_HEADERS = 4
# What a fast answer is: the prepared allow, its request id, the limit's remaining and reset.
QuickAllow = tuple[Prepared, str, int, int]


@functools.lru_cache(maxsize=512)
def _denial_parts(status: int, message: str) -> tuple[bytes, Headers]:
    """The body up to the request id, and the response headers, of one kind of denial."""
    head = json.dumps(
        {"error": _ERROR_CODE.get(status, "denied"), "message": message}, separators=(",", ":")
    )
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    if status == 401:
        description = message.replace("\\", "").replace('"', "'")
        headers.append(
            ("www-authenticate", f'Bearer error="invalid_token", error_description="{description}"')
        )
    return (head[:-1] + ',"request_id":').encode(), tuple(headers)


def denial(
    status: int, reason: str, message: str, request_id: str, verbose: bool = True
) -> Outcome:
    """A denial with its JSON body; unless `verbose`, the message is the status's generic one."""
    if not verbose:
        message = _TERSE_MESSAGE.get(status, "denied")
    head, headers = _denial_parts(status, message)
    body = head + json.dumps(request_id).encode() + b"}"
    return Outcome(status, reason, message, request_id, response_headers=headers, body=body)


class PolicyCache:
    """Verified, decoded route policies by their wire string: a route's policy has its MAC
    checked against `keys` and is parsed once. At most `size` are kept (the first stored goes
    first); a refused one is never kept, so a caller's made-up policies cannot evict them."""

    def __init__(self, keys: Sequence[bytes], size: int = 4096) -> None:
        self._keys = tuple(keys)
        self._items: BoundedMap[str, tuple[str, RoutePolicy]] = BoundedMap(size)
        self._lock = threading.Lock()

    def get(self, text: str) -> RoutePolicy:
        """Raises PolicyAuthError when `text` has no MAC made by a key, PolicyError when it is
        missing or unreadable."""
        found = self._items.get(text)
        if found is not None:
            return found[1]
        policy = decode(verify(text, self._keys) if text else text)
        with self._lock:
            self._items[text] = (text, policy)
        return policy

    def text(self, text: str) -> str:
        """The string kept for `text` (equal to it) when it is kept, else `text`: what holds
        on to a policy's text shares one copy."""
        found = self._items.get(text)
        return text if found is None else found[0]


def header_lines(headers: Mapping[str, str]) -> int:
    """At least as many header lines as Envoy counts against its limit for a request whose
    check carries `headers`. Envoy hands ext_authz one value per name, the lines of a repeated
    name joined by commas (both transports), so every comma may be a line of its own: a value
    with commas of its own counts as several, which only matters near the limit."""
    lines = len(headers)
    for value in headers.values():
        if "," in value:  # rare: a test costs less than a count
            lines += value.count(",")
    return lines


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, exactly as sent (any spaces around
    it stay, so the verifier refuses them); None when there is none."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token


class LogThrottle:
    """At most one log line per `interval_s` for one kind of event a caller can repeat at will:
    `ready()` says whether to write one now, and how many were held back since the last."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def ready(self) -> int | None:
        """The number held back since the last line when one may be written now, else None."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self._interval_s
            held, self._held = self._held, 0
            return held


@dataclass(frozen=True)
class LimitSettings:
    header_style: HeaderStyle = "draft"
    trusted_hops: int = 0  # proxies in front of Envoy that append to x-forwarded-for


@dataclass(frozen=True)
class GuardSettings:
    verbose_denials: bool = False  # show clients the precise reason (development only)
    failure_budget: int = defaults.FAILED_AUTH_BUDGET  # failed authentications per address...
    failure_window_s: int = defaults.FAILED_AUTH_WINDOW_S  # ...per window; 0 budget: no limit
    costly_per_s: int = defaults.FAILED_AUTH_COSTLY_PER_S  # failed asymmetric checks/s, over it
    max_request_headers: int = defaults.EDGE_MAX_REQUEST_HEADERS  # Envoy's (the same setting)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs more to build, on every check
class _Done:
    """A check answered before (or without) the rate limit."""

    request: CheckInput
    outcome: Outcome
    identity: Identity | None
    policy: RoutePolicy | None
    address: str


@dataclass(slots=True)
class _Pending:
    """A check that only waits for the route's limit to count it."""

    request: CheckInput
    policy: RoutePolicy
    key: str
    limit: Limit
    request_id: str
    identity: Identity | None
    address: str


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        limiter: Limiter,
        observers: Sequence[DecisionObserver],
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
        limits: LimitSettings = LimitSettings(),
        guard: GuardSettings = GuardSettings(),
        async_limiter: AsyncLimiter | None = None,
        policy_keys: Sequence[bytes] = (),
        policy_table: PolicyTable | None = None,
        fast_path: bool = True,
    ) -> None:
        """`limiter` must not raise (wrap a backend in `GuardedLimiter`); nor may observers.
        `async_limiter`, when given, counts for `check_or_defer` (the event-loop transports)
        against the same store as `limiter`. `policy_keys`: the keys a route policy's MAC may
        be made with (with none, every policy is refused). `policy_table`: the policy file,
        which decides checks whose route carries no policy (an Envoy we do not configure).
        `fast_path`: answer cached allows from prepared answers (`allow_quickly`) when every
        observer is a `QuickObserver`."""
        self._verifier = verifier
        self._limiter = limiter
        self._async_limiter = async_limiter
        self._observers = tuple(observers)
        self._log = log
        self._clock = clock
        self._header_style = limits.header_style
        self._trusted_hops = limits.trusted_hops
        self._policies = PolicyCache(policy_keys)
        self._table = policy_table
        self._policy_log = LogThrottle(1.0)
        self._verbose = guard.verbose_denials
        self._header_room = guard.max_request_headers - _ADDED_HEADERS
        self._budget = FailureBudget(
            guard.failure_budget, guard.failure_window_s, clock, costly_per_s=guard.costly_per_s
        )
        quick = [o for o in self._observers if isinstance(o, QuickObserver)]
        self._fast = fast_path and len(quick) == len(self._observers)
        self._gates = tuple(o.passes for o in quick if o.gates)
        self._counts = tuple(o for o in quick if o.counts)
        # An answer is used only while the token cache holds its token: no more are kept.
        self._prepared = PreparedAnswers(verifier.cache.size, verifier.key_generation())
        # The limit count of the fast path: the in-memory limiter's, when it is the one in use
        # (Redis is awaited or waited on: the general path's).
        backend = limiter.backend if isinstance(limiter, GuardedLimiter) else limiter
        self._count = (
            backend.count if isinstance(backend, MemoryLimiter) and async_limiter is None else None
        )
        self._sweep = backend.sweep if isinstance(backend, MemoryLimiter) else None

    def tick(self) -> None:
        """Housekeeping a transport runs about once a second (the in-memory limiter's sweep
        of idle keys, which the fast path leaves out)."""
        if self._sweep is not None:
            self._sweep()

    def _deny(self, status: int, reason: str, message: str, request_id: str) -> Outcome:
        return denial(status, reason, message, request_id, self._verbose)

    async def aclose(self) -> None:
        """Release the asynchronous limiter's connections (on the loop that used them)."""
        if self._async_limiter is not None:
            await self._async_limiter.aclose()

    def allow_quickly(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        policy_text: str,
        client_ip: str,
        untrusted_peer: str | None,
        trace_parent: str | None = None,
    ) -> QuickAllow | None:
        """The answer to a cached allow (as `check` would answer it, side effects included),
        or None, having done nothing, when the general path must decide (arguments as in
        `CheckInput`; `policy_text` the route's policy string)."""
        if not self._fast:
            return None
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        return self.allow_prepared(
            method,
            path,
            policy_text,
            authorization,
            headers.get(TENANT_HEADER),
            headers.get(REQUEST_ID_HEADER),
            header_lines(headers),
            any(h in headers for h in METHOD_OVERRIDE_HEADERS),
            headers.get("traceparent"),
            client_ip,
            untrusted_peer,
            lambda: headers,
            trace_parent,
        )

    def allow_prepared(
        self,
        method: str,
        path: str,
        policy_text: str,
        authorization: str,
        client_tenant: str | None,
        request_id: str | None,
        lines: int,
        overridden: bool,
        traceparent: str | None,
        client_ip: str,
        untrusted_peer: str | None,
        headers: Callable[[], Mapping[str, str]],
        trace_parent: str | None = None,
    ) -> QuickAllow | None:
        """`allow_quickly` for a transport that reads only what it needs of a request's
        headers: its `authorization`, `x-tenant-id`, `x-request-id` and `traceparent` values,
        its `header_lines`, whether a method-override header is present; `headers` makes the
        whole mapping, for what needs it (an audit line, trusted proxy hops). Never raises:
        what fails unexpectedly is logged and left to the general path (which may then count
        the request's limit a second time)."""
        if not self._fast or not policy_text:  # nothing is prepared for an unsigned route
            return None
        try:
            started = time.perf_counter_ns()
            prepared = self._prepared.get((authorization, policy_text, method, client_tenant))
            if prepared is None:
                return None
            verifier = self._verifier
            generation = verifier.key_generation()
            if generation != self._prepared.generation:  # the keys changed: nothing prepared holds
                self._prepared.clear(generation)
                return None
            if (
                prepared.identity.expires_at <= verifier.now()
                or not request_id
                or lines > self._header_room
                or (overridden and prepared.method_override)
            ):
                return None
            if untrusted_peer is not None:
                address = untrusted_peer
            elif self._trusted_hops > 0:
                address = client_address(headers(), client_ip, self._trusted_hops)
            else:
                address = client_ip
            if self._budget.blocked(address):
                return None
            for passes in self._gates:
                if not passes(traceparent, trace_parent):
                    return None
            if not verifier.cache.holds(prepared.token):  # evicted: verified again, or not
                return None
            remaining = reset_s = 0
            limit = prepared.limit
            if limit is not None:
                assert self._count is not None  # nothing limited is prepared without it
                counted = self._count(prepared.limit_key, limit)
                if counted is None:  # a denial, or a key the limiter no longer holds
                    return None
                remaining, reset_s = counted
            verifier.cache.hit(prepared.token)  # as the general path's lookup would have
            service = prepared.policy.service
            latency_us = (time.perf_counter_ns() - started) // 1000
            limited = limit is not None
            for observer in self._counts:
                if observer.observe_allow(service, limited, latency_us):
                    decision = Decision(
                        CheckInput(
                            method,
                            path,
                            headers(),
                            {POLICY_KEY: policy_text},
                            client_ip,
                            trace_parent,
                            untrusted_peer,
                        ),
                        prepared.outcome(request_id, remaining, reset_s),
                        prepared.identity,
                        service,
                        self._clock(),
                        latency_us,
                        address,
                        limited,
                    )
                    observer.record(decision)
            return prepared, request_id, remaining, reset_s
        except Exception:
            self._log.exception("fast path failed", extra={"fields": {"request_id": request_id}})
            return None

    def _prepare(
        self,
        req: CheckInput,
        policy: RoutePolicy,
        token: str,
        identity: Identity,
        generation: int,
    ) -> None:
        """Keep the allow of `req` (with `token`, verified with the keys of `generation`) for
        the fast path, when it can answer the next such check."""
        authorization = req.headers.get("authorization")
        policy_text = req.context.get(POLICY_KEY, "")
        if authorization is None or not policy_text:
            # Without a policy of its own (the policy file's, chosen by the path), the key
            # below would not tell one route from another.
            return
        if policy.rate_limit is not None and self._count is None:
            return
        if policy.method_override and any(h in req.headers for h in METHOD_OVERRIDE_HEADERS):
            return
        template = self._allow(identity, policy, "", ())
        answer = Prepared(
            token,
            identity,
            policy,
            policy.rate_limit,
            user_key(policy.limit_scope, identity.tenant, identity.user),
            template.set_headers,
            [name for name, _ in template.set_headers].index(REQUEST_ID_HEADER),
            template.remove_headers,
            policy.method_override,
            self._header_style,
        )
        key: AnswerKey = (
            authorization,
            self._policies.text(policy_text),
            req.method,
            req.headers.get(TENANT_HEADER),
        )
        self._prepared.put(key, answer, generation)

    def _quick_outcome(self, req: CheckInput) -> Outcome | None:
        """The fast path's answer to `req` as an `Outcome`, or None."""
        quick = self.allow_quickly(
            req.method,
            req.path,
            req.headers,
            req.context.get(POLICY_KEY, ""),
            req.client_ip,
            req.untrusted_peer,
            req.trace_parent,
        )
        if quick is None:
            return None
        prepared, request_id, remaining, reset_s = quick
        return prepared.outcome(request_id, remaining, reset_s)

    def check(self, req: CheckInput) -> Outcome:
        """Decide, counting against the synchronous limiter (gRPC's worker threads)."""
        quick = self._quick_outcome(req)
        if quick is not None:
            return quick
        started = time.perf_counter_ns()
        step = self._begin(req)
        if isinstance(step, _Pending):
            return self._finish(step, self._limiter.hit, started)
        return self._observed(step, started)

    def check_or_defer(self, req: CheckInput, quick: bool = True) -> Outcome | Awaitable[Outcome]:
        """Decide on an event loop: the outcome at once, or, when the route's limit must be
        counted by the asynchronous limiter (Redis), an awaitable of it. Never blocks.
        `quick=False`: the caller asked `allow_quickly` already."""
        if quick:
            answer = self._quick_outcome(req)
            if answer is not None:
                return answer
        started = time.perf_counter_ns()
        step = self._begin(req)
        if not isinstance(step, _Pending):
            return self._observed(step, started)
        if self._async_limiter is None:
            return self._finish(step, self._limiter.hit, started)
        return self._finish_async(step, self._async_limiter, started)

    async def _finish_async(self, step: _Pending, limiter: AsyncLimiter, started: int) -> Outcome:
        try:
            decision = await limiter.hit(step.key, step.limit)
        except Exception:
            return self._observed(
                self._failed(step.request, step.request_id, step.address), started
            )
        return self._finish(step, lambda _k, _l: decision, started)

    def _finish(
        self, step: _Pending, hit: Callable[[str, Limit], LimitDecision], started: int
    ) -> Outcome:
        try:
            outcome = self._limited(step, hit(step.key, step.limit))
        except Exception:
            return self._observed(
                self._failed(step.request, step.request_id, step.address), started
            )
        return self._observed(
            _Done(step.request, outcome, step.identity, step.policy, step.address), started
        )

    def _failed(self, req: CheckInput, request_id: str, address: str) -> _Done:
        self._log.exception("check failed", extra={"fields": {"request_id": request_id}})
        outcome = self._deny(500, "internal_error", "authorization failed", request_id)
        return _Done(req, outcome, None, None, address)

    def _observed(self, done: _Done, started: int) -> Outcome:
        outcome = done.outcome
        if done.policy is not None and done.policy.dry_run and outcome.status in _DRY_RUN:
            outcome = done.outcome = self._dry_run(done)
        if self._observers:
            req, policy = done.request, done.policy
            decision = Decision(
                req,
                outcome,
                done.identity,
                policy.service if policy else req.context.get(SERVICE_KEY),
                self._clock(),
                (time.perf_counter_ns() - started) // 1000,
                done.address,
                policy is not None
                and policy.rate_limit is not None
                and outcome.status in (200, 429),
            )
            for observer in self._observers:
                observer.observe(decision)
        return outcome

    def _dry_run(self, done: _Done) -> Outcome:
        """A denial on a dry-run route: the allow the request gets, remembering the denial."""
        denied, policy = done.outcome, done.policy
        assert policy is not None
        limits = tuple(h for h in denied.response_headers if h[0] in _DRY_RUN_HEADERS)
        allowed = self._answer(policy, denied.request_id, done.identity, limits)
        return replace(allowed, reason=denied.reason, would_deny=denied.status)

    def _begin(self, req: CheckInput) -> _Done | _Pending:
        """Everything up to the rate limit; never raises."""
        request_id = req.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        address = ""
        policy: RoutePolicy | None = None
        try:
            address = (
                client_address(req.headers, req.client_ip, self._trusted_hops)
                if req.untrusted_peer is None
                else req.untrusted_peer
            )
            text = req.context.get(POLICY_KEY, "")
            policy = self._policies.get(text) if text else self._unsigned(req)
            return self._decide(req, policy, request_id, address)
        except PolicyError as err:
            forged = isinstance(err, PolicyAuthError)
            held = self._policy_log.ready()
            if held is not None:
                self._log.error(
                    "route policy not authenticated" if forged else "route policy unusable",
                    extra={"fields": {"error": str(err), "address": address, "held_back": held}},
                )
            reason = "policy_unauthenticated" if forged else "no_policy"
            outcome = self._deny(403, reason, "this route has no usable policy", request_id)
            return _Done(req, outcome, None, None, address)
        except Exception:
            return self._failed(req, request_id, address)

    def _unsigned(self, req: CheckInput) -> RoutePolicy:
        """The policy of a check whose route carries none: the policy file's, if there is one.
        Raises PolicyError (403 `no_policy`) saying what is missing."""
        if self._table is None:
            raise PolicyError(
                "the route carries no policy and ext_authz has no --policy-file "
                "(with an Envoy our xDS server does not configure: docs/standalone.md)"
            )
        return self._table.find(req.context, req.method, req.path)

    def _decide(
        self, req: CheckInput, policy: RoutePolicy, request_id: str, address: str
    ) -> _Done | _Pending:
        def done(outcome: Outcome, identity: Identity | None = None) -> _Done:
            return _Done(req, outcome, identity, policy, address)

        lines = header_lines(req.headers)
        if policy.public:
            if lines > self._header_room + _ADDED_HEADERS:
                return done(self._too_many_headers(request_id))
            return self._pending(
                req, policy, address_key(policy.limit_scope, address), request_id, None, address
            )
        if lines > self._header_room:
            return done(self._too_many_headers(request_id))
        token = bearer_token(req.headers)
        retry_after = self._budget.blocked(address)  # over budget: what fails is a 429
        if retry_after and not token:
            return done(self._over_budget(request_id, retry_after))
        if token is None:
            self._budget.fail(address)
            return done(self._deny(401, "missing_token", "a bearer token is required", request_id))
        if not token:
            self._budget.fail(address)
            return done(
                self._deny(401, "malformed", "the Authorization header is not Bearer", request_id)
            )
        gate = self._budget.allowance(address) if retry_after else None
        generation = self._verifier.key_generation()  # before: an answer never outlives its keys
        try:
            identity = self._verifier.verify(token, gate)
        except TokenError as err:
            if err.reason != DEFERRED:  # a deferred check did no work and learnt nothing
                self._budget.fail(address)
            if retry_after:
                return done(
                    self._over_budget(request_id, 1 if err.reason == DEFERRED else retry_after)
                )
            return done(self._deny(401, err.reason, err.detail, request_id))
        if gate is not None:
            gate.succeeded()
        verdict = self._authorize(policy, req, identity)
        if not verdict.allowed:
            return done(self._deny(403, verdict.reason, verdict.message, request_id), identity)
        if self._fast:
            self._prepare(req, policy, token, identity, generation)
        key = user_key(policy.limit_scope, identity.tenant, identity.user)
        return self._pending(req, policy, key, request_id, identity, address)

    def _pending(
        self,
        req: CheckInput,
        policy: RoutePolicy,
        key: str,
        request_id: str,
        identity: Identity | None,
        address: str,
    ) -> _Done | _Pending:
        """The request needs counting against the route's limit, or, with none, an answer."""
        if policy.rate_limit is None:
            return _Done(
                req, self._answer(policy, request_id, identity, ()), identity, policy, address
            )
        return _Pending(req, policy, key, policy.rate_limit, request_id, identity, address)

    def _over_budget(self, request_id: str, retry_after: int) -> Outcome:
        out = self._deny(429, "auth_failures", "too many failed authentications; wait", request_id)
        return replace(
            out, response_headers=(*out.response_headers, ("retry-after", str(retry_after)))
        )

    def _too_many_headers(self, request_id: str) -> Outcome:
        return self._deny(
            431, "too_many_headers", "the request has too many headers to add identity", request_id
        )

    @staticmethod
    def _authorize(policy: RoutePolicy, req: CheckInput, identity: Identity) -> Verdict:
        """The role and tenant decision for the request's method and, on a service that
        honours method-override headers, for every method they name as well."""
        client_tenant = req.headers.get(TENANT_HEADER)
        verdict = authorize(policy, req.method, identity.roles, identity.tenant, client_tenant)
        if not verdict.allowed or not policy.method_override:
            return verdict
        for name in METHOD_OVERRIDE_HEADERS:
            override = req.headers.get(name)
            if override is not None:
                for method in override.split(","):
                    verdict = authorize(
                        policy, method.strip(), identity.roles, identity.tenant, client_tenant
                    )
                    if not verdict.allowed:
                        return verdict
        return verdict

    def _limited(self, step: _Pending, decision: LimitDecision) -> Outcome:
        """The answer once the request was counted against the route's limit."""
        policy = step.policy
        headers = rate_headers(policy.limit_scope, step.limit, decision, self._header_style)
        if not decision.allowed:
            out = self._deny(
                429, "rate_limited", f"too many requests to {policy.limit_scope}", step.request_id
            )
            return replace(out, response_headers=out.response_headers + headers)
        return self._answer(policy, step.request_id, step.identity, headers)

    def _answer(
        self,
        policy: RoutePolicy,
        request_id: str,
        identity: Identity | None,
        response_headers: Headers,
    ) -> Outcome:
        if identity is None:
            return Outcome(
                200,
                "public",
                "allowed",
                request_id,
                remove_headers=IDENTITY_HEADERS,
                response_headers=response_headers,
            )
        return self._allow(identity, policy, request_id, response_headers)

    @staticmethod
    def _allow(
        identity: Identity, policy: RoutePolicy, request_id: str, response_headers: Headers
    ) -> Outcome:
        set_headers = [
            (USER_HEADER, identity.user_header),
            (ROLES_HEADER, identity.roles_header),
            (REQUEST_ID_HEADER, request_id),
        ]
        remove: list[str] = []
        tenant = identity.tenant_header
        if tenant is not None:
            set_headers.append((TENANT_HEADER, tenant))
        else:
            remove.append(TENANT_HEADER)
        if identity.tenant is not None and identity.tenant in policy.tenant_upstreams:
            set_headers.append((TENANT_UPSTREAM_HEADER, identity.tenant))
        else:
            remove.append(TENANT_UPSTREAM_HEADER)
        return Outcome(
            200,
            "ok",
            "allowed",
            request_id,
            set_headers=tuple(set_headers),
            remove_headers=tuple(remove),
            response_headers=response_headers,
        )
