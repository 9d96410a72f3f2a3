"""`sidecar explain [--catalog PATH | --remote HOST:PORT] (--token T | --claims JSON) METHOD PATH`:
the decision ext_authz would make, step by step, without sending traffic (docs/admin-api.md).

Local (the default): against a catalog file, with ext_authz's own decision core
(`xds_server.explain`). Remote (`--remote`): against the catalog a running xDS server serves,
through `Admin/Explain`. A token is verified here, with the keys ext_authz is configured with
(`SIDECAR_JWT_SECRET`, `SIDECAR_JWKS`, ...: the same flags); the xDS server holds no key, so
remotely the verified identity's claims are sent. `--claims` states the caller instead.

Everything a remote server sent is printed through `status_view.shown` (control characters
escaped); exit 0 when the request would be allowed, 1 when denied, 2 when it cannot explain.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from ext_authz import settings as authz_settings
from ext_authz.keys import KeyConfigError, KeySource
from ext_authz.tokens import TokenError, TokenVerifier, VerifierSettings
from sidecar.status_view import shown
from sidecar_shared import defaults
from sidecar_shared.admin_api import ADMIN_SERVICE
from sidecar_shared.admin_api import admin_pb2 as pb
from sidecar_shared.flags import add_flag, add_repeated, add_switch
from xds_server.catalog import CatalogError, decode_catalog, load_catalog
from xds_server.explain import Explainer, Probe, Trace


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    parser.add_argument("method", help="the request's method (GET, POST, ...)")
    parser.add_argument("path", help="the request's path (/orders/42)")
    add_flag(parser, "catalog", default=defaults.CATALOG, help="catalog file", environ=environ)
    add_flag(parser, "token", default=None, help="the caller's bearer token", environ=environ)
    add_flag(
        parser,
        "claims",
        default=None,
        help='the caller\'s verified claims, a JSON object ({"sub": "u1", "roles": ["r"]})',
        environ=environ,
    )
    add_repeated(parser, "header", help="a request header, NAME:VALUE", environ=environ)
    add_flag(
        parser,
        "remote",
        default=None,
        help="an xDS server's gRPC address: explain against the catalog it serves",
        environ=environ,
    )
    add_flag(parser, "remote-tls-ca", default=None, help="CA of --remote's TLS", environ=environ)
    add_flag(parser, "remote-tls-cert", default=None, help="client certificate", environ=environ)
    add_flag(parser, "remote-tls-key", default=None, help="its key", environ=environ)
    add_switch(parser, "json", help="print the decision as JSON", environ=environ)
    authz_settings.add_key_arguments(parser, environ)


class ExplainError(Exception):
    """What keeps a request from being explained (exit 2)."""


def _headers(given: list[str] | None) -> dict[str, str]:
    out = {}
    for item in given or ():
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"--header {item!r}: give NAME:VALUE")
        out[name.strip().lower()] = value.strip()
    return out


def _claims(text: str) -> dict[str, Any]:
    try:
        claims = json.loads(text)
    except ValueError as err:
        raise ExplainError(f"--claims is not JSON: {err}") from None
    if not isinstance(claims, dict):
        raise ExplainError("--claims must be a JSON object")
    return claims


def _verifier(args: argparse.Namespace) -> TokenVerifier:
    """A verifier with ext_authz's keys and claim settings (the same flags and variables)."""
    try:
        keys = KeySource(authz_settings.key_settings(args))
        keys.load()
        names = authz_settings.claim_names(args)
    except (KeyConfigError, ValueError) as err:
        raise ExplainError(f"cannot verify --token: {err}") from None
    settings = VerifierSettings(issuer=args.jwt_issuer, audience=args.jwt_audience, claims=names)
    return TokenVerifier(settings, keys)


def explain_local(args: argparse.Namespace, probe: Probe) -> Trace:
    try:
        catalog = load_catalog(Path(args.catalog))
    except CatalogError as err:
        raise ExplainError(str(err)) from None
    verifier = _verifier(args) if probe.token is not None else None
    return Explainer(verifier).explain(catalog, probe)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not (args.remote_tls_ca or args.remote_tls_cert):
        return grpc.insecure_channel(args.remote)

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    try:
        credentials = grpc.ssl_channel_credentials(
            read(args.remote_tls_ca), read(args.remote_tls_key), read(args.remote_tls_cert)
        )
    except OSError as err:
        raise ExplainError(f"--remote-tls-*: {err}") from None
    return grpc.secure_channel(args.remote, credentials)


def explain_remote(args: argparse.Namespace, probe: Probe) -> pb.Decision:
    claims = probe.claims
    if probe.token is not None:  # verified here: the server holds no key
        try:
            identity = _verifier(args).verify(probe.token)
        except TokenError as err:
            raise ExplainError(f"the token is refused here ({err.reason}): {err.detail}") from None
        claims = {"sub": identity.user, "roles": list(identity.roles)}
        if identity.tenant is not None:
            claims["tenant_id"] = identity.tenant
    request = pb.ExplainRequest(
        method=probe.method,
        path=probe.path,
        headers=dict(probe.headers),
        claims_json=json.dumps(claims) if claims is not None else "",
    )
    with _channel(args) as channel:
        call = channel.unary_unary(
            f"/{ADMIN_SERVICE}/Explain",
            request_serializer=pb.ExplainRequest.SerializeToString,
            response_deserializer=pb.Decision.FromString,
        )
        try:
            decision: pb.Decision = call(request, timeout=30)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            raise ExplainError(f"{args.remote}: {code.name}: {shown(details)}") from None
    return decision


def trace_json(trace: Trace) -> dict[str, Any]:
    return trace.to_json()


def decision_json(decision: pb.Decision) -> dict[str, Any]:
    return {
        "version": decision.version,
        "method": None,
        "route": decision.route or None,
        "service": decision.service or None,
        "policy": json.loads(decision.policy_json) if decision.policy_json else None,
        "steps": [
            {"name": s.name, "verdict": s.verdict, "detail": s.detail} for s in decision.steps
        ],
        "status": decision.status,
        "reason": decision.reason,
        "message": decision.message,
        "would_deny": decision.would_deny,
    }


def table(method: str, path: str, data: Mapping[str, Any]) -> str:
    """The decision as a readable table; every value escaped (`shown`)."""
    status = f"{data['status']} {shown(data['reason'])}"
    if data.get("would_deny"):
        status += f" (dry run: enforcing would answer {data['would_deny']})"
    lines = [
        f"{shown(method)} {shown(path)}",
        f"  route    {shown(data.get('route') or '-')}",
        f"  service  {shown(data.get('service') or '-')}",
    ]
    if data.get("version"):
        lines.append(f"  version  {shown(data['version'])}")
    lines.append("")
    lines.append(f"  {'step':<8} {'verdict':<12} detail")
    for step in data["steps"]:
        lines.append(
            f"  {shown(step['name']):<8} {shown(step['verdict']):<12} {shown(step['detail'])}"
        )
        lines[-1] = lines[-1].rstrip()
    lines.append("")
    lines.append(f"  decision {status}: {shown(data['message'])}")
    return "\n".join(lines)


def tests_line(raw: bytes, source: str) -> str | None:
    """What `sidecar validate` says of a valid catalog's access tests (None: it has none), for
    its JSON `raw` (as merged) read from `source`."""
    count = len(decode_catalog(raw, source).tests)
    return f"  {count} access test(s) passed" if count else None


def run(args: argparse.Namespace) -> int:
    try:
        if args.token is not None and args.claims is not None:
            raise ExplainError("give --token or --claims, not both")
        probe = Probe(
            args.method.upper(),
            args.path,
            _headers(args.header),
            token=args.token,
            claims=_claims(args.claims) if args.claims is not None else None,
        )
        if args.remote:
            data = decision_json(explain_remote(args, probe))
            data["method"], data["path"] = probe.method, probe.path
        else:
            data = trace_json(explain_local(args, probe))
    except ExplainError as err:
        print(f"sidecar explain: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(table(probe.method, probe.path, data))
    return 0 if data["status"] == 200 else 1
