"""`sidecar diff --env A --env B`: what differs between two environments' Envoy resources,
service by service.

Each snapshot is flattened into leaves: (service, resource, field path) → value, where the
service of a cluster or its endpoints is the cluster's (`service_of_cluster`), the service of a
route is the cluster it sends to, and what no one service owns (listeners, guard routes) is
under `(catalog)`. A route is named by its match (`route /orders`), so the same route in both
environments is compared field by field even when its position changed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from xds_server import typeurls
from xds_server.resources.clusters import service_of_cluster
from xds_server.snapshot import Snapshot

CATALOG_WIDE = "(catalog)"

Leaves = dict[tuple[str, str, str], Any]


@dataclass(frozen=True)
class Change:
    service: str
    resource: str
    path: str  # the field, as a JSON path inside the resource ("" for the whole resource)
    a: Any  # None: absent in A
    b: Any  # None: absent in B


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, str) and value.startswith("{"):
        # A route's policy travels as a JSON object in a header's value: compare its fields.
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    else:
        out[path] = value


def _route_cluster(route: dict[str, Any]) -> str | None:
    action = route.get("route", {})
    if "cluster" in action:
        return str(action["cluster"])
    weighted = action.get("weighted_clusters", {}).get("clusters", [])
    return str(weighted[0]["name"]) if weighted else None


def _add(leaves: Leaves, service: str, resource: str, message: dict[str, Any]) -> None:
    flat: dict[str, Any] = {}
    _flatten(message, "", flat)
    for path, value in flat.items():
        leaves[(service, resource, path)] = value


def leaves(snapshot: Snapshot) -> Leaves:
    """Every field of every resource of `snapshot`, keyed by its service."""
    out: Leaves = {}
    for type_url in typeurls.PUSH_ORDER:
        short = typeurls.SHORT_NAMES[type_url]
        for name, resource in snapshot.resources[type_url].items():
            message = json_format.MessageToDict(resource.message, preserving_proto_field_name=True)
            if short == "clusters":
                _add(out, service_of_cluster(name), f"cluster {name}", message)
            elif short == "endpoints":
                _add(out, service_of_cluster(name), f"endpoints {name}", message)
            elif short == "routes":
                for vh in message.pop("virtual_hosts", []):
                    for route in vh.pop("routes", []):
                        cluster = _route_cluster(route)
                        match = json.dumps(route.get("match", {}), sort_keys=True)
                        service = service_of_cluster(cluster) if cluster else CATALOG_WIDE
                        _add(out, service, f"route {match}", route)
                    _add(out, CATALOG_WIDE, f"virtual host {vh.get('name', '')}", vh)
                _add(out, CATALOG_WIDE, f"route configuration {name}", message)
            else:
                _add(out, CATALOG_WIDE, f"{short[:-1]} {name}", message)
    return out


def _presence(service: str, services: set[str]) -> str | None:
    return "present" if service in services else None


def diff(a: Snapshot, b: Snapshot) -> list[Change]:
    """What differs, sorted by service (the catalog-wide part last), resource and field."""
    la, lb = leaves(a), leaves(b)
    in_a, in_b = {k[0] for k in la}, {k[0] for k in lb}
    # A service only one side has is one change, not one per field.
    changes = [
        Change(
            s, "(service)", "", "present" if s in in_a else None, "present" if s in in_b else None
        )
        for s in in_a ^ in_b
    ]
    changes += [
        Change(service, resource, path, la.get(key), lb.get(key))
        for key in set(la) | set(lb)
        if la.get(key) != lb.get(key) and key[0] in in_a and key[0] in in_b
        for service, resource, path in [key]
    ]
    return sorted(changes, key=lambda c: (c.service == CATALOG_WIDE, c.service, c.resource, c.path))


def _shown(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, ensure_ascii=True)


def text_lines(changes: list[Change], name_a: str, name_b: str) -> list[str]:
    """Readable text: a header per service, one line per changed field."""
    if not changes:
        return [f"{name_a} and {name_b}: no difference in Envoy resources"]
    lines = [f"--- {name_a}", f"+++ {name_b}"]
    service = resource = None
    for c in changes:
        if c.service != service:
            service, resource = c.service, None
            lines.append(f"service {c.service}:")
        if c.resource != resource:
            resource = c.resource
            lines.append(f"  {c.resource}:")
        lines.append(f"    {c.path or '(resource)'}: {_shown(c.a)} → {_shown(c.b)}")
    return lines


def as_json(changes: list[Change], name_a: str, name_b: str) -> dict[str, Any]:
    services: dict[str, list[dict[str, Any]]] = {}
    for c in changes:
        services.setdefault(c.service, []).append(
            {"resource": c.resource, "path": c.path, "a": c.a, "b": c.b}
        )
    return {"a": name_a, "b": name_b, "services": services}
