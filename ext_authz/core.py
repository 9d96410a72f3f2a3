"""The decision core, shared by every transport: request attributes in, `Outcome` out.

Order: route policy → header room → failure budget → token (public routes: none) → role and
tenant → rate limit → allow. Every failure is a precise denial; no exception escapes
`Authorizer.check`: an unexpected one becomes a 500 denial (fail closed) and is logged without
the request's headers.

What a denied client sees is terse by default (an `error` code, a generic message per status,
the request id); the precise reason is the `reason` code in the audit line and the metrics.
`GuardSettings.verbose_denials` shows the precise sentence instead (for development).

Guards against abuse, each costing a comparison or a dict lookup per check:
- header room: Envoy refuses (500, after the allow) a request whose header count, with the
  identity headers added, passes its limit; such a request is a 431 here instead.
- failure budget: an address with too many failed authentications in a window gets 429 for
  the rest of it, before any token work (a token already verified and cached still passes).

On allow, the upstream request gets `x-user-id`, `x-user-roles`, `x-request-id` and, when the
token has one, `x-tenant-id`, each overwriting whatever the client sent; identity headers that
are not set are removed. `Authorization` is never touched.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ext_authz.budget import FailureBudget
from ext_authz.decision import CheckInput, Decision, DecisionObserver, Headers, Outcome
from ext_authz.limits import (
    HeaderStyle,
    address_key,
    client_address,
    rate_headers,
    user_key,
)
from ext_authz.policy import Verdict, authorize
from ext_authz.ratelimit import Limiter
from ext_authz.tokens import Identity, TokenError, TokenVerifier
from sidecar_shared import defaults
from sidecar_shared.contract import (
    IDENTITY_HEADERS,
    METHOD_OVERRIDE_HEADERS,
    POLICY_KEY,
    REQUEST_ID_HEADER,
    ROLES_HEADER,
    SERVICE_KEY,
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
    USER_HEADER,
    PolicyError,
    RoutePolicy,
    decode,
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
# Identity headers the core may add to a request (x-request-id is already there).
_ADDED_HEADERS = 4


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
    """Decoded route policies by their wire string: a route's policy is parsed once."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[str, RoutePolicy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> RoutePolicy:
        found = self._items.get(text)
        if found is not None:
            return found
        policy = decode(text)
        with self._lock:
            self._items[text] = policy
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return policy


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


@dataclass(frozen=True)
class LimitSettings:
    header_style: HeaderStyle = "draft"
    trusted_hops: int = 0  # proxies in front of Envoy that append to x-forwarded-for


@dataclass(frozen=True)
class GuardSettings:
    verbose_denials: bool = False  # show clients the precise reason (development only)
    failure_budget: int = defaults.FAILED_AUTH_BUDGET  # failed authentications per address...
    failure_window_s: int = defaults.FAILED_AUTH_WINDOW_S  # ...per window; 0 budget: no limit
    max_request_headers: int = defaults.EDGE_MAX_REQUEST_HEADERS  # Envoy's (the same setting)


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
    ) -> None:
        """`limiter` must not raise (wrap a backend in `GuardedLimiter`); nor may observers."""
        self._verifier = verifier
        self._limiter = limiter
        self._observers = tuple(observers)
        self._log = log
        self._clock = clock
        self._limits = limits
        self._policies = PolicyCache()
        self._verbose = guard.verbose_denials
        self._header_room = guard.max_request_headers - _ADDED_HEADERS
        self._budget = FailureBudget(guard.failure_budget, guard.failure_window_s, clock)

    def _deny(self, status: int, reason: str, message: str, request_id: str) -> Outcome:
        return denial(status, reason, message, request_id, self._verbose)

    def check(self, req: CheckInput) -> Outcome:
        started = time.perf_counter_ns()
        request_id = req.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        identity: Identity | None = None
        policy: RoutePolicy | None = None
        address = client_address(req.headers, req.client_ip, self._limits.trusted_hops)
        try:
            policy = self._policies.get(req.context.get(POLICY_KEY, ""))
            outcome, identity = self._decide(req, policy, request_id, address)
        except PolicyError as err:
            outcome = self._deny(403, "no_policy", "this route has no usable policy", request_id)
            self._log.error("route policy unusable", extra={"fields": {"error": str(err)}})
        except Exception:
            self._log.exception("check failed", extra={"fields": {"request_id": request_id}})
            outcome = self._deny(500, "internal_error", "authorization failed", request_id)
        if self._observers:
            decision = Decision(
                req,
                outcome,
                identity,
                policy.service if policy else req.context.get(SERVICE_KEY),
                self._clock(),
                (time.perf_counter_ns() - started) // 1000,
                address,
                policy is not None
                and policy.rate_limit is not None
                and outcome.status in (200, 429),
            )
            for observer in self._observers:
                observer.observe(decision)
        return outcome

    def _decide(
        self, req: CheckInput, policy: RoutePolicy, request_id: str, address: str
    ) -> tuple[Outcome, Identity | None]:
        if policy.public:
            if len(req.headers) > self._header_room + _ADDED_HEADERS:
                return self._too_many_headers(request_id), None
            return self._limited(policy, address_key(policy.service, address), request_id, None)
        if len(req.headers) > self._header_room:
            return self._too_many_headers(request_id), None
        token = bearer_token(req.headers)
        retry_after = self._budget.blocked(address)
        if retry_after and not (token and self._verifier.cached(token)):
            out = self._deny(
                429, "auth_failures", "too many failed authentications; wait", request_id
            )
            return replace(
                out, response_headers=(*out.response_headers, ("retry-after", str(retry_after)))
            ), None
        if token is None:
            self._budget.fail(address)
            return self._deny(401, "missing_token", "a bearer token is required", request_id), None
        if not token:
            self._budget.fail(address)
            return self._deny(
                401, "malformed", "the Authorization header is not Bearer", request_id
            ), None
        try:
            identity = self._verifier.verify(token)
        except TokenError as err:
            self._budget.fail(address)
            return self._deny(401, err.reason, err.detail, request_id), None
        verdict = self._authorize(policy, req, identity)
        if not verdict.allowed:
            return self._deny(403, verdict.reason, verdict.message, request_id), identity
        key = user_key(policy.service, identity.tenant, identity.user)
        return self._limited(policy, key, request_id, identity)

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

    def _limited(
        self, policy: RoutePolicy, key: str, request_id: str, identity: Identity | None
    ) -> tuple[Outcome, Identity | None]:
        """Count the request against the route's limit (if any) and answer."""
        headers: Headers = ()
        limit = policy.rate_limit
        if limit is not None:
            decision = self._limiter.hit(key, limit)
            headers = rate_headers(policy.service, limit, decision, self._limits.header_style)
            if not decision.allowed:
                out = self._deny(
                    429, "rate_limited", f"too many requests to {policy.service}", request_id
                )
                return replace(out, response_headers=out.response_headers + headers), identity
        if identity is None:
            return Outcome(
                200,
                "public",
                "allowed",
                request_id,
                remove_headers=IDENTITY_HEADERS,
                response_headers=headers,
            ), None
        return self._allow(identity, policy, request_id, headers), identity

    @staticmethod
    def _allow(
        identity: Identity, policy: RoutePolicy, request_id: str, response_headers: Headers
    ) -> Outcome:
        set_headers = [
            (USER_HEADER, identity.user),
            (ROLES_HEADER, identity.roles_header),
            (REQUEST_ID_HEADER, request_id),
        ]
        remove: list[str] = []
        if identity.tenant is not None:
            set_headers.append((TENANT_HEADER, identity.tenant))
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
