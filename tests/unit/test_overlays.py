"""Overlays merged onto the base catalog (xds_server/overlays.py) and the loading entry point
(xds_server/environments.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_server.builder import SnapshotBuilder
from xds_server.catalog import CatalogError, Problem, json_path
from xds_server.environments import CatalogFiles, env_names, load, overlay_path
from xds_server.overlays import merge, merge_patch
from xds_server.resources.common import Options

BASE: dict[str, Any] = {
    "services": [
        {
            "service_name": "orders",
            "base_path": "/orders",
            "internal_url": "http://127.0.0.1:8001",
            "timeout_ms": 1000,
            "rate_limit": {"requests_per_minute": 100},
        },
        {"service_name": "legacy", "base_path": "/legacy", "internal_url": "http://127.0.0.1:8002"},
        {"service_name": "users", "base_path": "/users", "internal_url": "http://127.0.0.1:8003"},
    ],
    "roles": {"admin": ["orders:*"], "viewer": ["orders:read"]},
}


def test_a_service_is_patched_by_name_and_nested_objects_merge() -> None:
    overlay = {"services": {"users": {"timeout_ms": 50}, "orders": {"rate_limit": {"burst": 5}}}}
    out = merge(BASE, overlay, "b.json", "o.json").data
    assert out["services"][0]["rate_limit"] == {"requests_per_minute": 100, "burst": 5}
    assert out["services"][2]["timeout_ms"] == 50
    assert BASE["services"][2].get("timeout_ms") is None  # the base is not altered


def test_the_list_form_matches_by_name_not_position() -> None:
    overlay = {"services": [{"service_name": "users", "internal_url": "http://10.1.1.1:80"}]}
    out = merge(BASE, overlay, "b.json", "o.json").data
    assert [s["internal_url"] for s in out["services"]][2] == "http://10.1.1.1:80"
    assert out["services"][0]["internal_url"] == "http://127.0.0.1:8001"


def test_null_removes_a_service_a_field_and_a_role_and_a_new_name_is_added() -> None:
    overlay = {
        "services": {
            "legacy": None,
            "orders": {"rate_limit": None},
            "search": {"base_path": "/search", "internal_url": "http://127.0.0.1:9"},
        },
        "roles": {"viewer": None, "ops": ["users:read"], "admin": ["users:*"]},
    }
    out = merge(BASE, overlay, "b.json", "o.json").data
    assert [s["service_name"] for s in out["services"]] == ["orders", "users", "search"]
    assert "rate_limit" not in out["services"][0]
    assert out["services"][2] == {
        "service_name": "search",
        "base_path": "/search",
        "internal_url": "http://127.0.0.1:9",
    }
    assert out["roles"] == {"admin": ["users:*"], "ops": ["users:read"]}


@pytest.mark.parametrize(
    ("overlay", "path", "words"),
    [
        ({"services": {"nothere": None}}, "o.json: services.nothere", "does not have"),
        ({"services": {"orders": 5}}, "o.json: services.orders", "object"),
        (
            {"services": {"orders": {"service_name": "x"}}},
            "o.json: services.orders.service_name",
            "must be 'orders'",
        ),
        ({"services": [{"timeout_ms": 1}]}, "o.json: services[0]", "naming its service"),
        ({"services": "x"}, "o.json: services", "keyed by service name"),
        ([], "o.json", "JSON object"),
    ],
)
def test_an_overlay_of_the_wrong_shape_is_refused_naming_the_overlay(
    overlay: Any, path: str, words: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        merge(BASE, overlay, "b.json", "o.json")
    (problem,) = caught.value.problems
    assert problem.path == path
    assert words in problem.message


def test_a_problem_is_told_against_the_file_and_path_it_came_from() -> None:
    overlay = {"services": {"legacy": None, "users": {"timeout_ms": -1}, "new": {"x": 1}}}
    origins = merge(BASE, overlay, "b.json", "o.json").origins
    # merged: orders[0] (base 0), users[1] (base 2), new[2] (overlay)
    assert origins.locate("services[1].timeout_ms") == ("o.json", "services.users.timeout_ms")
    assert origins.locate("services[1].base_path") == ("b.json", "services[2].base_path")
    assert origins.locate("services[1]") == ("b.json", "services[2]")
    assert origins.locate("services[2].x") == ("o.json", "services.new.x")
    assert origins.locate("roles.admin[0]") == ("b.json", "roles.admin[0]")
    assert origins.problem(Problem("services[1].timeout_ms", "bad")) == Problem(
        "o.json: services.users.timeout_ms", "bad"
    )


json_objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


@given(json_objects, json_objects)
def test_merge_patch_keeps_rfc7386s_laws(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once  # idempotent
    assert merge_patch(target, {}) == (target if isinstance(target, dict) else {})


# --- environments.py: files beside the base -------------------------------------------------


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_overlays_are_found_beside_the_base_and_the_schema_is_not_one(tmp_path: Path) -> None:
    base = _write(tmp_path / "service_catalog.json", BASE)
    for name in ("staging", "production", "schema", "a.b"):
        _write(tmp_path / f"service_catalog.{name}.json", {})
    assert env_names(base) == ["production", "staging"]
    assert overlay_path(base, "staging") == tmp_path / "service_catalog.staging.json"


def test_a_bad_value_from_the_overlay_names_the_overlay_after_the_build(tmp_path: Path) -> None:
    base = _write(tmp_path / "service_catalog.json", BASE)
    _write(tmp_path / "service_catalog.prod.json", {"services": {"users": {"timeout_ms": -5}}})
    loaded = load(CatalogFiles(base, "prod"), {})
    with pytest.raises(CatalogError) as caught:
        SnapshotBuilder(Options())(loaded.raw, loaded.source)
    problems = [str(p) for p in loaded.explain(caught.value).problems]
    assert problems == [
        f"{tmp_path}/service_catalog.prod.json: services.users.timeout_ms: "
        "must be greater than 0 (got -5)"
    ]


def test_an_unset_variable_in_a_merged_value_names_its_file(tmp_path: Path) -> None:
    base = _write(tmp_path / "service_catalog.json", BASE)
    _write(
        tmp_path / "service_catalog.prod.json",
        {"services": {"orders": {"internal_url": "http://${ORDERS_HOST}:80"}}},
    )
    with pytest.raises(CatalogError) as caught:
        load(CatalogFiles(base, "prod"), {})
    (problem,) = caught.value.problems
    assert problem.path == f"{tmp_path}/service_catalog.prod.json: services.orders.internal_url"
    assert "${ORDERS_HOST} is not set" in problem.message
    loaded = load(CatalogFiles(base, "prod"), {"ORDERS_HOST": "10.2.3.4"})
    assert json.loads(loaded.raw)["services"][0]["internal_url"] == "http://10.2.3.4:80"


def test_a_substituted_url_with_credentials_is_refused_without_showing_them(
    tmp_path: Path,
) -> None:
    base = _write(
        tmp_path / "service_catalog.json",
        {"services": [{**BASE["services"][0], "internal_url": "http://${UPSTREAM}"}]},
    )
    loaded = load(CatalogFiles(base), {"UPSTREAM": "bob:hunter2@10.0.0.1:80"})
    with pytest.raises(CatalogError) as caught:
        SnapshotBuilder(Options())(loaded.raw, loaded.source)
    text = str(caught.value)
    assert "services[0].internal_url" in text and "no user" in text
    assert "hunter2" not in text and "bob" not in text


def test_the_base_alone_without_a_reference_is_read_as_it_is(tmp_path: Path) -> None:
    raw = b'{"services": []}'
    base = tmp_path / "service_catalog.json"
    base.write_bytes(raw)
    assert load(CatalogFiles(base), {}).raw == raw


def test_a_duplicate_key_in_the_overlay_names_the_overlay(tmp_path: Path) -> None:
    base = _write(tmp_path / "service_catalog.json", BASE)
    (tmp_path / "service_catalog.qa.json").write_text('{"roles": {}, "roles": {}}')
    with pytest.raises(CatalogError) as caught:
        load(CatalogFiles(base, "qa"), {})
    assert caught.value.problems[0].path == f"{tmp_path}/service_catalog.qa.json: roles"


def test_a_missing_overlay_is_an_error_naming_it(tmp_path: Path) -> None:
    base = _write(tmp_path / "service_catalog.json", BASE)
    with pytest.raises(CatalogError) as caught:
        load(CatalogFiles(base, "qa"), {})
    assert "service_catalog.qa.json" in caught.value.problems[0].message


# --- every merged value is told against the file and path it came from -----------------------

_KEYS = st.sampled_from(["x", "y", "z"])
_LEAF = st.integers(0, 3) | st.sampled_from(["s", "t"]) | st.lists(st.integers(0, 2), max_size=2)
_VALUE = st.recursive(_LEAF, lambda inner: st.dictionaries(_KEYS, inner, max_size=2), max_leaves=4)
_PATCH = st.recursive(
    _LEAF | st.none(), lambda inner: st.dictionaries(_KEYS, inner, max_size=2), max_leaves=4
)
_NAMES = ["a", "b", "c", "d", "e"]


@st.composite
def _base_and_overlay(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(_NAMES[:4]), unique=True, max_size=4))
    services = [
        {"service_name": n, **draw(st.dictionaries(_KEYS, _VALUE, max_size=3))} for n in names
    ]
    roles = draw(st.dictionaries(_KEYS, st.lists(st.sampled_from(["p", "q"]), max_size=2)))
    patches: dict[str, Any] = {}
    for n in draw(st.lists(st.sampled_from(_NAMES), unique=True, max_size=4)):
        if n in names and draw(st.booleans()):
            patches[n] = None
        else:
            patches[n] = draw(st.dictionaries(_KEYS, _PATCH, max_size=3))
    overlay: dict[str, Any] = {"services": patches}
    if draw(st.booleans()):
        overlay["services"] = [{"service_name": n, **p} for n, p in patches.items() if p]
    overlay["roles"] = draw(st.dictionaries(_KEYS, st.none() | st.lists(st.just("r"))))
    return {"services": services, "roles": roles}, overlay


def _leaves(value: Any, loc: tuple[int | str, ...] = ()) -> list[tuple[tuple[int | str, ...], Any]]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*loc, k))]
    if isinstance(value, list) and value:
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*loc, i))]
    return [(loc, value)]


def _at(data: Any, path: str) -> Any:
    for key, index in re.findall(r"\.?([A-Za-z_$]+)|\[(\d+)\]", path):
        data = data[int(index)] if index else data[key]
    return data


@given(_base_and_overlay())
def test_each_merged_value_is_found_at_the_path_its_origin_names(
    files: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    base, overlay = files
    try:
        merged = merge(base, overlay, "base", "overlay")
    except CatalogError:
        return  # removing a service the base lacks: refused, tested above
    for loc, value in _leaves(merged.data):
        if value in ({}, []):
            continue  # emptied by removals, or added empty: no value to find
        name, path = merged.origins.locate(json_path(loc))
        source = base if name == "base" else overlay
        if loc[-1] == "service_name" and name == "overlay":
            # a service the overlay adds under its name: the name is the key
            assert path.endswith(f".{value}.service_name") or _at(source, path) == value
            continue
        assert _at(source, path) == value, (loc, name, path)
