"""The decision ext_authz would make for one request against a catalog, step by step, without
sending traffic (`sidecar explain`, `Admin/Explain`, the catalog's access tests).

It runs ext_authz's own decision core (`ext_authz.core.Authorizer`), never a copy: the route is
found the way the route configuration orders it (services longest base path first, a service's
endpoints most specific first), its policy compiled as the route carries it
(`route_policy.compile_policy`) and signed with a key of this explainer's, and the check goes
through `Authorizer.check` like Envoy's. What differs, on purpose:
- the caller: a token is verified with the verifier given (`sidecar explain` holds the key);
  claims given instead (access tests, the admin API: the xDS server holds no JWT key) are
  signed into a token with a key of this explainer's and verified by the same code;
- the rate limit: peeked, never counted (`Peek`): the limit step says which counter the request
  would spend and allows it; a user's live counters are ext_authz's (memory or Redis), not here;
- the failure budget is off (an explanation is not a failed login).
Not modelled: Envoy's own answers before ext_authz (look-alike paths 400, a declared body above
`max_request_body_bytes` 413, header names with `_` 400).

The steps come from the core's reason code (`REASON_STEP`): the step that decided failed,
those before it passed, those after were not reached.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ext_authz.core import Authorizer, GuardSettings
from ext_authz.decision import CheckInput, Decision
from ext_authz.keys import KeySettings, KeySource
from ext_authz.ratelimit import Limit, LimitDecision
from ext_authz.tokens import ClaimNames, Identity, TokenVerifier, VerifierSettings
from sidecar_shared.contract import (
    ACTION_OF_METHOD,
    POLICY_KEY,
    SERVICE_KEY,
    TENANT_HEADER,
    RoutePolicy,
    encode,
    sign,
)
from xds_server.catalog import Catalog, Service, ServiceEndpoint, endpoints_in_order
from xds_server.route_policy import compile_policy

STEPS = ("route", "policy", "token", "role", "tenant", "limit")
# The step each of the core's denial reasons comes from (any other 401 is the token's).
REASON_STEP = {
    "no_policy": "policy",
    "policy_unauthenticated": "policy",
    "too_many_headers": "policy",
    "internal_error": "policy",
    "method_not_allowed": "role",
    "role_not_allowed": "role",
    "tenant_required": "tenant",
    "tenant_mismatch": "tenant",
    "rate_limited": "limit",
}
# What one `{variable}` of a URI template matches in Envoy (one segment, at least a character).
_SEGMENT = re.compile(r"[a-zA-Z0-9._~%!$&'()+,;:@=-]+")


@dataclass(frozen=True)
class Probe:
    """A request to explain. `claims`: the verified claims of the caller (None: use `token`,
    and with no token either, a request without one)."""

    method: str
    path: str
    headers: Mapping[str, str]
    token: str | None = None
    claims: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    name: str
    verdict: str  # pass, fail, skip, not_reached
    detail: str


@dataclass(frozen=True)
class Trace:
    method: str
    path: str
    route: str | None
    service: str | None
    policy: RoutePolicy | None
    steps: tuple[Step, ...]
    status: int  # what the client gets
    reason: str
    message: str
    would_deny: int = 0  # dry run: the status enforcing would answer

    @property
    def decided(self) -> int:
        """The decision's status, a dry run's denial included (what access tests compare)."""
        return self.would_deny or self.status

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "service": self.service,
            "policy": json.loads(encode(self.policy)) if self.policy else None,
            "steps": [
                {"name": s.name, "verdict": s.verdict, "detail": s.detail} for s in self.steps
            ],
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "would_deny": self.would_deny,
        }


def _under(path: str, prefix: str) -> bool:
    return prefix in ("/", path) or path.startswith(prefix + "/")


def _endpoint_matches(ep: ServiceEndpoint, method: str, path: str) -> bool:
    if ep.methods and method not in ep.methods:
        return False
    if ep.match == "exact":
        return path == ep.path
    if ep.match == "prefix":
        return _under(path, ep.path)
    segments = path.split("/")[1:]
    if len(segments) != len(ep.segments):
        return False
    return all(
        _SEGMENT.fullmatch(got) if ep.is_variable(want) else got == want
        for want, got in zip(ep.segments, segments, strict=True)
    )


def route_index(catalog: Catalog) -> dict[str, Service]:
    """Each service by its route prefix (prefixes are unique in a valid catalog)."""
    return {svc.route_prefix: svc for svc in catalog.services}


def match_route(
    catalog: Catalog, method: str, path: str, index: Mapping[str, Service] | None = None
) -> tuple[Service, ServiceEndpoint | None] | None:
    """The service (and endpoint) whose route a request for `path` takes; None: no route.
    The longest base path that holds the path, whole segments, wins, as in the route
    configuration (`routes.routing_order`); `index`: the catalog's `route_index`, when the
    caller has it."""
    path = path.split("?", 1)[0]
    index = route_index(catalog) if index is None else index
    head = path
    svc = index.get(head)
    while svc is None and head not in ("", "/"):
        head = head.rsplit("/", 1)[0] or "/"
        svc = index.get(head)
    if svc is None:
        return None
    for ep in endpoints_in_order(svc.endpoints):
        if _endpoint_matches(ep, method, path):
            return svc, ep
    return svc, None


class Peek:
    """A `Limiter` that counts nothing: every request is allowed as the first of its window,
    and the key it would spend is remembered."""

    def __init__(self) -> None:
        self.key: str | None = None

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        self.key = key
        return LimitDecision(True, limit.limit, limit.capacity - 1, limit.window_s, 0)


class _Seen:
    def __init__(self) -> None:
        self.decision: Decision | None = None

    def observe(self, decision: Decision) -> None:
        self.decision = decision


def _verifier(
    keys: KeySettings, settings: VerifierSettings, clock: Callable[[], float]
) -> TokenVerifier:
    source = KeySource(keys, logging.getLogger("xds_server.explain"))
    source.load()
    return TokenVerifier(settings, source, clock)


_DEFAULT_CLAIMS = ClaimNames()


class Explainer:
    """Explains requests against catalogs. `verifier`: verifies tokens (None: only claims can
    be explained; a token is a 401 `no_key_here`). `claims`: where the identity is read from
    claims (ext_authz's `--claim-*` settings)."""

    def __init__(
        self,
        verifier: TokenVerifier | None = None,
        claims: ClaimNames = _DEFAULT_CLAIMS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._policy_key = secrets.token_bytes(32)
        self._own = _verifier(
            KeySettings(secret=self._secret), VerifierSettings(claims=claims), clock
        )
        # the last catalog explained against, and its services by route prefix
        self._indexed: tuple[Catalog, dict[str, Service]] | None = None

    def _index(self, catalog: Catalog) -> dict[str, Service]:
        last = self._indexed
        if last is not None and last[0] is catalog:
            return last[1]
        index = route_index(catalog)
        self._indexed = (catalog, index)
        return index

    def _token_for(self, claims: Mapping[str, Any]) -> str:
        payload = dict(claims)
        payload.setdefault("exp", int(self._clock()) + 3600)
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def explain(self, catalog: Catalog, probe: Probe) -> Trace:
        method, path = probe.method.upper(), probe.path
        found = match_route(catalog, method, path, self._index(catalog))
        if found is None:
            missing = Step("route", "fail", f"no service's base_path holds {path.split('?')[0]}")
            return Trace(
                method, path, None, None, None, _rest((missing,)), 404, "no_route", "no route"
            )
        svc, ep = found
        route = svc.service_name if ep is None else f"{svc.service_name}.{ep.name}"
        policy = compile_policy(catalog, svc, ep)
        route_step = Step(
            "route", "pass", f"{route} ({svc.base_path}" + (f", {ep.path})" if ep else ")")
        )
        seen = svc if ep is None else svc.for_endpoint(ep)
        if seen.public and seen.rate_limit is None:
            steps = (
                route_step,
                Step("policy", "pass", "public, no limit: ext_authz is off"),
            )
            return Trace(
                method,
                path,
                route,
                svc.service_name,
                policy,
                _rest(steps),
                200,
                "public",
                "allowed",
            )
        headers = {k.lower(): v for k, v in probe.headers.items()}
        verifier = self._own
        if probe.claims is not None:
            headers["authorization"] = f"Bearer {self._token_for(probe.claims)}"
        elif probe.token is not None:
            headers["authorization"] = f"Bearer {probe.token}"
            if self._verifier is None:
                return self._no_key(method, path, route, policy, route_step)
            verifier = self._verifier
        peek, seen_by = Peek(), _Seen()
        authorizer = Authorizer(
            verifier,
            peek,
            [seen_by],
            logging.getLogger("xds_server.explain"),
            self._clock,
            guard=GuardSettings(verbose_denials=True, failure_budget=0),
            policy_keys=(self._policy_key,),
        )
        context = {
            SERVICE_KEY: svc.service_name,
            POLICY_KEY: sign(encode(policy), self._policy_key),
        }
        outcome = authorizer.check(CheckInput(method, path, headers, context, "127.0.0.1"))
        assert seen_by.decision is not None
        return Trace(
            method,
            path,
            route,
            svc.service_name,
            policy,
            _steps(route_step, policy, method, headers, seen_by.decision, peek.key),
            outcome.status,
            outcome.reason,
            outcome.message,
            outcome.would_deny,
        )

    @staticmethod
    def _no_key(method: str, path: str, route: str, policy: RoutePolicy, route_step: Step) -> Trace:
        why = "no key to verify a token here: give the caller's claims instead"
        steps = (
            route_step,
            Step("policy", "pass", _policy_text(policy)),
            Step("token", "fail", why),
        )
        return Trace(
            method, path, route, policy.service, policy, _rest(steps), 401, "no_key_here", why
        )


def _rest(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """`steps` and every step after them, not reached."""
    done = {s.name for s in steps}
    return steps + tuple(Step(n, "not_reached", "") for n in STEPS if n not in done)


def _policy_text(policy: RoutePolicy) -> str:
    parts = [f"service {policy.service}"]
    if policy.public:
        parts.append("public")
    if policy.dry_run:
        parts.append("dry run")
    return ", ".join(parts)


def _identity_text(identity: Identity) -> str:
    roles = ",".join(identity.roles) or "none"
    tenant = f", tenant {identity.tenant}" if identity.tenant is not None else ""
    return f"user {identity.user}, roles {roles}{tenant}"


def _steps(
    route_step: Step,
    policy: RoutePolicy,
    method: str,
    headers: Mapping[str, str],
    decision: Decision,
    key: str | None,
) -> tuple[Step, ...]:
    outcome, identity = decision.outcome, decision.identity
    denied = not outcome.allowed or bool(outcome.would_deny)
    failed = REASON_STEP.get(outcome.reason, "token") if denied else None
    action = ACTION_OF_METHOD.get(method)
    roles = policy.allowed_roles.get(action or "", frozenset())
    rl = policy.rate_limit
    passed = {
        "policy": _policy_text(policy),
        "token": _identity_text(identity) if identity else "public: no token needed",
        "role": (
            f"{method} is {action}; allowed: {', '.join(sorted(roles)) or 'no role'}"
            if policy.rbac_required and not policy.public
            else "no role check (rbac_required false or public)"
        ),
        "tenant": (
            f"tenant_scope {policy.tenant_scope}"
            + (f"; x-tenant-id {headers[TENANT_HEADER]!r}" if TENANT_HEADER in headers else "")
        ),
        "limit": (
            f"{rl.limit} per {rl.window_s} s (+{rl.burst}), "
            f"counted under {key} (not counted by explain)"
            if rl is not None
            else "no limit"
        ),
    }
    skipped = {"token", "role", "tenant"} if policy.public else set()
    if not policy.rbac_required:
        skipped.add("role")
    if policy.rate_limit is None:
        skipped.add("limit")
    steps = [route_step]
    reached = True
    for name in STEPS[1:]:
        if not reached:
            steps.append(Step(name, "not_reached", ""))
        elif name == failed:
            steps.append(Step(name, "fail", f"{outcome.reason}: {outcome.message}"))
            reached = False
        elif name in skipped:
            steps.append(Step(name, "skip", passed[name]))
        else:
            steps.append(Step(name, "pass", passed[name]))
    return tuple(steps)
