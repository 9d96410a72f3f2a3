"""The decision core, shared by every transport: request attributes in, `Outcome` out.

Order: route policy → token (public routes: none) → role and tenant → rate limit → allow.
Every failure is a precise denial; no exception escapes `Authorizer.check`: an unexpected one
becomes a 500 denial (fail closed) and is logged without the request's headers.

On allow, the upstream request gets `x-user-id`, `x-user-roles`, `x-request-id` and, when the
token has one, `x-tenant-id`, each overwriting whatever the client sent; identity headers that
are not set are removed. `Authorization` is never touched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ext_authz.decision import CheckInput, Decision, DecisionObserver, Headers, Outcome
from ext_authz.limits import (
    HeaderStyle,
    address_key,
    client_address,
    rate_headers,
    user_key,
)
from ext_authz.policy import authorize
from ext_authz.ratelimit import Limiter
from ext_authz.tokens import Identity, TokenError, TokenVerifier
from sidecar_shared.contract import (
    IDENTITY_HEADERS,
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

__all__ = ["Authorizer", "LimitSettings", "bearer_token", "denial"]


_ERROR_CODE = {401: "invalid_token", 403: "forbidden", 429: "rate_limited", 500: "internal"}


def denial(status: int, reason: str, message: str, request_id: str) -> Outcome:
    body = json.dumps(
        {"error": _ERROR_CODE.get(status, "denied"), "message": message, "request_id": request_id},
        separators=(",", ":"),
    ).encode()
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    if status == 401:
        description = message.replace("\\", "").replace('"', "'")
        headers.append(
            ("www-authenticate", f'Bearer error="invalid_token", error_description="{description}"')
        )
    return Outcome(status, reason, message, request_id, response_headers=tuple(headers), body=body)


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
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


@dataclass(frozen=True)
class LimitSettings:
    header_style: HeaderStyle = "draft"
    trusted_hops: int = 0  # proxies in front of Envoy that append to x-forwarded-for


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        limiter: Limiter,
        observers: Sequence[DecisionObserver],
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
        limits: LimitSettings = LimitSettings(),
    ) -> None:
        """`limiter` must not raise (wrap a backend in `GuardedLimiter`); nor may observers."""
        self._verifier = verifier
        self._limiter = limiter
        self._observers = tuple(observers)
        self._log = log
        self._clock = clock
        self._limits = limits
        self._policies = PolicyCache()

    def check(self, req: CheckInput) -> Outcome:
        started = time.perf_counter_ns()
        request_id = req.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        identity: Identity | None = None
        policy: RoutePolicy | None = None
        try:
            policy = self._policies.get(req.context.get(POLICY_KEY, ""))
            outcome, identity = self._decide(req, policy, request_id)
        except PolicyError as err:
            outcome = denial(403, "no_policy", "this route has no usable policy", request_id)
            self._log.error("route policy unusable", extra={"fields": {"error": str(err)}})
        except Exception:
            self._log.exception("check failed", extra={"fields": {"request_id": request_id}})
            outcome = denial(500, "internal_error", "authorization failed", request_id)
        if self._observers:
            decision = Decision(
                req,
                outcome,
                identity,
                policy.service if policy else req.context.get(SERVICE_KEY),
                self._clock(),
                (time.perf_counter_ns() - started) // 1000,
            )
            for observer in self._observers:
                observer.observe(decision)
        return outcome

    def _decide(
        self, req: CheckInput, policy: RoutePolicy, request_id: str
    ) -> tuple[Outcome, Identity | None]:
        if policy.public:
            address = client_address(req.headers, req.client_ip, self._limits.trusted_hops)
            return self._limited(policy, address_key(policy.service, address), request_id, None)
        token = bearer_token(req.headers)
        if token is None:
            return denial(401, "missing_token", "a bearer token is required", request_id), None
        if not token:
            return denial(
                401, "malformed", "the Authorization header is not Bearer", request_id
            ), None
        try:
            identity = self._verifier.verify(token)
        except TokenError as err:
            return denial(401, err.reason, err.detail, request_id), None
        verdict = authorize(
            policy, req.method, identity.roles, identity.tenant, req.headers.get(TENANT_HEADER)
        )
        if not verdict.allowed:
            return denial(403, verdict.reason, verdict.message, request_id), identity
        key = user_key(policy.service, identity.tenant, identity.user)
        return self._limited(policy, key, request_id, identity)

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
                out = denial(
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
