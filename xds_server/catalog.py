"""The service catalog: models, loading and validation.

`load_catalog(path)` and `parse_catalog(data)` are the only ways in; both either return a
`Catalog` that passed every check or raise `CatalogError` listing every problem found, each
with its JSON path (``services[2].retry_policy.max_retries``) and the reason.

Decoding refuses an object that names a key twice (JSON would let the last one win, so a
merge leftover could change policy unseen). Validation runs in two passes. The first checks
shape and types (pydantic), each service on its own; the second checks what spans fields
(duplicate names and paths, per-try timeout above the total, permissions that name unknown
services, endpoints that overlap or lie outside their service) over every service that passed
the first, so one broken service hides no other problem.
"""

from __future__ import annotations

import functools
import json
import marshal
import re
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sidecar_shared.contract import ACTION_OF_METHOD, IDENTITY_HEADERS, parse_permission
from xds_server import pem

# Envoy's retry_on condition names (router filter, x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_CONDITIONS: frozenset[str] = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

# The gRPC status conditions of retry_on (x-envoy-retry-grpc-on).
GRPC_RETRY_CONDITIONS: frozenset[str] = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)

# Upper bounds come from the Envoy field each number becomes (a test walks the models against
# the protobuf field types): counts that become uint32 fields stop at UINT32_MAX; durations stop
# far below Envoy's limits; rate-limit numbers stay exact in Redis' Lua (doubles, 2**53).
UINT32_MAX = 2**32 - 1
MAX_RATE = 1_000_000_000
MAX_BODY_BYTES = UINT32_MAX  # the buffer filter's max_request_bytes is a uint32
# What a client sends while ext_authz decides waits in Envoy's per-connection buffer (32 KiB by
# default), not in the buffer filter: Envoy 1.40 held a body without a declared length to limits
# of 256 KiB and above, and let one pass, or stalled it, below about 64 KiB.
MIN_BODY_BYTES = 256 * 1024

_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
# Role names as identity providers emit them (`read:orders`, `/staff/admins`, `Sales, EMEA`):
# 1-256 characters, no control characters, no space at either end.
_ROLE_NAME = re.compile(r"(?!\s)[^\x00-\x1f\x7f-\x9f]{1,256}(?<!\s)")
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A DNS name: labels of 1-63 characters, 253 in all (Envoy also sends it as TLS SNI, which
# it limits to 255 bytes).
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
MAX_HOSTNAME = 253
_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f]")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = r"0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# What parse_url accepts, as far as a regular expression can say it (not: the length of a host
# name, whether a bracketed IPv6 address is one). The JSON Schema carries it for editors.
_URL = re.compile(
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(\[[0-9A-Fa-f:.]+\]|{_LABEL}(\.{_LABEL})*):{_PORT}/?$"
)
MAX_WEIGHT = 10_000
_REGION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A version is one path segment: /orders/v2 is version v2 of /orders.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def _pattern(regex: str | re.Pattern[str]) -> Any:
    """The JSON Schema of a string field that a validator holds to `regex` (schema only:
    the validator gives the error message)."""
    return Field(json_schema_extra={"pattern": regex if isinstance(regex, str) else regex.pattern})


def _keys(regex: str | re.Pattern[str]) -> Any:
    """The JSON Schema of an object whose keys a validator holds to `regex`."""
    pattern = regex if isinstance(regex, str) else regex.pattern
    return Field(json_schema_extra={"propertyNames": {"pattern": pattern}})


_PATH_SCHEMA = r"^(?!.*//)/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
_VERSION_SCHEMA = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
_ROLE_SCHEMA = rf"^{_ROLE_NAME.pattern}$"
UrlString = Annotated[str, WithJsonSchema({"type": "string", "pattern": _URL.pattern})]


def _name_checked(value: str) -> str:
    """A service's or an endpoint's name (both become Envoy names and metric labels)."""
    if not _SERVICE_NAME.fullmatch(value):
        raise ValueError(
            "must be 1-63 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RetryPolicy(_Strict):
    """How Envoy retries a failed request (router retry_policy, exponential back-off). Every
    service has one unless its catalog says `"retry_policy": null`: one retry, on another
    endpoint when there is one, so an endpoint failing between two ejections costs the client
    nothing on idempotent requests."""

    max_retries: Annotated[int, Field(ge=0, le=10)] = 1
    retry_on: Annotated[
        list[str],
        Field(
            min_length=1,
            json_schema_extra={"items": {"enum": sorted(RETRY_CONDITIONS)}, "uniqueItems": True},
        ),
    ] = Field(default_factory=lambda: ["connect-failure", "reset", "5xx"])
    per_try_timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] | None = None
    backoff_base_ms: Annotated[int, Field(gt=0, le=60_000)] = 25
    backoff_max_ms: Annotated[int, Field(gt=0, le=300_000)] = 250
    # Whether POST, PATCH and other non-idempotent requests are retried after they may have
    # reached the upstream (they are always retried when they never left Envoy).
    retry_non_idempotent: bool = False

    @field_validator("retry_on")
    @classmethod
    def _known_conditions(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in RETRY_CONDITIONS]
        if unknown:
            raise ValueError(
                f"unknown retry condition(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(RETRY_CONDITIONS))}"
            )
        if len(set(value)) != len(value):
            raise ValueError("lists a retry condition twice")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryPolicy:
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ValueError("backoff_max_ms must not be below backoff_base_ms")
        return self


class RateLimit(_Strict):
    """A per-user budget: exactly one of the three rates, plus an optional burst."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [rate], "properties": {rate: {"type": "integer"}}}
                for rate in ("requests_per_second", "requests_per_minute", "requests_per_hour")
            ]
        }
    )

    requests_per_second: Annotated[int, Field(gt=0, le=MAX_RATE)] | None = None
    requests_per_minute: Annotated[int, Field(gt=0, le=MAX_RATE)] | None = None
    requests_per_hour: Annotated[int, Field(gt=0, le=MAX_RATE)] | None = None
    burst: Annotated[int, Field(ge=0, le=MAX_RATE)] = 0

    @model_validator(mode="after")
    def _exactly_one_rate(self) -> RateLimit:
        given = [
            r
            for r in (self.requests_per_second, self.requests_per_minute, self.requests_per_hour)
            if r is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of requests_per_second, requests_per_minute, requests_per_hour"
            )
        return self

    @property
    def limit(self) -> int:
        """Requests allowed per window (burst not included)."""
        rate = self.requests_per_second or self.requests_per_minute or self.requests_per_hour
        assert rate is not None
        return rate

    @property
    def window_seconds(self) -> int:
        if self.requests_per_second is not None:
            return 1
        if self.requests_per_minute is not None:
            return 60
        return 3600


class HealthCheck(_Strict):
    """Active HTTP health checking of every endpoint on `healthcheck_endpoint`."""

    interval_ms: Annotated[int, Field(ge=100, le=300_000)] = 5_000
    timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 1_000
    # Two passes in a row re-admit an endpoint: one lucky pass of a flapping endpoint does not
    # (Envoy admits a new endpoint at its first pass whatever this says).
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 3


class OutlierDetection(_Strict):
    """Passive ejection of endpoints that keep failing. Errors the upstream answered (5xx) and
    errors Envoy saw itself (a timeout, a reset, a refused connection: local-origin) are counted
    apart; an ejection stands for its whole time whatever health checks say."""

    consecutive_5xx: Annotated[int, Field(ge=1, le=1_000)] = 5
    consecutive_gateway_failure: Annotated[int, Field(ge=1, le=1_000)] = 5
    # Timeouts (per try or whole), resets and refused connections in a row: three timed-out
    # attempts take a hung endpoint out.
    consecutive_local_origin_failure: Annotated[int, Field(ge=1, le=1_000)] = 3
    interval_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 10_000
    base_ejection_time_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 30_000
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 50


class CircuitBreaker(_Strict):
    """Envoy's per-cluster thresholds at default priority."""

    max_connections: Annotated[int, Field(ge=1, le=UINT32_MAX)] = 1_024
    max_pending_requests: Annotated[int, Field(ge=1, le=UINT32_MAX)] = 1_024
    max_requests: Annotated[int, Field(ge=1, le=UINT32_MAX)] = 1_024
    max_retries: Annotated[int, Field(ge=0, le=UINT32_MAX)] = 3


_ABSOLUTE_PATH = re.compile(r"^/[^\x00]*$")
_SNI_SCHEMA = rf"^{_LABEL}(\.{_LABEL})*$"


class UpstreamTls(_Strict):
    """TLS to a service's `https://` upstreams (docs/tls.md): the CA their certificates must
    chain to (with `verify`, the default), the client certificate and key presented (mTLS),
    and the SNI sent (default: the URL's host). Paths are absolute, on Envoy's host; the
    files are checked at every load (`xds_server.pem`), and Envoy loads them again when they
    are replaced by a rename."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={
            "dependentRequired": {"cert_file": ["key_file"], "key_file": ["cert_file"]},
            "if": {
                "properties": {"verify": {"const": False}},
                "required": ["verify"],
            },
            "else": {"required": ["ca_file"]},
        },
    )

    ca_file: Annotated[str, _pattern(_ABSOLUTE_PATH)] | None = None
    cert_file: Annotated[str, _pattern(_ABSOLUTE_PATH)] | None = None
    key_file: Annotated[str, _pattern(_ABSOLUTE_PATH)] | None = None
    sni: Annotated[str, _pattern(_SNI_SCHEMA), Field(max_length=MAX_HOSTNAME)] | None = None
    verify: bool = True

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not _ABSOLUTE_PATH.fullmatch(value):
            raise ValueError("must be an absolute path (Envoy reads it, from its own directory)")
        return value

    @field_validator("sni")
    @classmethod
    def _sni(cls, value: str | None) -> str | None:
        if value is not None and not _is_hostname(value):
            raise ValueError("must be a DNS name (labels of 1-63 letters, digits, '-' or '_')")
        return value

    @model_validator(mode="after")
    def _together(self) -> UpstreamTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.verify and self.ca_file is None:
            raise ValueError(
                "verify needs ca_file (the CA the upstream's certificate must chain to); "
                'or set "verify": false'
            )
        return self


@dataclass(frozen=True)
class Upstream:
    """One `internal_url`, parsed."""

    host: str
    port: int
    tls: bool
    is_ip: bool  # an IP literal (EDS) rather than a hostname (resolved by Envoy)
    weight: int = 1  # its share of the traffic; 0 takes it out of rotation
    region: str | None = None


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def shown_url(url: str) -> str:
    """`url` as it may be printed: anything before an `@` in it (credentials someone put in
    the URL) is replaced by `***`, so no error message, log line or status page repeats it."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url


@functools.lru_cache(maxsize=65536)
def parse_url(url: str) -> Upstream:
    """Parse an `http(s)://host:port` URL; raise ValueError saying what is wrong (the URL
    shown without any credentials it holds)."""
    shown = repr(shown_url(url))
    if _UNSAFE_IN_URL.search(url):
        # urlsplit would drop tabs and line breaks silently: refuse what it would change.
        raise ValueError(f"{shown} is not http(s)://host:port: no spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown} is not http(s)://host:port: scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown} is not http(s)://host:port: bad port") from None
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"{shown} is not http(s)://host:port: host and port are required")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{shown} is not http(s)://host:port: no user, query or fragment")
    if parts.path not in ("", "/"):
        raise ValueError(f"{shown} is not http(s)://host:port: no path allowed")
    if any(c in url for c in "@?#"):  # urlsplit lets an empty user, query or fragment pass
        raise ValueError(f"{shown} is not http(s)://host:port: no user, query or fragment")
    is_ip = _is_ip(parts.hostname)
    if not is_ip and not _is_hostname(parts.hostname):
        raise ValueError(
            f"{shown}: host must be an IP address or a DNS name (labels of 1-63 letters, "
            f"digits, '-' or '_'; at most {MAX_HOSTNAME} characters)"
        )
    if not _URL.fullmatch(url):
        raise ValueError(f"{shown} is not http(s)://host:port")
    return Upstream(parts.hostname, port, parts.scheme == "https", is_ip)


def _is_hostname(host: str) -> bool:
    return len(host) <= MAX_HOSTNAME and all(_HOST_LABEL.fullmatch(x) for x in host.split("."))


class Endpoint(_Strict):
    """An `internal_url` entry with its share of the traffic and the region it runs in."""

    url: UrlString
    # Envoy's load_balancing_weight is a uint32 of at least 1; 0 leaves the endpoint out.
    weight: Annotated[int, Field(ge=0, le=MAX_WEIGHT)] = 1
    region: Annotated[str, _pattern(_REGION)] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_url(value)
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError("region names are 1-64 letters, digits, '.', '_' or '-'")
        return value

    def upstream(self) -> Upstream:
        return replace(parse_url(self.url), weight=self.weight, region=self.region)


# An `internal_url`: one URL, or a list of URLs and endpoint objects.
Urls = UrlString | Annotated[list[UrlString | Endpoint], Field(min_length=1)]


def upstreams_of(urls: Urls) -> list[Upstream]:
    """Every endpoint of an `internal_url`, parsed (weight-0 endpoints included)."""
    entries = [urls] if isinstance(urls, str) else urls
    return [parse_url(e) if isinstance(e, str) else e.upstream() for e in entries]


def urls_problem(urls: Urls) -> str | None:
    """What makes a list of endpoints unusable as a whole, if anything."""
    ups = upstreams_of(urls)
    if all(u.weight == 0 for u in ups):
        return "every endpoint has weight 0: nothing would receive traffic"
    regions = {u.region is None for u in ups}
    if len(regions) > 1:
        return "give a region to every endpoint or to none"
    return None


def check_urls(value: Urls) -> Urls:
    """Raise ValueError naming the first bad plain URL (endpoint objects check their own)."""
    for url in [value] if isinstance(value, str) else value:
        if isinstance(url, str):
            parse_url(url)
    return value


class ApiVersion(_Strict):
    """A version of a service's API with its own upstreams (everything else is the service's)."""

    internal_url: Urls

    @field_validator("internal_url")
    @classmethod
    def _urls(cls, value: Urls) -> Urls:
        return check_urls(value)


# An endpoint's path: segments of the characters Envoy's URI templates take as literals, or (in a
# template) a `{variable}` standing for one segment; no `.` or `..` segment (Envoy normalizes
# those away, so such a path would never match) and no trailing '/'.
_ENDPOINT_SEGMENT = r"(?:(?!\.\.?(?:/|$))[A-Za-z0-9._~!$&'()+,;:@%-]+|\{[a-z][a-z0-9_]{0,15}\})"
_ENDPOINT_PATH = re.compile(rf"^(?:/{_ENDPOINT_SEGMENT})+$|^/$")
_TEMPLATE_VARIABLE = re.compile(r"^\{([a-z][a-z0-9_]{0,15})\}$")
# Envoy's limit on the variables of one URI template.
MAX_TEMPLATE_VARIABLES = 5
HttpMethod = Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
assert set(get_args(HttpMethod)) == set(ACTION_OF_METHOD)
EndpointMatch = Literal["prefix", "exact", "template"]
_UNIQUE = Field(min_length=1, json_schema_extra={"uniqueItems": True})


class ServiceEndpoint(_Strict):
    """A part of a service (a path, optionally only some methods) with its own limit, roles,
    timeout, retries or caching. A field left out keeps the service's value; `"rate_limit":
    null` and `"retry_policy": null` turn the service's off for the endpoint. Matching and
    precedence: `endpoint_rank` (docs/catalog.md, "Endpoints")."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={
            "if": {"properties": {"match": {"const": "template"}}, "required": ["match"]},
            "then": {"properties": {"path": {"pattern": r"\{"}}},
            "else": {"properties": {"path": {"not": {"pattern": r"\{"}}}},
        },
    )

    # With the service's name, the endpoint's route name and its rate-limit name
    # (`orders.export`).
    name: Annotated[str, _pattern(_SERVICE_NAME)]
    # The whole path, the service's base_path included: `/orders/{id}/export`.
    path: Annotated[str, _pattern(_ENDPOINT_PATH)]
    # prefix: the path and everything below it; exact: the path alone; template: paths whose
    # segments match the path's, each `{variable}` standing for one non-empty segment.
    match: EndpointMatch = "prefix"
    methods: Annotated[list[HttpMethod], _UNIQUE] | None = None
    rate_limit: RateLimit | None = None
    # The roles allowed, whatever the method (instead of the service's permissions).
    roles: Annotated[list[Annotated[str, _pattern(_ROLE_SCHEMA)]], _UNIQUE] | None = None
    # The action every method counts as: the roles that may do it on the service are allowed.
    action: Literal["read", "write", "delete"] | None = None
    timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] | None = None
    retry_policy: RetryPolicy | None = None
    cacheable: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _name_checked(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _ENDPOINT_PATH.fullmatch(value):
            raise ValueError(
                "must be '/' and segments of letters, digits and -._~!$&'()+,;:@% (or, in a "
                "template, '{variable}'), no '.' or '..' segment and no trailing '/'"
            )
        return value

    @field_validator("methods", "roles")
    @classmethod
    def _once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a value twice")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str] | None) -> list[str] | None:
        for role in value or ():
            if not _ROLE_NAME.fullmatch(role):
                raise ValueError(
                    f"role {role!r}: names are 1-256 characters, without control characters "
                    "or spaces at either end"
                )
        return value

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(s for s in self.path.split("/") if s)

    def is_variable(self, segment: str) -> bool:
        return self.match == "template" and _TEMPLATE_VARIABLE.fullmatch(segment) is not None

    @property
    def own_limit(self) -> bool:
        """Whether the endpoint counts its requests apart from the service (it names its own
        `rate_limit`, or none)."""
        return "rate_limit" in self.model_fields_set


def endpoint_rank(ep: ServiceEndpoint) -> tuple[int, int, int]:
    """How specific an endpoint is; of the endpoints matching a request, the highest rank wins.
    Compared in order: the kind (exact 3, template 2, prefix 1), then the number of literal
    segments (a longer prefix, or a template with more fixed segments, is more specific), then
    whether it names methods (1) or not (0). Two endpoints of equal rank that can match one
    request are refused (`endpoints_overlap`), so the winner is never a matter of order."""
    kind = {"exact": 3, "template": 2, "prefix": 1}[ep.match]
    literals = sum(1 for s in ep.segments if not ep.is_variable(s))
    return kind, literals, 1 if ep.methods else 0


def endpoints_overlap(a: ServiceEndpoint, b: ServiceEndpoint) -> bool:
    """Whether some request matches both `a` and `b`, two endpoints of equal rank."""
    if a.methods and b.methods and not set(a.methods) & set(b.methods):
        return False
    if a.match != "template":
        return a.path == b.path  # equal rank: same kind and same number of segments
    if len(a.segments) != len(b.segments):
        return False
    return all(
        x == y or a.is_variable(x) or b.is_variable(y)
        for x, y in zip(a.segments, b.segments, strict=True)
    )


def endpoints_in_order(endpoints: Iterable[ServiceEndpoint]) -> list[ServiceEndpoint]:
    """The endpoints in the order their routes are matched: highest `endpoint_rank` first (the
    path, then the name, break ties between endpoints that never match the same request)."""
    return sorted(endpoints, key=lambda e: (tuple(-r for r in endpoint_rank(e)), e.path, e.name))


class Service(_Strict):
    service_name: Annotated[str, _pattern(_SERVICE_NAME)]
    base_path: Annotated[str, _pattern(_PATH_SCHEMA)]
    internal_url: Urls
    healthcheck_endpoint: Annotated[str, _pattern(_PATH_SCHEMA)] | None = None
    timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] = 15_000
    tenant_scope: Literal["global", "tenant"] = "global"
    cacheable: bool = False
    retry_policy: RetryPolicy | None = Field(default_factory=RetryPolicy)
    rbac_required: bool = True
    rate_limit: RateLimit | None = None
    public: bool = False
    connect_timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 1_000
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    # Envoy's overprovisioning factor, in percent: a region keeps min(100 %, its healthy share x
    # this / 100) of the traffic and the next region takes the rest. 200: a region keeps all of
    # it while at least half of its endpoints are healthy.
    overprovisioning_factor: Annotated[int, Field(ge=100, le=1_000)] = 200
    tenant_upstreams: Annotated[dict[str, Urls], _keys(_TENANT)] = Field(default_factory=dict)
    protocol: Literal["http1", "http2", "grpc"] = "http1"
    websocket: bool = False
    versions: Annotated[dict[str, ApiVersion], _keys(_VERSION_SCHEMA)] = Field(default_factory=dict)
    version_header: Annotated[
        str,
        Field(
            json_schema_extra={
                "pattern": _HEADER_NAME.pattern,
                "not": {"enum": sorted({*IDENTITY_HEADERS, "authorization", "host"})},
            }
        ),
    ] = "x-api-version"
    # Edge hardening (docs/security.md).
    strict_paths: bool = True
    max_request_body_bytes: Annotated[int, Field(ge=MIN_BODY_BYTES, le=MAX_BODY_BYTES)] | None = (
        None
    )
    method_override: bool = False
    # Parts of the service with their own limit, roles, timeout, retries or caching.
    endpoints: list[ServiceEndpoint] = Field(default_factory=list)
    # TLS to its https:// upstreams: CA, client certificate, SNI (docs/tls.md).
    tls: UpstreamTls | None = None
    # "dry_run": ext_authz decides, records a denial as would_deny, and allows (docs/admin-api.md).
    enforce: Literal["enforce", "dry_run"] = "enforce"

    @field_validator("service_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _name_checked(value)

    @field_validator("base_path", "healthcheck_endpoint")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        if not _PATH.fullmatch(value) or "//" in value:
            raise ValueError("must be a plain URL path (no query, fragment, spaces or '//')")
        return value

    @field_validator("internal_url")
    @classmethod
    def _urls(cls, value: Urls) -> Urls:
        return check_urls(value)

    @field_validator("tenant_upstreams")
    @classmethod
    def _tenant_urls(cls, value: dict[str, Urls]) -> dict[str, Urls]:
        for tenant, urls in value.items():
            if not _TENANT.fullmatch(tenant):
                raise ValueError(f"tenant {tenant!r}: names are 1-64 letters, digits, '_' or '-'")
            try:
                check_urls(urls)
            except ValueError as err:
                raise ValueError(f"tenant {tenant!r}: {err}") from None
        return value

    @field_validator("versions")
    @classmethod
    def _version_names(cls, value: dict[str, ApiVersion]) -> dict[str, ApiVersion]:
        for version in value:
            if not _VERSION.fullmatch(version) or ".." in version:
                raise ValueError(
                    f"version {version!r}: names are one path segment of 1-32 letters, digits, "
                    "'.', '_' or '-', starting with a letter or digit"
                )
        return value

    @field_validator("version_header")
    @classmethod
    def _version_header(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be a lowercase header name (letters, digits and '-')")
        if value in IDENTITY_HEADERS or value in ("authorization", "host"):
            raise ValueError(f"{value!r} is set by the gateway or the client's credentials")
        return value

    def tenant_upstreams_of(self, tenant: str) -> list[Upstream]:
        return upstreams_of(self.tenant_upstreams[tenant])

    def version_upstreams_of(self, version: str) -> list[Upstream]:
        return upstreams_of(self.versions[version].internal_url)

    def labelled_urls(self) -> list[tuple[str, str]]:
        """(label, URL) for every endpoint: the service's, each tenant's, each version's."""
        groups = [(self.service_name, self.internal_url)]
        groups += [
            (f"{self.service_name}-{t}", u) for t, u in sorted(self.tenant_upstreams.items())
        ]
        groups += [
            (f"{self.service_name}@{v}", a.internal_url) for v, a in sorted(self.versions.items())
        ]
        return [
            (label, e if isinstance(e, str) else e.url)
            for label, urls in groups
            for e in ([urls] if isinstance(urls, str) else urls)
        ]

    @property
    def upstreams(self) -> list[Upstream]:
        return upstreams_of(self.internal_url)

    def version_prefix(self, version: str) -> str:
        """The path under which `version` is chosen: `/orders/v2` for v2 of `/orders`."""
        return f"{self.base_path.rstrip('/')}/{version}"

    @property
    def route_prefix(self) -> str:
        """`base_path` without a trailing slash ('/' stays '/')."""
        return self.base_path.rstrip("/") or "/"

    def for_endpoint(self, ep: ServiceEndpoint) -> Service:
        """The service as `ep` sees it: its timeout, retries, caching and limit where `ep` names
        them (not validated again: both were)."""
        update: dict[str, Any] = {}
        if ep.timeout_ms is not None:
            update["timeout_ms"] = ep.timeout_ms
        if ep.cacheable is not None:
            update["cacheable"] = ep.cacheable
        for name in ("retry_policy", "rate_limit"):
            if name in ep.model_fields_set:
                update[name] = getattr(ep, name)
        return self.model_copy(update=update) if update else self


# What an access test may expect: the statuses of the decision table (docs/authorization.md),
# and 404 for a path no service's route takes.
AccessStatus = Literal[200, 401, 403, 404, 429, 431]
_REQUEST_PATH = r"^/[^\x00-\x20\x7f]*$"


class AccessRequest(_Strict):
    """The request of an access test: what a client sends (the token comes from `claims`)."""

    method: HttpMethod
    path: Annotated[str, _pattern(_REQUEST_PATH)]
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not re.fullmatch(_REQUEST_PATH, value):
            raise ValueError("a path starting with '/', without spaces or control characters")
        return value


class AccessTest(_Strict):
    """An access test (docs/admin-api.md): `request` with a token carrying `claims` (none:
    no token) must get `expect` from the decision ext_authz makes for the catalog's routes."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    request: AccessRequest
    claims: dict[str, Any] | None = None
    expect: AccessStatus


class Catalog(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    schema_ref: str | None = Field(default=None, alias="$schema")
    services: list[Service]
    roles: Annotated[dict[str, list[str]], _keys(_ROLE_SCHEMA)] = Field(default_factory=dict)
    # Run by `sidecar validate` and every reload: a failing one refuses the catalog.
    tests: list[AccessTest] = Field(default_factory=list)

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.service_name == name:
                return svc
        raise KeyError(name)


@dataclass(frozen=True)
class Problem:
    """One validation error: where (a JSON path) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CatalogError(Exception):
    """The catalog could not be used; `problems` lists every reason found."""

    def __init__(self, problems: Iterable[Problem], source: str = "") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(
            f"{head}invalid catalog ({len(self.problems)} problem(s)):\n"
            + "\n".join(f"  {p}" for p in self.problems)
        )


def json_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(err: ValidationError) -> list[Problem]:
    return _problems_of(err.errors(include_url=False))


def _problems_of(errors: Iterable[Any], prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """Problems from pydantic's errors, their locations under `prefix`."""
    by_path: dict[str, list[str]] = {}
    for e in errors:
        # A union adds each member's type to the location; drop it so the path stays the
        # user's JSON path, and merge the members' complaints into one message.
        loc = [
            p
            for p in (*prefix, *e["loc"])
            if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))
        ]
        by_path.setdefault(json_path(loc), []).append(_message(e))
    # A union member that failed on the type alone (a string was wanted) says nothing when
    # another member got further into the value: keep the deeper complaint.
    for path in [
        p for p, ms in by_path.items() if all(m.startswith("Input should be ") for m in ms)
    ]:
        if any(q.startswith((f"{path}[", f"{path}.")) for q in by_path):
            del by_path[path]
    problems = []
    for path, messages in by_path.items():
        if len(messages) > 1 and all(m.startswith("Input should be ") for m in messages):
            alternatives = " or ".join(m.removeprefix("Input should be ") for m in messages)
            problems.append(Problem(path, f"should be {alternatives}"))
        else:
            problems.extend(Problem(path, m) for m in messages)
    return problems


_UNION_TAGS = frozenset(
    {"str", "list", "function-after", "RetryPolicy", "RateLimit", "Endpoint", "UpstreamTls", "none"}
)


def _message(e: Any) -> str:
    kind = e["type"]
    ctx = e.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field (check its spelling)"
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), None)
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }
        return f"must be {words[kind]} {bound} (got {e.get('input')!r})"
    if kind == "value_error":
        return str(ctx.get("error", e["msg"]))
    return str(e["msg"])


def _semantic_problems(
    services: Iterable[tuple[int, Service]],
    roles: Mapping[str, list[str]],
    unparsed_names: Mapping[str, int],
) -> list[Problem]:
    """The checks that span fields, over `services` (each with its index in the file) and
    `roles`. `unparsed_names`: names of services that failed the first pass, so that a
    permission naming one of them is not reported as naming an unknown service."""
    problems: list[Problem] = []
    names: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    file_checks: FileChecks = {}
    services = list(services)
    for i, svc in services:
        where = f"services[{i}]"
        if svc.service_name in names:
            problems.append(
                Problem(
                    f"{where}.service_name",
                    f"duplicate service_name {svc.service_name!r} "
                    f"(first used by services[{names[svc.service_name]}])",
                )
            )
        else:
            names[svc.service_name] = i
        prefix = svc.route_prefix
        if prefix in prefixes:
            problems.append(
                Problem(
                    f"{where}.base_path",
                    f"base_path {svc.base_path!r} is already used by services[{prefixes[prefix]}]",
                )
            )
        else:
            prefixes[prefix] = i
        rp = svc.retry_policy
        if (
            rp is not None
            and rp.per_try_timeout_ms is not None
            and rp.per_try_timeout_ms > svc.timeout_ms
        ):
            problems.append(
                Problem(
                    f"{where}.retry_policy.per_try_timeout_ms",
                    f"per-try timeout {rp.per_try_timeout_ms} ms is above the service's "
                    f"timeout_ms {svc.timeout_ms}",
                )
            )
        if svc.public and svc.tenant_upstreams:
            problems.append(
                Problem(
                    f"{where}.tenant_upstreams",
                    "a public service has no verified tenant to route by",
                )
            )
        if svc.health_check.timeout_ms > svc.health_check.interval_ms:
            problems.append(
                Problem(f"{where}.health_check.timeout_ms", "must not be above interval_ms")
            )
        problems.extend(_traffic_problems(svc, where))
        problems.extend(upstream_tls_problems(svc, where, file_checks))
    for i, svc in services:
        problems.extend(_endpoint_problems(svc, f"services[{i}]", roles, prefixes))
        for version in svc.versions:
            taken = prefixes.get(svc.version_prefix(version))
            if taken is not None:
                problems.append(
                    Problem(
                        f"services[{i}].versions.{version}",
                        f"its path {svc.version_prefix(version)!r} is the base_path of "
                        f"services[{taken}]",
                    )
                )
    known = {**unparsed_names, **names}
    for role, permissions in roles.items():
        if not _ROLE_NAME.fullmatch(role):
            problems.append(
                Problem(
                    f"roles.{role}",
                    "role names are 1-256 characters, without control characters or "
                    "spaces at either end",
                )
            )
        for j, perm in enumerate(permissions):
            reason = _permission_problem(perm, known)
            if reason:
                problems.append(Problem(f"roles.{role}[{j}]", reason))
    return problems


def _traffic_problems(svc: Service, where: str) -> list[Problem]:
    """What one service's traffic fields ask for that makes no sense together."""
    out = []
    groups: list[tuple[str, Urls]] = [("internal_url", svc.internal_url)]
    groups += [(f"tenant_upstreams.{t}", urls) for t, urls in svc.tenant_upstreams.items()]
    groups += [(f"versions.{v}.internal_url", a.internal_url) for v, a in svc.versions.items()]
    for path, urls in groups:
        reason = urls_problem(urls)
        if reason:
            out.append(Problem(f"{where}.{path}", reason))
    if svc.websocket and svc.protocol != "http1":
        out.append(
            Problem(f"{where}.websocket", f"WebSocket needs protocol http1 (got {svc.protocol!r})")
        )
    if svc.cacheable:
        out.extend(_cache_problems(svc, where))
    rp = svc.retry_policy
    if svc.protocol == "grpc":
        if svc.cacheable:
            out.append(Problem(f"{where}.cacheable", "gRPC calls are POSTs, never cached"))
        out.extend(_grpc_retry_problems(rp, where))
    if svc.versions and svc.tenant_upstreams:
        out.append(
            Problem(
                f"{where}.versions",
                "not with tenant_upstreams (which upstream would a tenant's versioned call use?)",
            )
        )
    return out


def _grpc_retry_problems(rp: RetryPolicy | None, where: str) -> list[Problem]:
    """A gRPC service's (or endpoint's) retry conditions that can never apply."""
    grpc = [c for c in (rp.retry_on if rp else []) if c in GRPC_RETRY_CONDITIONS]
    if rp is None or not grpc or rp.retry_non_idempotent:
        return []
    return [
        Problem(
            f"{where}.retry_policy.retry_on",
            f"gRPC calls are POSTs, which may have reached the upstream: "
            f"{', '.join(grpc)} retries nothing unless retry_non_idempotent is true",
        )
    ]


def _endpoint_problems(
    svc: Service, where: str, roles: Mapping[str, list[str]], prefixes: Mapping[str, int]
) -> list[Problem]:
    """What one service's endpoints ask for that cannot be routed or makes no sense; `prefixes`:
    every service's route prefix and its index."""
    out: list[Problem] = []
    if svc.endpoints and svc.versions:
        out.append(
            Problem(
                f"{where}.endpoints",
                "not with versions (which version's path would an endpoint's path name?)",
            )
        )
    base = tuple(s for s in svc.route_prefix.split("/") if s)
    names: dict[str, int] = {}
    for j, ep in enumerate(svc.endpoints):
        at = f"{where}.endpoints[{j}]"
        if ep.name in names:
            out.append(
                Problem(
                    f"{at}.name",
                    f"duplicate endpoint name {ep.name!r} (first used by "
                    f"{where}.endpoints[{names[ep.name]}])",
                )
            )
        names.setdefault(ep.name, j)
        if ep.name in svc.tenant_upstreams or ep.name == "too_large":
            out.append(
                Problem(
                    f"{at}.name",
                    f"{svc.service_name}.{ep.name} already names another of the service's "
                    "routes (a tenant upstream's, or the body limit's)",
                )
            )
        out.extend(_endpoint_path_problems(ep, at, base, svc.base_path, prefixes))
        if ep.methods and svc.method_override:
            out.append(
                Problem(
                    f"{at}.methods",
                    "not on a service with method_override: the upstream may act on another "
                    "method than the one the route matched",
                )
            )
        if ep.roles is not None or ep.action is not None:
            field = "roles" if ep.roles is not None else "action"
            if ep.roles is not None and ep.action is not None:
                out.append(Problem(f"{at}.action", "give roles or action, not both"))
            if svc.public or not svc.rbac_required:
                out.append(
                    Problem(
                        f"{at}.{field}",
                        "the service checks no roles (public, or rbac_required false)",
                    )
                )
            for role in ep.roles or ():
                if role not in roles:
                    out.append(
                        Problem(f"{at}.roles", f"names role {role!r}, which roles does not define")
                    )
        seen = svc.for_endpoint(ep)
        rp = seen.retry_policy
        if (
            rp is not None
            and rp.per_try_timeout_ms is not None
            and (rp.per_try_timeout_ms > seen.timeout_ms)
        ):
            out.append(
                Problem(
                    f"{at}.retry_policy.per_try_timeout_ms"
                    if ep.retry_policy
                    else f"{at}.timeout_ms",
                    f"per-try timeout {rp.per_try_timeout_ms} ms is above the endpoint's "
                    f"timeout_ms {seen.timeout_ms}",
                )
            )
        if ep.cacheable:
            out.extend(_cache_problems(seen, at))
            if svc.protocol == "grpc":
                out.append(Problem(f"{at}.cacheable", "gRPC calls are POSTs, never cached"))
        if svc.protocol == "grpc" and ep.retry_policy is not None:
            out.extend(_grpc_retry_problems(ep.retry_policy, at))
    ranked: dict[tuple[int, int, int], list[int]] = {}
    for j, ep in enumerate(svc.endpoints):
        rank = endpoint_rank(ep)
        for k in ranked.get(rank, []):
            if endpoints_overlap(svc.endpoints[k], ep):
                out.append(
                    Problem(
                        f"{where}.endpoints[{j}]",
                        f"overlaps {where}.endpoints[{k}] and is as specific (both match some "
                        "request): make one more specific or give them different methods",
                    )
                )
        ranked.setdefault(rank, []).append(j)
    return out


def _endpoint_path_problems(
    ep: ServiceEndpoint,
    at: str,
    base: tuple[str, ...],
    base_path: str,
    prefixes: Mapping[str, int],
) -> list[Problem]:
    """Whether `ep`'s path suits its kind, lies under the service's `base` segments, and is not
    owned by a longer service (whose routes come first)."""
    variables = [s for s in ep.segments if _TEMPLATE_VARIABLE.fullmatch(s)]
    if ep.match == "template":
        if not variables:
            return [Problem(f"{at}.path", "a template names at least one '{variable}'")]
        if len(variables) > MAX_TEMPLATE_VARIABLES:
            return [
                Problem(f"{at}.path", f"at most {MAX_TEMPLATE_VARIABLES} variables in a template")
            ]
        if len(set(variables)) != len(variables):
            return [Problem(f"{at}.path", "names a variable twice")]
    elif "{" in ep.path:
        return [Problem(f"{at}.path", "'{variable}' needs match 'template'")]
    if ep.segments[: len(base)] != base:
        return [Problem(f"{at}.path", f"must lie under the service's base_path {base_path!r}")]
    head = ""
    for segment in ep.segments:
        if _TEMPLATE_VARIABLE.fullmatch(segment) and ep.match == "template":
            break
        head += "/" + segment
        owner = prefixes.get(head)
        if owner is not None and len(head) > len("/" + "/".join(base)):
            return [
                Problem(
                    f"{at}.path",
                    f"never reached: {head!r} is the base_path of services[{owner}], whose "
                    "routes come first",
                )
            ]
    return []


def _cache_problems(svc: Service, where: str) -> list[Problem]:
    """Envoy's cache keys an entry on the URL alone (its `cache_v2` filter cannot vary on the
    tenant or user ext_authz verified), so a cacheable service's stored answer goes to anyone
    allowed on the route: only a global service with one upstream for everyone may be cached."""
    out = []
    if svc.tenant_scope == "tenant":
        out.append(
            Problem(
                f"{where}.cacheable",
                "not with tenant_scope 'tenant': Envoy's cache keys answers on the URL alone, "
                "so one tenant's answer would be served to another",
            )
        )
    if svc.tenant_upstreams:
        out.append(
            Problem(
                f"{where}.cacheable",
                "not with tenant_upstreams: Envoy's cache keys answers on the URL alone, so "
                "one tenant's upstream's answer would be served to another tenant",
            )
        )
    return out


FileChecks = dict[tuple[str, ...], list[tuple[str, str]]]
"""The file checks made during one load, by (what, paths): the same files named by many
services are read once per load."""


def upstream_tls_problems(
    svc: Service, where: str, checked: FileChecks | None = None
) -> list[Problem]:
    """A service's `tls`: it has an https:// URL to apply to, and its files are usable now
    (read at every load, so a catalog that did not change is checked again)."""
    tls = svc.tls
    if tls is None:
        return []
    every = list(svc.upstreams)
    every += [u for t in svc.tenant_upstreams for u in svc.tenant_upstreams_of(t)]
    every += [u for v in svc.versions for u in svc.version_upstreams_of(v)]
    if not any(u.tls for u in every):
        return [Problem(f"{where}.tls", "applies to https:// URLs, and the service has none")]
    checked = {} if checked is None else checked
    found: list[tuple[str, str]] = []
    if tls.cert_file is not None and tls.key_file is not None:
        pair = ("pair", tls.cert_file, tls.key_file)
        if pair not in checked:
            checked[pair] = pem.pair_problems(Path(tls.cert_file), Path(tls.key_file))
        found += [(f"{which}_file", m) for which, m in checked[pair]]
    if tls.ca_file is not None:
        ca = ("ca", tls.ca_file)
        if ca not in checked:
            checked[ca] = [("ca", m) for m in pem.ca_problems(Path(tls.ca_file))]
        found += [("ca_file", m) for _, m in checked[ca]]
    return [Problem(f"{where}.tls.{field}", message) for field, message in found]


def _permission_problem(perm: str, services: Mapping[str, int]) -> str | None:
    try:
        service, _ = parse_permission(perm)
    except ValueError as err:
        return str(err)
    if service != "*" and service not in services:
        return f"permission {perm!r} names unknown service {service!r}"
    return None


def parse_catalog(data: object, source: str = "") -> Catalog:
    """Validate decoded JSON; raise CatalogError with every problem found."""
    return parse_catalog_cached(data, source, {})[0]


ServiceCache = dict[bytes, "Service | list[Any]"]
"""A service's JSON content (`service_key`) → the service it validated into, or pydantic's
errors for it."""


def service_key(item: Any) -> bytes:
    """What identifies a service's JSON: its content with every type and key order (marshal
    tells `1` from `true` and `1.0`, unlike ==, and is several times cheaper than json.dumps)."""
    return marshal.dumps(item, 2)


# The order pydantic reports the catalog's own fields in (unknown fields come last).
_FIELD_ORDER = {"$schema": 0, "services": 1, "roles": 2, "tests": 3}


def parse_catalog_cached(
    data: object, source: str, cache: ServiceCache
) -> tuple[Catalog, list[bytes]]:
    """`parse_catalog`, validating again only the services whose JSON `cache` does not hold;
    also returns each service's `service_key`. The same data gives the same catalog, or the
    same problems, as `parse_catalog`; the checks that span services always run. On success
    `cache` holds exactly this catalog's services."""
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        try:  # the shape is wrong: this raises
            return Catalog.model_validate(data), []
        except ValidationError as err:
            raise CatalogError(_pydantic_problems(err), source) from None
    items: list[Any] = data["services"]
    keys = [service_key(item) for item in items]
    used: ServiceCache = {}
    services: list[tuple[int, Service]] = []
    unparsed: dict[str, int] = {}
    problems: list[Problem] = []
    for i, (item, key) in enumerate(zip(items, keys, strict=True)):
        found = cache.get(key)
        if found is None:
            try:
                found = Service.model_validate(item)
            except ValidationError as err:
                found = err.errors(include_url=False)
        used[key] = found
        if isinstance(found, Service):
            services.append((i, found))
        else:
            problems.extend(_problems_of(found, ("services", i)))
            name = item.get("service_name") if isinstance(item, dict) else None
            if isinstance(name, str):
                unparsed.setdefault(name, i)
    top: Catalog | None = None
    try:
        top = Catalog.model_validate({**data, "services": []})
    except ValidationError as err:
        problems.extend(_pydantic_problems(err))
    roles = top.roles if top is not None else _roles_that_parse(data.get("roles"))
    problems.sort(key=lambda p: _FIELD_ORDER.get(re.split(r"[.\[]", p.path)[0], 3))
    problems.extend(_semantic_problems(services, roles, unparsed))
    if problems or top is None:
        raise CatalogError(problems, source)
    catalog = top.model_copy(update={"services": [svc for _, svc in services]})
    cache.clear()
    cache.update(used)
    return catalog, keys


def _roles_that_parse(roles: object) -> dict[str, list[str]]:
    """The roles of a catalog whose top level failed validation, as far as they have the
    right shape (the rest was reported by the first pass)."""
    if not isinstance(roles, dict):
        return {}
    return {
        role: perms
        for role, perms in roles.items()
        if isinstance(role, str)
        and isinstance(perms, list)
        and all(isinstance(p, str) for p in perms)
    }


class _Duplicated(dict[str, Any]):
    """A decoded JSON object that named `keys` more than once (only made when it did)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        counts = Counter(k for k, _ in pairs)
        self.keys_twice = sorted(k for k, n in counts.items() if n > 1)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    return found if len(found) == len(pairs) else _Duplicated(pairs)


def _duplicate_keys(data: object, loc: tuple[int | str, ...] = ()) -> Iterable[Problem]:
    if isinstance(data, dict):
        if isinstance(data, _Duplicated):
            for key in data.keys_twice:
                yield Problem(
                    json_path((*loc, key)),
                    "the key is given more than once (JSON would keep only the last)",
                )
        for key, value in data.items():
            yield from _duplicate_keys(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _duplicate_keys(value, (*loc, i))


def decode_json(raw: bytes, source: str = "") -> object:
    """Catalog file contents → JSON data; raise CatalogError if they are not UTF-8 JSON, or if
    an object names a key twice (each such key is a problem with its JSON path)."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_object)
    except UnicodeDecodeError as err:
        raise CatalogError([Problem("", f"not UTF-8: {err}")], source) from None
    except json.JSONDecodeError as err:
        raise CatalogError(
            [Problem("", f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}")],
            source,
        ) from None
    except RecursionError:
        raise CatalogError([Problem("", "not valid JSON: nested too deeply")], source) from None
    duplicates = list(_duplicate_keys(data))
    if duplicates:
        raise CatalogError(duplicates, source)
    return data


def decode_catalog(raw: bytes, source: str = "") -> Catalog:
    """Decode and validate catalog file contents; raise CatalogError on any problem."""
    return parse_catalog(decode_json(raw, source), source)


def load_catalog(path: str | Path) -> Catalog:
    """Read, decode and validate a catalog file; raise CatalogError on any problem."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise CatalogError([Problem("", f"cannot read the file: {err}")], str(path)) from None
    return decode_catalog(raw, str(path))


def json_schema() -> dict[str, Any]:
    """The catalog's JSON Schema, as editors use it."""
    schema = Catalog.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "service_catalog.json"
    return schema
