"""ext_authz settings: built once from flags and `SIDECAR_*` variables, passed down.

`from_args` checks values but reads no file: keys are loaded (and refused) when the server is
assembled (`ext_authz.app.build_authorizer`). `add_key_arguments` and `key_settings` are what
`sidecar token` shares, so the two read the same variables the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ext_authz import idp
from ext_authz.core import GuardSettings, LimitSettings
from ext_authz.keys import KeySettings
from ext_authz.tokens import ClaimNames, VerifierSettings
from sidecar_shared import defaults, tls
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag, add_switch
from sidecar_shared.tls import ServerTls


@dataclass(frozen=True)
class AuthzSettings:
    host: str
    port: int
    http_check_port: int
    http_host: str
    http_port: int
    workers: int
    keys: KeySettings
    verifier: VerifierSettings
    audit_file: str  # "-" is stdout
    audit_allow_sample: float
    rate_limit_backend: Literal["memory", "redis"]
    redis_url: str
    redis_timeout_ms: int
    redis_connect_timeout_ms: int
    redis_key_prefix: str
    rate_limit_fail_open: bool
    limits: LimitSettings
    log_level: str
    guard: GuardSettings = field(default_factory=GuardSettings)
    audit_denials_per_second: int = defaults.AUDIT_DENIALS_PER_SECOND
    # route-policy MAC keys shared with the xDS server (read at assembly; none: refuse to start)
    policy_key_file: Path | None = None
    # route policies by path or service for checks whose route carries none (an Envoy our xDS
    # server does not configure; read at assembly, `ext_authz.policy_file`)
    policy_file: Path | None = None
    tls: ServerTls | None = None  # both check ports' TLS (None: plain text)


def add_key_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The flags that say which keys sign tokens and which claims hold the identity."""

    def flag(name: str, default: object, help: str) -> None:
        add_flag(parser, name, default=default, help=help, environ=environ)

    flag("jwt-secret", None, "HS256/384/512 secret (prefer the _FILE form)")
    flag("jwt-secret-file", None, "file holding the HS256/384/512 secret")
    flag("jwks", None, "JWKS file path or https URL for RS/PS/ES/EdDSA keys")
    flag("jwks-ca-file", None, "PEM CA bundle trusted (instead of the system's) for the JWKS")
    flag("jwt-issuer", None, "required 'iss' when set; alone, the JWKS is discovered from it")
    flag("jwt-audience", None, "required 'aud' when set")
    flag("idp", None, f"identity provider preset for the claims: {'|'.join(idp.PRESETS)}")
    flag("claim-user", None, "claim path(s) of the user id (default: sub, or the preset's)")
    flag(
        "claim-roles",
        None,
        "claim path(s) of the roles, combined (default: roles, else role; or the preset's)",
    )
    flag("claim-tenant", None, "claim path(s) of the tenant (default: tenant_id, or the preset's)")


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    def flag(name: str, default: object, help: str, type: type = str) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    flag("authz-host", defaults.AUTHZ_HOST, "address of the gRPC and HTTP check servers")
    flag("authz-port", defaults.AUTHZ_PORT, "gRPC port (Check and health)", int)
    flag(
        "authz-http-check-port",
        defaults.AUTHZ_HTTP_CHECK_PORT,
        "HTTP port for Envoy's HTTP ext_authz checks (on --authz-host)",
        int,
    )
    flag("authz-http-host", defaults.AUTHZ_HTTP_HOST, "metrics/ready address")
    flag("authz-http-port", defaults.AUTHZ_HTTP_PORT, "metrics/ready port", int)
    flag("authz-workers", defaults.AUTHZ_WORKERS, "gRPC worker threads", int)
    tls.add_arguments(parser, environ, "authz", "the gRPC and HTTP check ports")
    add_key_arguments(parser, environ)
    flag(
        "policy-key-file",
        None,
        "file of route-policy MAC keys shared with the xDS server, one a line, any accepted "
        "(required unless --policy-file is given: a policy without a valid MAC is refused)",
    )
    flag(
        "policy-file",
        None,
        "route policies by path prefix or service, for an Envoy our xDS server does not "
        "configure (docs/standalone.md); read at start",
    )
    flag("jwt-leeway", defaults.JWT_LEEWAY_S, "seconds of clock skew allowed", float)
    flag(
        "jwks-refresh-min",
        defaults.JWKS_REFRESH_MIN_S,
        "seconds between JWKS reloads on an unknown kid",
        float,
    )
    flag(
        "key-refresh",
        defaults.KEY_REFRESH_S,
        "seconds between checks of the secret file and the JWKS",
        float,
    )
    flag("token-cache-size", defaults.TOKEN_CACHE_SIZE, "verified tokens kept", int)
    flag("audit-file", "-", "where audit lines go ('-' is stdout)")
    flag("audit-allow-sample", 1.0, "fraction of allows audited (denials always are)", float)
    flag("rate-limit-backend", "memory", "memory (one replica) or redis (shared)")
    flag("redis-url", defaults.REDIS_URL, "Redis for shared rate limits")
    flag("redis-timeout-ms", defaults.REDIS_TIMEOUT_MS, "Redis command timeout, ms", int)
    flag(
        "redis-connect-timeout-ms",
        defaults.REDIS_CONNECT_TIMEOUT_MS,
        "Redis connect timeout (TCP and TLS handshake), ms",
        int,
    )
    flag("redis-key-prefix", defaults.REDIS_KEY_PREFIX, "prefix of every rate-limit key in Redis")
    flag("rate-limit-failure", "open", "when Redis is unreachable: open (allow) or closed (429)")
    flag("rate-limit-headers", "draft", "draft (RateLimit, RateLimit-Policy) or legacy")
    flag("trusted-proxy-hops", 0, "proxies before Envoy that append to x-forwarded-for", int)
    add_guard_arguments(parser, environ)
    flag("log-level", "info", "log level")


def add_guard_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """What keeps one client from hurting the others (docs/security.md)."""

    def flag(name: str, default: object, help: str) -> None:
        add_flag(parser, name, default=default, help=help, type=int, environ=environ)

    add_switch(
        parser,
        "verbose-denials",
        help="tell denied clients the precise reason (development only)",
        environ=environ,
    )
    flag("failed-auth-budget", defaults.FAILED_AUTH_BUDGET, "failed authentications per address")
    flag("failed-auth-window", defaults.FAILED_AUTH_WINDOW_S, "seconds of the failure budget")
    flag("negative-cache-size", defaults.NEGATIVE_CACHE_SIZE, "refused tokens remembered")
    # The flood and audit caps (docs/authorization.md "Flood defenses" and "Audit log").
    flag(
        "failed-auth-signatures",
        defaults.FAILED_AUTH_COSTLY_PER_S,
        "failed asymmetric signature checks a second per address over its failed-auth budget",
    )
    flag(
        "audit-denials-per-second",
        defaults.AUDIT_DENIALS_PER_SECOND,
        "denial audit lines a second, all clients together (the rest counted in a summary line)",
    )
    flag("audit-denials-per-address", None, "no longer used: see --audit-denials-per-second")
    flag(
        "max-request-headers",
        defaults.EDGE_MAX_REQUEST_HEADERS,
        "Envoy's header count limit (the same setting as the xDS server's)",
    )


def claim_names(args: argparse.Namespace) -> ClaimNames:
    """The claim paths: each setting given, else the preset's (`--idp`), else the built-in
    ones. Raises ValueError naming the setting that is wrong."""
    chosen = idp.preset(args.idp)
    names = ClaimNames(
        user=args.claim_user or chosen.user,
        roles=args.claim_roles or chosen.roles,
        role="role" if chosen is idp.DEFAULT and not args.claim_roles else None,
        tenant=args.claim_tenant or chosen.tenant,
    )
    names.mapping()
    return names


def key_settings(args: argparse.Namespace) -> KeySettings:
    """With no key but an http(s) issuer, the JWKS is discovered from the issuer."""
    issuer = args.jwt_issuer or ""
    discover = not (args.jwt_secret or args.jwt_secret_file or args.jwks) and issuer.startswith(
        ("https://", "http://")
    )
    return KeySettings(
        secret=args.jwt_secret.encode() if args.jwt_secret else None,
        secret_file=Path(args.jwt_secret_file) if args.jwt_secret_file else None,
        jwks=args.jwks or None,
        refresh_s=getattr(args, "key_refresh", defaults.KEY_REFRESH_S),
        refresh_min_s=getattr(args, "jwks_refresh_min", defaults.JWKS_REFRESH_MIN_S),
        jwks_ca_file=Path(args.jwks_ca_file) if args.jwks_ca_file else None,
        discover_from=issuer if discover else None,
    )


def from_args(args: argparse.Namespace) -> AuthzSettings:
    """Raises SettingsError when a value cannot work."""
    if not 0 <= args.audit_allow_sample <= 1:
        raise SettingsError("audit-allow-sample must be between 0 and 1")
    for name, value, allowed in (
        ("rate-limit-backend", args.rate_limit_backend, ("memory", "redis")),
        ("rate-limit-failure", args.rate_limit_failure, ("open", "closed")),
        ("rate-limit-headers", args.rate_limit_headers, ("draft", "legacy")),
    ):
        if value not in allowed:
            raise SettingsError(f"{name} must be {' or '.join(allowed)}, not {value!r}")
    if args.trusted_proxy_hops < 0 or args.redis_timeout_ms <= 0:
        raise SettingsError("trusted-proxy-hops must be >= 0 and redis-timeout-ms > 0")
    if args.redis_connect_timeout_ms <= 0:
        raise SettingsError("redis-connect-timeout-ms must be > 0")
    if args.failed_auth_budget < 0 or args.failed_auth_window < 1:
        raise SettingsError("failed-auth-budget must be >= 0 and failed-auth-window >= 1")
    if args.failed_auth_signatures < 0:
        raise SettingsError("failed-auth-signatures must be >= 0")
    try:
        claims = claim_names(args)
    except ValueError as err:
        raise SettingsError(str(err)) from None
    return AuthzSettings(
        host=args.authz_host,
        port=args.authz_port,
        http_check_port=args.authz_http_check_port,
        http_host=args.authz_http_host,
        http_port=args.authz_http_port,
        workers=args.authz_workers,
        keys=key_settings(args),
        verifier=VerifierSettings(
            issuer=args.jwt_issuer,
            audience=args.jwt_audience,
            leeway_s=args.jwt_leeway,
            claims=claims,
            cache_size=args.token_cache_size,
            negative_cache_size=args.negative_cache_size,
        ),
        audit_file=args.audit_file,
        audit_allow_sample=args.audit_allow_sample,
        rate_limit_backend=args.rate_limit_backend,
        redis_url=args.redis_url,
        redis_timeout_ms=args.redis_timeout_ms,
        redis_connect_timeout_ms=args.redis_connect_timeout_ms,
        redis_key_prefix=args.redis_key_prefix,
        rate_limit_fail_open=args.rate_limit_failure == "open",
        limits=LimitSettings(
            header_style=args.rate_limit_headers, trusted_hops=args.trusted_proxy_hops
        ),
        log_level=args.log_level,
        guard=GuardSettings(
            verbose_denials=args.verbose_denials,
            failure_budget=args.failed_auth_budget,
            failure_window_s=args.failed_auth_window,
            costly_per_s=args.failed_auth_signatures,
            max_request_headers=args.max_request_headers,
        ),
        audit_denials_per_second=args.audit_denials_per_second,
        policy_key_file=Path(args.policy_key_file) if args.policy_key_file else None,
        policy_file=Path(args.policy_file) if args.policy_file else None,
        tls=tls.server_tls(
            "authz", args.authz_tls_cert, args.authz_tls_key, args.authz_tls_client_ca
        ),
    )


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ext-authz", description="Envoy external authorization.")
    add_arguments(parser, environ)
    return parser


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> AuthzSettings:
    return from_args(build_parser(environ).parse_args(argv))
