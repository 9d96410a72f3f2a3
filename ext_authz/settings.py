"""ext_authz settings: built once from flags and `SIDECAR_*` variables, passed down."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ext_authz.core import LimitSettings
from ext_authz.tokens import ClaimNames, KeyConfigError, VerifierSettings
from sidecar.envflags import add_flag


class SettingsError(KeyConfigError):
    """A setting has a value that cannot work."""


@dataclass(frozen=True)
class AuthzSettings:
    host: str
    port: int
    http_host: str
    http_port: int
    workers: int
    verifier: VerifierSettings
    secret_file: Path | None
    key_refresh_s: float
    audit_file: str  # "-" is stdout
    audit_allow_sample: float
    rate_limit_backend: Literal["memory", "redis"]
    redis_url: str
    redis_timeout_ms: int
    redis_key_prefix: str
    rate_limit_fail_open: bool
    limits: LimitSettings
    log_level: str


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    def flag(name: str, default: object, help: str, type: type = str) -> None:
        add_flag(parser, name, default=default, help=help, type=type, environ=environ)

    flag("authz-host", "0.0.0.0", "gRPC address")
    flag("authz-port", 9191, "gRPC port", int)
    flag("authz-http-host", "127.0.0.1", "metrics address")
    flag("authz-http-port", 9192, "metrics port", int)
    flag("authz-workers", 4, "gRPC worker threads (more only adds GIL contention)", int)
    flag("jwt-secret", None, "HS256/384/512 secret (prefer the _FILE form)")
    flag("jwt-secret-file", None, "file holding the HS256/384/512 secret")
    flag("jwks", None, "JWKS file path or https URL for RS/PS/ES/EdDSA keys")
    flag("jwt-issuer", None, "required 'iss' when set")
    flag("jwt-audience", None, "required 'aud' when set")
    flag("jwt-leeway", 30.0, "seconds of clock skew allowed", float)
    flag("jwks-refresh-min", 5.0, "seconds between JWKS reloads on an unknown kid", float)
    flag("key-refresh", 30.0, "seconds between checks of the secret file and the JWKS", float)
    flag("claim-user", "sub", "claim holding the user id")
    flag("claim-roles", "roles", "claim holding the roles (a list; 'role' may be one string)")
    flag("claim-tenant", "tenant_id", "claim holding the tenant")
    flag("token-cache-size", 10_000, "verified tokens kept", int)
    flag("audit-file", "-", "where audit lines go ('-' is stdout)")
    flag("audit-allow-sample", 1.0, "fraction of allows audited (denials always are)", float)
    flag("rate-limit-backend", "memory", "memory (one replica) or redis (shared)")
    flag("redis-url", "redis://127.0.0.1:6379/0", "Redis for shared rate limits")
    flag("redis-timeout-ms", 5, "Redis connect and read timeout, milliseconds", int)
    flag("redis-key-prefix", "sidecar:rl:", "prefix of every rate-limit key in Redis")
    flag("rate-limit-failure", "open", "when Redis is unreachable: open (allow) or closed (429)")
    flag("rate-limit-headers", "draft", "draft (RateLimit, RateLimit-Policy) or legacy")
    flag("trusted-proxy-hops", 0, "proxies before Envoy that append to x-forwarded-for", int)
    flag("log-level", "info", "log level")


def read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as err:
        raise KeyConfigError(f"cannot read the JWT secret file {path}: {err.strerror}") from None


def claim_names(args: argparse.Namespace) -> ClaimNames:
    return ClaimNames(user=args.claim_user, roles=args.claim_roles, tenant=args.claim_tenant)


def from_args(args: argparse.Namespace) -> AuthzSettings:
    """Raises KeyConfigError when the key settings cannot work."""
    if args.jwt_secret and args.jwt_secret_file:
        raise KeyConfigError("set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE, not both")
    secret_file = Path(args.jwt_secret_file) if args.jwt_secret_file else None
    secret: bytes | None = args.jwt_secret.encode() if args.jwt_secret else None
    if secret_file is not None:
        secret = read_secret(secret_file)
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
    return AuthzSettings(
        host=args.authz_host,
        port=args.authz_port,
        http_host=args.authz_http_host,
        http_port=args.authz_http_port,
        workers=args.authz_workers,
        verifier=VerifierSettings(
            secret=secret,
            jwks=args.jwks,
            issuer=args.jwt_issuer,
            audience=args.jwt_audience,
            leeway_s=args.jwt_leeway,
            claims=claim_names(args),
            cache_size=args.token_cache_size,
            jwks_refresh_min_s=args.jwks_refresh_min,
        ),
        secret_file=secret_file,
        key_refresh_s=args.key_refresh,
        audit_file=args.audit_file,
        audit_allow_sample=args.audit_allow_sample,
        rate_limit_backend=args.rate_limit_backend,
        redis_url=args.redis_url,
        redis_timeout_ms=args.redis_timeout_ms,
        redis_key_prefix=args.redis_key_prefix,
        rate_limit_fail_open=args.rate_limit_failure == "open",
        limits=LimitSettings(
            header_style=args.rate_limit_headers, trusted_hops=args.trusted_proxy_hops
        ),
        log_level=args.log_level,
    )


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> AuthzSettings:
    parser = argparse.ArgumentParser(prog="ext-authz", description="Envoy external authorization.")
    add_arguments(parser, environ)
    return from_args(parser.parse_args(argv))
