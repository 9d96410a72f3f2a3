"""The import arrows point one way: sidecar → the servers → sidecar_shared. Each package is
imported in a fresh interpreter and what it loaded is listed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OURS = ("sidecar", "sidecar_shared", "xds_server", "ext_authz")

LOAD = """
import importlib, json, pkgutil, sys
for name in {modules!r}:
    module = importlib.import_module(name)
    if {walk!r} and hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, name + "."):
            # otlp_proto's *_pb2 are copies its import hook loads under opentelemetry's names;
            # imported under their own, they clash with what pip left in that place.
            copy = info.name.startswith("sidecar_shared.otlp_proto.")
            if not info.name.endswith("__main__") and not copy:
                importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded(*modules: str, walk: bool = True) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", LOAD.format(modules=list(modules), walk=walk)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stdout))


def packages(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("sidecar_shared", {"sidecar_shared"}),
        ("xds_server", {"xds_server", "sidecar_shared", "ext_authz"}),
        ("ext_authz", {"ext_authz", "sidecar_shared"}),
    ],
)
def test_a_package_loads_only_what_is_below_it(package: str, allowed: set[str]) -> None:
    ours = packages(loaded(package)) & set(OURS)
    assert ours <= allowed, f"{package} loads {sorted(ours - allowed)}"


# The control plane runs ext_authz's decision core as a library (explain, access tests: the same
# code as every check), never its servers, transports, audit or command line.
SERVER_PARTS = ("ext_authz.app", "ext_authz.cli", "ext_authz.transports", "ext_authz.audit")


def test_the_control_plane_loads_only_ext_authz_decision_library() -> None:
    found = {n for n in loaded("xds_server") if n.startswith(SERVER_PARTS)}
    assert not found, f"xds_server loads {sorted(found)}"


def test_the_control_plane_never_loads_the_redis_client() -> None:
    assert "redis" not in packages(loaded("xds_server"))


def test_ext_authz_loads_redis_only_when_the_redis_backend_is_chosen() -> None:
    assert "redis" not in packages(loaded("ext_authz.app", "ext_authz.cli", walk=False))


def test_the_contract_needs_only_the_standard_library() -> None:
    baseline = loaded("json", walk=False)
    extra = packages(loaded("sidecar_shared.contract", walk=False) - baseline)
    assert extra - set(sys.stdlib_module_names) == {"sidecar_shared"}


def test_the_status_document_needs_only_the_standard_library() -> None:
    baseline = loaded("json", walk=False)
    extra = packages(loaded("xds_server.status", walk=False) - baseline)
    assert extra - set(sys.stdlib_module_names) == {"xds_server"}
