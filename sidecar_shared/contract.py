"""The contract between the xDS server and ext_authz, owned by neither. Standard library only.

The xDS server compiles each service's policy from the catalog into a `RoutePolicy` and attaches
`sign(encode(policy), key)` to the service's routes (`POLICY_KEY` in the ext_authz filter's
per-route context; in HTTP mode, a request header of the same meaning). Envoy sends it with
every check; ext_authz checks its MAC (`verify`), decodes it (`decode`) and decides. The MAC
key is shared by the xDS server and ext_authz only (`read_policy_keys`), so a policy a client
or any other caller wrote never takes effect, whatever an Envoy forwards. The names below
(context keys, identity headers, the ext_authz cluster, gRPC health service names) are what both
sides, and Envoy's bootstrap, must agree on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote, unquote

# Keys of the ext_authz filter's per-route `context_extensions`.
POLICY_KEY: Final = "policy"
SERVICE_KEY: Final = "service"

# Headers ext_authz sets on allowed requests; a client's copies never reach an upstream.
USER_HEADER: Final = "x-user-id"
ROLES_HEADER: Final = "x-user-roles"
TENANT_HEADER: Final = "x-tenant-id"
REQUEST_ID_HEADER: Final = "x-request-id"
# Set by ext_authz to route a tenant to its own upstream; never trusted from a client.
TENANT_UPSTREAM_HEADER: Final = "x-tenant-upstream"
IDENTITY_HEADERS: Final = (USER_HEADER, ROLES_HEADER, TENANT_HEADER, TENANT_UPSTREAM_HEADER)
# Headers some frameworks read as the request's real method. Removed before ext_authz unless
# the service opts in (`RoutePolicy.method_override`); then ext_authz authorizes that method.
METHOD_OVERRIDE_HEADERS: Final = ("x-http-method-override", "x-http-method", "x-method-override")

# Identity header values: one rule for `x-user-id`, `x-tenant-id` and each role of
# `x-user-roles`. A value made only of letters, digits and `-._~:/@` travels as it is
# (`alice`, `read:orders`, `/staff/admins`, `bob@example.com`); any other is percent-encoded
# (UTF-8, RFC 3986) except those characters: `alice, admin` becomes `alice%2C%20admin`,
# `auth0|64f1` becomes `auth0%7C64f1`, `%` is `%25`, `+` is `%2B`, a control character such as
# U+0085 is `%C2%85`. So every value is visible ASCII without a comma or a space, and an
# upstream that splits, logs or compares it reads exactly one value. Decode a value with
# decodeURIComponent, urllib.parse.unquote, url.PathUnescape or URLDecoder (`+` is never sent
# bare, so a decoder that reads `+` as a space is safe too). `x-user-roles` is the roles'
# values joined with commas: split at commas, then decode each part.
_AS_IS = re.compile(r"[A-Za-z0-9\-._~:/@]+")


def encode_identity(value: str) -> str:
    """The header value for one user, tenant or role (visible ASCII only)."""
    return value if _AS_IS.fullmatch(value) else quote(value, safe=":/@")


def decode_identity(value: str) -> str:
    """The user, tenant or role in a header value (the inverse of `encode_identity`)."""
    return unquote(value)


def encode_roles(roles: Iterable[str]) -> str:
    """The `x-user-roles` value for `roles` (visible ASCII only)."""
    return ",".join(map(encode_identity, roles))


def decode_roles(value: str) -> list[str]:
    """The roles in an `x-user-roles` value (the inverse of `encode_roles`)."""
    return [unquote(part) for part in value.split(",")] if value else []


# The cluster in Envoy's bootstrap that reaches ext_authz (its address is per deployment).
AUTHZ_CLUSTER: Final = "ext_authz"

# How Envoy calls ext_authz: gRPC `Authorization/Check` (policy in `context_extensions`) or
# Envoy's HTTP ext_authz protocol (policy in `POLICY_HEADER`, which our configuration has Envoy
# set on every check request from the route's config, overwriting any copy a client sent; an
# Envoy configured otherwise may forward a client's copy, which has no valid MAC).
AUTHZ_TRANSPORTS: Final = ("grpc", "http")
POLICY_HEADER: Final = "x-sidecar-route-policy"
# Envoy's HTTP check requests go to this path prefix followed by the client's path.
CHECK_PATH_PREFIX: Final = "/sidecar-check"
# In HTTP mode: headers of ext_authz's answer that Envoy copies (overwriting) onto the upstream
# request, removes from it (listed in REMOVE_HEADERS_HEADER), or passes to the client.
UPSTREAM_HEADERS: Final = (
    USER_HEADER,
    ROLES_HEADER,
    TENANT_HEADER,
    TENANT_UPSTREAM_HEADER,
    REQUEST_ID_HEADER,
)
REMOVE_HEADERS_HEADER: Final = "x-envoy-auth-headers-to-remove"
RATE_LIMIT_HEADERS: Final = (
    "ratelimit-policy",
    "ratelimit",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
)
# `grpc-status`: a gRPC client's code for a denial (`ext_authz.grpc_status`).
DENIAL_HEADERS: Final = ("content-type", "www-authenticate", "grpc-status", *RATE_LIMIT_HEADERS)

# gRPC health service names each server answers (besides "", the whole server).
XDS_HEALTH_SERVICE: Final = "envoy.service.discovery.v3.AggregatedDiscoveryService"
AUTHZ_HEALTH_SERVICE: Final = "envoy.service.auth.v3.Authorization"

Action = Literal["read", "write", "delete"]

ACTION_OF_METHOD: Final[Mapping[str, Action]] = {
    "GET": "read",
    "HEAD": "read",
    "OPTIONS": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}
ACTIONS: Final[tuple[Action, ...]] = ("read", "write", "delete")


def parse_permission(perm: str) -> tuple[str, str]:
    """`"<service>:<action>"` (either side may be `*`) or `"*"` → (service, action).

    Raises ValueError saying what is wrong. Whether the service exists is the caller's question.
    """
    if perm == "*":
        return "*", "*"
    service, sep, action = perm.partition(":")
    if not sep or not service or not action:
        raise ValueError(f"permission {perm!r} must be '<service>:<action>' or '*'")
    if action != "*" and action not in ACTIONS:
        raise ValueError(
            f"permission {perm!r} has unknown action {action!r} (read, write, delete or *)"
        )
    return service, action


@dataclass(frozen=True)
class Limit:
    """``limit`` requests per ``window_s`` seconds, tolerating ``burst`` extra ones.

    ``limit`` is what headers advertise; ``capacity`` = ``limit + burst`` is what is enforced.
    """

    limit: int
    window_s: int
    burst: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.window_s < 1:
            raise ValueError(f"window_s must be >= 1, got {self.window_s}")
        if self.burst < 0:
            raise ValueError(f"burst must be >= 0, got {self.burst}")

    @property
    def capacity(self) -> int:
        """Requests actually allowed per window: ``limit + burst``."""
        return self.limit + self.burst


@dataclass(frozen=True)
class RoutePolicy:
    service: str
    public: bool = False
    rbac_required: bool = True
    # action → the roles that may perform it on this service
    allowed_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tenant_scope: Literal["global", "tenant"] = "global"
    rate_limit: Limit | None = None
    tenant_upstreams: frozenset[str] = frozenset()
    # Honour method-override headers: each method they name must be allowed too.
    method_override: bool = False
    # The name `rate_limit` counts under, when not the service's: an endpoint with its own
    # limit (`orders.export`) has its own counters and `RateLimit-Policy` name.
    limit_name: str | None = None
    # Dry run (the catalog's `"enforce": "dry_run"`): ext_authz decides as usual, records a
    # denial as `would_deny` (audit, metrics) and allows the request.
    dry_run: bool = False

    @property
    def limit_scope(self) -> str:
        """What the route's requests are counted under: `limit_name`, else the service."""
        return self.limit_name or self.service


class PolicyError(ValueError):
    """The route's policy is missing or unreadable (a control-plane bug: fail closed)."""


def encode(policy: RoutePolicy) -> str:
    """Compact, deterministic JSON (the same policy always gives the same string)."""
    data: dict[str, Any] = {
        "v": 1,
        "service": policy.service,
        "public": policy.public,
        "rbac": policy.rbac_required,
        "roles": {a: sorted(r) for a, r in sorted(policy.allowed_roles.items())},
        "tenant_scope": policy.tenant_scope,
    }
    if policy.rate_limit is not None:
        rl = policy.rate_limit
        data["rate_limit"] = [rl.limit, rl.window_s, rl.burst]
    if policy.tenant_upstreams:
        data["tenant_upstreams"] = sorted(policy.tenant_upstreams)
    if policy.method_override:
        data["method_override"] = True
    if policy.limit_name is not None:
        data["limit_name"] = policy.limit_name
    if policy.dry_run:
        data["dry_run"] = True
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> RoutePolicy:
    """The inverse of `encode`; raises PolicyError for anything else."""
    try:
        data = json.loads(text)
        if data.get("v") != 1:
            raise PolicyError(f"unknown policy version {data.get('v')!r}")
        rl = data.get("rate_limit")
        scope = data["tenant_scope"]
        if scope not in ("global", "tenant"):
            raise PolicyError(f"unknown tenant_scope {scope!r}")
        return RoutePolicy(
            service=str(data["service"]),
            public=bool(data["public"]),
            rbac_required=bool(data["rbac"]),
            allowed_roles={str(a): frozenset(map(str, r)) for a, r in data["roles"].items()},
            tenant_scope=scope,
            rate_limit=Limit(int(rl[0]), int(rl[1]), int(rl[2])) if rl else None,
            tenant_upstreams=frozenset(map(str, data.get("tenant_upstreams", ()))),
            method_override=data.get("method_override") is True,
            limit_name=_optional_str(data.get("limit_name")),
            dry_run=data.get("dry_run") is True,
        )
    except PolicyError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise PolicyError(f"unreadable route policy: {err}") from None


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise PolicyError(f"unreadable route policy: {value!r} is not a string")


# A signed policy is `SIGNED_PREFIX` + base64url(HMAC-SHA256(key, SIGNED_PREFIX + policy)),
# unpadded (43 characters), then "." and the policy as `encode` wrote it.
SIGNED_PREFIX: Final = "s1."
MIN_POLICY_KEY_BYTES: Final = 32


class PolicyAuthError(PolicyError):
    """The route's policy carries no MAC, or none that a configured key made: it was not written
    by our xDS server (or by one with another key). Fail closed."""


def _mac(key: bytes, policy: str) -> str:
    # surrogatepass: text a peer sent may hold a lone surrogate; it gets a MAC like any other
    # text (one no key made), never an exception.
    text = (SIGNED_PREFIX + policy).encode("utf-8", "surrogatepass")
    digest = hmac.new(key, text, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(policy: str, key: bytes) -> str:
    """`policy` (an `encode`d one) with its MAC under `key`."""
    return f"{SIGNED_PREFIX}{_mac(key, policy)}.{policy}"


def verify(signed: str, keys: Sequence[bytes]) -> str:
    """The policy inside `signed` when one of `keys` made its MAC (several keys: rotation);
    raises PolicyAuthError otherwise, saying whether the MAC was missing or wrong."""
    if not signed.startswith(SIGNED_PREFIX):
        raise PolicyAuthError("the route policy carries no MAC")
    mac, dot, policy = signed[len(SIGNED_PREFIX) :].partition(".")
    if dot and mac.isascii():  # (compare_digest refuses other text rather than say False)
        for key in keys:
            if hmac.compare_digest(_mac(key, policy), mac):
                return policy
    raise PolicyAuthError("the route policy's MAC is not one of a configured key")


def policy_of(attached: str) -> str:
    """The policy a route carries, its MAC (if any) set aside unchecked: for the xDS server
    reading its own snapshots, never for deciding a request (that is `verify`)."""
    if attached.startswith(SIGNED_PREFIX):
        _, dot, policy = attached[len(SIGNED_PREFIX) :].partition(".")
        if dot:
            return policy
    return attached


def read_policy_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in a policy key file: one per line (blank lines and surrounding spaces ignored),
    each at least `MIN_POLICY_KEY_BYTES` long. The xDS server signs with the first; ext_authz
    accepts any of them, so a new key can be added before the xDS server switches to it.
    Raises ValueError saying what is wrong (OSError when the file cannot be read)."""
    keys = tuple(line.strip().encode() for line in path.read_text(encoding="utf-8").splitlines())
    keys = tuple(k for k in keys if k)
    if not keys:
        raise ValueError(f"policy key file {path} holds no key")
    if any(len(k) < MIN_POLICY_KEY_BYTES for k in keys):
        raise ValueError(
            f"policy key file {path}: every key must be at least {MIN_POLICY_KEY_BYTES} bytes"
        )
    return keys
