"""`sidecar policy`: what an Envoy our xDS server does not configure needs (docs/standalone.md).

- `sidecar policy --file [--catalog C]`: the catalog compiled into a policy file for ext_authz
  (`ext_authz.policy_file`, `--policy-file`), one route per endpoint and per service, in the
  order the xDS server matches them, each policy compiled as the xDS server compiles it.
- `sidecar policy SERVICE [--authz-transport grpc|http] [--signed --policy-key-file K]`: the
  per-route ext_authz settings (`typed_per_filter_config`) for SERVICE's routes in someone
  else's Envoy. Unsigned (with a policy file): gRPC routes name the service in
  `context_extensions`; HTTP routes need nothing (the path decides). Signed: the policy itself,
  MAC'd as our xDS server sends it (no policy file needed; in HTTP mode a whole `http_service`,
  `server_uri` included).
- `sidecar policy --check-envoy CONFIG`: refuses an Envoy configuration (JSON or YAML, a static
  bootstrap, a config dump, or a running Envoy's `http://ADMIN/config_dump`) that would deny
  every request without calling ext_authz: a per-route `http_service` without its own
  `server_uri` (Envoy validates it and then fails each request of that route with the filter's
  `status_on_error`, 403 by default, counting `ext_authz.error`; ext_authz never hears of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ext_authz import policy_file
from sidecar_shared import defaults
from sidecar_shared.contract import (
    AUTHZ_TRANSPORTS,
    CHECK_PATH_PREFIX,
    SERVICE_KEY,
    encode,
    read_policy_keys,
)
from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag, add_switch
from xds_server.catalog import Catalog, CatalogError, Service, endpoints_in_order, load_catalog
from xds_server.resources.authz import per_route
from xds_server.resources.common import AuthzOptions
from xds_server.resources.routes import routing_order
from xds_server.route_policy import compile_policy

AUTHZ_FILTER = "envoy.filters.http.ext_authz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


def file_routes(catalog: Catalog) -> list[dict[str, Any]]:
    """The policy file's routes for `catalog`: per service (longest base path first), its
    endpoints (most specific first), then the service's base path."""
    routes: list[dict[str, Any]] = []
    for svc in routing_order(catalog.services):
        for ep in endpoints_in_order(svc.endpoints):
            route: dict[str, Any] = {
                "service": svc.service_name,
                "match": ep.match,
                "path": ep.path,
            }
            if ep.methods:
                route["methods"] = list(ep.methods)
            route["policy"] = json.loads(encode(compile_policy(catalog, svc, ep)))
            routes.append(route)
        routes.append(
            {
                "service": svc.service_name,
                "match": "prefix",
                "path": svc.route_prefix,
                "policy": json.loads(encode(compile_policy(catalog, svc))),
            }
        )
    return routes


def _route_of(svc: Service) -> list[tuple[str, dict[str, Any]]]:
    """(name, what it matches) for each of `svc`'s routes, in order."""
    out = []
    for ep in endpoints_in_order(svc.endpoints):
        match: dict[str, Any] = {"match": ep.match, "path": ep.path}
        if ep.methods:
            match["methods"] = list(ep.methods)
        out.append((f"{svc.service_name}.{ep.name}", match))
    out.append((svc.service_name, {"match": "prefix", "path": svc.route_prefix}))
    return out


def per_route_settings(
    catalog: Catalog, service: str, transport: str, policy_key: bytes | None = None
) -> dict[str, Any]:
    """What each of `service`'s routes needs in someone else's Envoy (see the module doc)."""
    svc = catalog.service(service)
    if policy_key is None:
        if transport == "http":
            config: dict[str, Any] | None = None
            note = (
                "nothing per route: ext_authz picks the policy by the request's path from its "
                "--policy-file (a header naming the service could come from a client)"
            )
        else:
            config = {"@type": PER_ROUTE_TYPE}
            config["check_settings"] = {"context_extensions": {SERVICE_KEY: service}}
            note = (
                "one setting for every route of the service: ext_authz picks the route's "
                "policy among the service's in its --policy-file by method and path"
            )
        return {
            "service": service,
            "transport": transport,
            "note": note,
            "routes": [
                {
                    "name": name,
                    **match,
                    **({"typed_per_filter_config": {AUTHZ_FILTER: config}} if config else {}),
                }
                for name, match in _route_of(svc)
            ],
        }
    options = AuthzOptions(transport=transport, policy_key=policy_key)
    routes = []
    for ep, (name, match) in zip(
        [*endpoints_in_order(svc.endpoints), None], _route_of(svc), strict=True
    ):
        message = per_route(options, service, encode(compile_policy(catalog, svc, ep)))
        config = json_format.MessageToDict(message, preserving_proto_field_name=True)
        routes.append(
            {
                "name": name,
                **match,
                "typed_per_filter_config": {AUTHZ_FILTER: {"@type": PER_ROUTE_TYPE, **config}},
            }
        )
    return {
        "service": service,
        "transport": transport,
        "note": "signed policies: ext_authz needs the same --policy-key-file; no policy file",
        "routes": routes,
    }


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def check_envoy_config(config: Any) -> list[str]:
    """Every place in an Envoy configuration where ext_authz use would go wrong silently."""
    problems = []
    for path, node in _walk(config, ""):
        if not isinstance(node, dict):
            continue
        settings = node.get("check_settings")
        service = settings.get("http_service") if isinstance(settings, dict) else None
        if isinstance(service, dict) and "server_uri" not in service:
            problems.append(
                f"{path}.check_settings.http_service: no server_uri. A per-route http_service "
                "replaces the filter's whole http_service; without its own server_uri Envoy "
                "fails every request of this route (status_on_error, 403 by default; stat "
                "ext_authz.error) without calling ext_authz. Copy the filter's server_uri (and "
                "path_prefix) into it, or use `sidecar policy SERVICE --signed`, which prints "
                "a complete one"
            )
        kind = str(node.get("@type", ""))
        http = node.get("http_service")
        if (
            kind.endswith(".ext_authz.v3.ExtAuthz")
            and isinstance(http, dict)
            and http.get("path_prefix") != CHECK_PATH_PREFIX
        ):
            problems.append(
                f"{path}.http_service.path_prefix: must be {CHECK_PATH_PREFIX!r}: ext_authz "
                "reads the client's path after it, and a client path that begins with it "
                "would otherwise be read as another path"
            )
    return problems


def _read_config(source: str) -> Any:
    """A configuration file (JSON or YAML), or a running Envoy's `http://ADMIN/config_dump`."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as resp:  # noqa: S310 - http(s) only
            return json.loads(resp.read())
    path = Path(source)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # noqa: PLC0415 - only for YAML configurations

        return yaml.safe_load(text)
    return json.loads(text)


def add_parser(sub: Any, environ: Any) -> None:
    p = sub.add_parser(
        "policy",
        help="ext_authz settings for an Envoy we do not configure: a policy file, per-route "
        "settings, a check of its configuration",
    )
    p.add_argument("service", nargs="?", help="the service whose per-route settings to print")

    def flag(name: str, default: object, help: str) -> None:
        add_flag(p, name, default=default, help=help, environ=environ)

    flag("catalog", defaults.CATALOG, "the service catalog")
    flag("authz-transport", defaults.AUTHZ_TRANSPORT, "how that Envoy calls ext_authz: grpc|http")
    flag("policy-key-file", None, "with --signed: the route-policy key file ext_authz has")
    flag(
        "check-envoy",
        None,
        "an Envoy configuration to check: a JSON or YAML file, or http://ADMIN/config_dump",
    )
    add_switch(p, "file", help="print the policy file for ext_authz --policy-file", environ=environ)
    add_switch(p, "signed", help="per-route settings carrying signed policies", environ=environ)
    p.set_defaults(func=cmd_policy)


def cmd_policy(args: argparse.Namespace) -> int:
    if args.check_envoy:
        problems = check_envoy_config(_read_config(args.check_envoy))
        for problem in problems:
            print(f"{args.check_envoy}: {problem}")
        if not problems:
            print(f"{args.check_envoy}: no problem found with its ext_authz settings")
        return 1 if problems else 0
    if args.authz_transport not in AUTHZ_TRANSPORTS:
        raise SettingsError(f"authz-transport must be grpc or http, not {args.authz_transport!r}")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as err:
        print(err, file=sys.stderr)
        return 1
    if args.file:
        print(json.dumps(policy_file.document(file_routes(catalog)), indent=2))
        return 0
    if not args.service:
        raise SettingsError("name a SERVICE, or give --file or --check-envoy")
    key = None
    if args.signed:
        if not args.policy_key_file:
            raise SettingsError("--signed needs --policy-key-file, the one ext_authz is given")
        key = read_policy_keys(Path(args.policy_key_file))[0]
    try:
        settings = per_route_settings(catalog, args.service, args.authz_transport, key)
    except KeyError:
        raise SettingsError(f"the catalog has no service {args.service!r}") from None
    print(json.dumps(settings, indent=2))
    return 0
