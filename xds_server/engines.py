"""Which engine decides each route (pure): ext_authz, or Envoy's own filters (`native`,
compiled by `xds_server.resources.native`).

`--decision` (`SIDECAR_DECISION`):
- `ext_authz`: every route calls ext_authz (as before the setting existed).
- `native`: every route Envoy can decide at all is decided by Envoy's filters, the documented
  differences accepted (docs/engines.md); a route native cannot decide at all keeps ext_authz.
- `auto` (the default): native where the route's policy compiles to what ext_authz would
  answer, up to the documented differences; ext_authz where the catalog or the settings ask for
  what only ext_authz does (a limit: its sliding window, shared through Redis or not, and its
  RateLimit headers; method-override headers; tenant upstreams), and for every protected route
  when the keys are an HS secret or a JWKS URL (`from_args`).

Native needs the same keys and claims ext_authz reads: the xDS server reads the same
`SIDECAR_JWKS`, `SIDECAR_JWT_ISSUER`, `SIDECAR_JWT_AUDIENCE`, `SIDECAR_JWT_LEEWAY`,
`SIDECAR_IDP` and `SIDECAR_CLAIM_*` variables (`sidecar up` gives both servers the same
environment). An HS secret is never compiled: Envoy's jwt_authn takes it only inline in its
configuration (a JWKS `oct` key), which would put the secret into every xDS response, the
config dump on Envoy's admin port, and any captured snapshot. A JWKS file carries nothing
secret.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ext_authz.keys import KeyConfigError, parse_jwks
from sidecar_shared.contract import RoutePolicy
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag
from xds_server.catalog import Catalog
from xds_server.route_policy import compile_policy

DECISIONS = ("ext_authz", "native", "auto")
DEFAULT_DECISION = "auto"
Engine = Literal["ext_authz", "native"]

# Claim-path characters native understands: plain dotted names (`realm_access.roles`). A path
# with brackets or several paths (first found wins) stays with ext_authz.
# The identity providers' claim paths (user, roles, tenant): `ext_authz.idp`'s, which this
# package may not import (a unit test keeps the two equal). None: the built-in claims.
IDP_CLAIMS: dict[str | None, tuple[str, str, str]] = {
    None: ("sub", "roles", "tenant_id"),
    "keycloak": ("sub", "realm_access.roles", "tenant_id"),
    "auth0": ("sub", "permissions", "org_id"),
    "okta": ("sub", "groups", "tenant_id"),
    "azure": ("oid", "roles", "tid"),
    "google": ("email", "", "hd"),
}
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:/")


@dataclass(frozen=True)
class NativeKeys:
    """What Envoy's jwt_authn needs to verify tokens as ext_authz does."""

    jwks: str  # a JWKS file's path, or its http(s) URL
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 0
    user: tuple[str, ...] = ("sub",)  # claim path
    roles: tuple[str, ...] | None = ("roles",)  # None: the provider has no roles claim
    role_fallback: str | None = "role"  # read only when no `roles` claim is in the token
    tenant: tuple[str, ...] | None = ("tenant_id",)
    # The JWKS Envoy gets inline (`jwks_document`): the builder reads the file at `jwks` again
    # for every build, so a replaced file reaches Envoy with the next push. Empty: Envoy reads
    # the file itself, once, when it builds the listener.
    document: str = ""


def jwks_document(raw: bytes, source: str) -> str:
    """The JWKS to compile into jwt_authn from a JWKS file's bytes: the keys ext_authz verifies
    with (`ext_authz.keys.parse_jwks`: public signing keys only, weak ones left out), as
    compact JSON. Raises SettingsError naming `source` when the file is not such a JWKS (one
    with private or symmetric material included: never written into Envoy's config)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsError(f"{source}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise SettingsError(f"{source}: not a JWKS (an object with a 'keys' list)")
    try:
        usable = parse_jwks(data, source)
    except KeyConfigError as err:
        raise SettingsError(str(err)) from None
    if not usable:
        raise SettingsError(f"{source}: no usable signing key")
    public = [usable[kid].raw for kid in sorted(usable)]
    return json.dumps({"keys": public}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class EngineOptions:
    decision: str = "ext_authz"
    keys: NativeKeys | None = None
    # Why no route can be native (no usable keys), when `keys` is None.
    no_keys: str = "no JWKS configured"
    shared_limits: bool = False  # ext_authz counts limits in Redis, shared by every replica

    @property
    def compiled_keys(self) -> NativeKeys | None:
        """The keys compiled into Envoy's jwt_authn: none with `--decision ext_authz`."""
        return None if self.decision == "ext_authz" else self.keys


@dataclass(frozen=True)
class Choice:
    engine: Engine
    reason: str  # one sentence for `sidecar render` / `validate`


def choose(policy: RoutePolicy, options: EngineOptions) -> Choice:
    """The engine of a route whose policy is `policy`, and why."""
    if options.decision == "ext_authz":
        return Choice("ext_authz", "--decision ext_authz")
    if policy.method_override:
        return Choice("ext_authz", "method-override headers are authorized by ext_authz only")
    if policy.tenant_upstreams:
        return Choice("ext_authz", "tenant upstreams are chosen by ext_authz only")
    if policy.dry_run:
        return Choice("ext_authz", "dry run: ext_authz lets through and records what it would deny")
    if policy.rate_limit is not None and options.decision == "auto":
        if options.shared_limits:
            return Choice("ext_authz", "its limit is shared through Redis")
        return Choice(
            "ext_authz", "a limit: ext_authz's sliding window and RateLimit headers on every answer"
        )
    if policy.public:
        limited = " + per-address local_ratelimit" if policy.rate_limit else ""
        return Choice("native", "public" + limited)
    if options.keys is None:
        return Choice("ext_authz", options.no_keys)
    parts = ["jwt_authn"]
    if policy.rbac_required:
        parts.append("rbac")
    if policy.tenant_scope == "tenant":
        parts.append("tenant")
    if policy.rate_limit is not None:
        parts.append("per-user local_ratelimit")
    return Choice("native", " + ".join(parts))


def route_choices(catalog: Catalog, options: EngineOptions) -> list[tuple[str, Choice]]:
    """Each service's and endpoint's engine (`<service>` / `<service>.<endpoint>`), in
    catalog order: what `sidecar render` and `validate` print."""
    out = []
    for svc in catalog.services:
        out.append((svc.service_name, choose(compile_policy(catalog, svc), options)))
        for ep in svc.endpoints:
            policy = compile_policy(catalog, svc, ep)
            out.append((f"{svc.service_name}.{ep.name}", choose(policy, options)))
    return out


def needs_native_filters(catalog: Catalog, options: EngineOptions) -> bool:
    """Whether a route uses a native filter (a public route without a limit needs none)."""
    if options.decision == "ext_authz":
        return False
    for svc in catalog.services:
        for policy in [compile_policy(catalog, svc)] + [
            compile_policy(catalog, svc, ep) for ep in svc.endpoints
        ]:
            used = not policy.public or policy.rate_limit is not None
            if used and choose(policy, options).engine == "native":
                return True
    return False


def _path(spec: str, setting: str) -> tuple[str, ...] | str:
    """A claim path native can read, or why not."""
    if not spec:
        return ()
    if "," in spec or "[" in spec or not set(spec) - {"."} <= _PLAIN:
        return f"{setting}={spec!r} is not one plain dotted claim path"
    return tuple(spec.split("."))


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """`--decision`, and the key and claim settings ext_authz reads (same names, same
    variables), which native compiles into Envoy's configuration."""

    def flag(name: str, default: object, help: str) -> None:
        add_flag(parser, name, default=default, help=help, environ=environ)

    flag("decision", DEFAULT_DECISION, "which engine decides routes: ext_authz, native or auto")
    flag("jwt-secret", None, "HS secret (ext_authz's; never compiled into Envoy's config)")
    flag("jwt-secret-file", None, "HS secret file (ext_authz's; never compiled)")
    flag("jwks", None, "JWKS file path or http(s) URL, compiled into jwt_authn")
    flag("jwt-issuer", None, "required 'iss' when set")
    flag("jwt-audience", None, "required 'aud' when set")
    flag("jwt-leeway", "30", "seconds of clock skew allowed")
    flag("idp", None, "identity provider preset for the claims")
    flag("claim-user", None, "claim path of the user id")
    flag("claim-roles", None, "claim path of the roles")
    flag("claim-tenant", None, "claim path of the tenant")
    flag("rate-limit-backend", "memory", "ext_authz's limiter: memory or redis (shared)")


def from_args(args: argparse.Namespace) -> EngineOptions:
    """Raises SettingsError when `--decision native` cannot compile any protected route."""
    decision = args.decision
    if decision not in DECISIONS:
        raise SettingsError(f"--decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    keys: NativeKeys | None = None
    no_keys = ""
    if args.jwt_secret or args.jwt_secret_file:
        no_keys = "an HS secret is never written into Envoy's configuration"
    elif not args.jwks:
        no_keys = "no JWKS (SIDECAR_JWKS) to compile into jwt_authn"
    elif args.jwks.startswith(("http://", "https://")):
        no_keys = "a JWKS URL is fetched by ext_authz (native compiles a JWKS file only)"
    else:
        name = args.idp.lower() if args.idp else None
        if name not in IDP_CLAIMS:
            raise SettingsError(f"SIDECAR_IDP={args.idp!r} is not one of the presets")
        user_path, roles_path, tenant_path = IDP_CLAIMS[name]
        paths = {
            "user": _path(args.claim_user or user_path, "SIDECAR_CLAIM_USER"),
            "roles": _path(args.claim_roles or roles_path, "SIDECAR_CLAIM_ROLES"),
            "tenant": _path(args.claim_tenant or tenant_path, "SIDECAR_CLAIM_TENANT"),
        }
        wrong = [p for p in paths.values() if isinstance(p, str)]
        if wrong:
            no_keys = wrong[0]
        else:
            user, roles, tenant = (p for p in paths.values() if not isinstance(p, str))
            keys = NativeKeys(
                jwks=args.jwks,
                issuer=args.jwt_issuer or None,
                audience=args.jwt_audience or None,
                leeway_s=int(float(args.jwt_leeway)),
                user=user,
                roles=roles or None,
                role_fallback="role" if name is None and not args.claim_roles else None,
                tenant=tenant or None,
            )
    if decision == "native" and keys is None:
        raise SettingsError(f"--decision native: {no_keys}; use auto or ext_authz")
    return EngineOptions(
        decision=decision,
        keys=keys,
        no_keys=no_keys,
        shared_limits=args.rate_limit_backend == "redis",
    )
