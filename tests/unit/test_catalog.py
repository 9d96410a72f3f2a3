"""The catalog accepts what the contract allows and names every mistake with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.catalogs import ROOT, SAMPLE
from xds_server.catalog import (
    CatalogError,
    Service,
    decode_catalog,
    json_schema,
    load_catalog,
    parse_catalog,
)

BAD = Path(__file__).resolve().parent.parent / "fixtures" / "bad_catalogs"

# fixture file → (JSON path, words the message must contain)
EXPECTED = {
    "unknown_field": ("services[1].timeout", "unknown field"),
    "duplicate_service_name": ("services[2].service_name", "duplicate service_name 'orders'"),
    "duplicate_base_path": ("services[2].base_path", "already used by services[1]"),
    "base_path_without_slash": ("services[0].base_path", "must start with '/'"),
    "url_without_port": ("services[1].internal_url", "host and port are required"),
    "url_bad_scheme": ("services[1].internal_url", "scheme must be http or https"),
    "url_host_too_long": ("services[0].internal_url", "at most 253 characters"),
    "non_positive_timeout": ("services[0].timeout_ms", "must be greater than 0"),
    "per_try_timeout_above_total": (
        "services[0].retry_policy.per_try_timeout_ms",
        "above the service's timeout_ms 1000",
    ),
    "permission_names_unknown_service": ("roles.viewer[0]", "unknown service 'billing'"),
    "permission_with_unknown_action": ("roles.viewer[0]", "unknown action 'view'"),
    "max_retries_out_of_range": ("services[0].retry_policy.max_retries", "at most 10"),
    "unknown_retry_condition": ("services[0].retry_policy.retry_on", "'sometimes'"),
    "rate_limit_with_two_rates": ("services[0].rate_limit", "exactly one of"),
    "backoff_max_below_base": ("services[0].retry_policy", "backoff_max_ms"),
    "unknown_tenant_scope": ("services[0].tenant_scope", "'global' or 'tenant'"),
    "cacheable_not_boolean": ("services[0].cacheable", "valid boolean"),
    "services_missing": ("services", "required"),
    "not_json": ("", "not valid JSON"),
    "all_weights_zero": ("services[0].internal_url", "every endpoint has weight 0"),
    "regions_on_some_endpoints": ("services[0].internal_url", "to every endpoint or to none"),
    "websocket_not_http1": ("services[0].websocket", "WebSocket needs protocol http1"),
    "grpc_status_retry_without_opt_in": (
        "services[0].retry_policy.retry_on",
        "unavailable retries nothing unless retry_non_idempotent is true",
    ),
    "version_path_taken": ("services[0].versions.v2", "is the base_path of services[1]"),
    "versions_with_tenant_upstreams": ("services[0].versions", "not with tenant_upstreams"),
    "unknown_protocol": ("services[0].protocol", "'http1', 'http2' or 'grpc'"),
    "duplicate_key": ("services[0].timeout_ms", "given more than once"),
    "duplicate_role": ("roles.viewer", "given more than once"),
    "cacheable_tenant_scoped": (
        "services[0].cacheable",
        "not with tenant_scope 'tenant': Envoy's cache keys answers on the URL alone",
    ),
    "cacheable_tenant_upstreams": ("services[0].cacheable", "not with tenant_upstreams"),
    "endpoints_overlap": (
        "services[0].endpoints[1]",
        "overlaps services[0].endpoints[0] and is as specific",
    ),
    "endpoint_unknown_role": (
        "services[0].endpoints[0].roles",
        "names role 'admins', which roles does not define",
    ),
    "endpoint_outside_base_path": (
        "services[0].endpoints[0].path",
        "must lie under the service's base_path '/orders'",
    ),
    "endpoint_template_without_variable": (
        "services[0].endpoints[0].path",
        "a template names at least one '{variable}'",
    ),
    "endpoint_under_another_service": (
        "services[0].endpoints[0].path",
        "never reached: '/orders/admin' is the base_path of services[1]",
    ),
    "endpoint_methods_with_method_override": (
        "services[0].endpoints[0].methods",
        "not on a service with method_override",
    ),
    "endpoints_with_versions": ("services[0].endpoints", "not with versions"),
    "body_limit_below_the_minimum": (
        "services[0].max_request_body_bytes",
        "must be at least 262144 (got 65536)",
    ),
}


def test_every_bad_fixture_has_an_expectation() -> None:
    assert {p.stem for p in BAD.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_bad_catalog_is_rejected_with_the_path_and_reason(name: str) -> None:
    path, words = EXPECTED[name]
    with pytest.raises(CatalogError) as caught:
        load_catalog(BAD / f"{name}.json")
    matching = [p for p in caught.value.problems if p.path == path]
    assert matching, f"no problem at {path!r}: {caught.value.problems}"
    assert any(words in p.message for p in matching), matching
    assert f"{path}: " in str(caught.value) or not path


def test_every_problem_is_reported_at_once() -> None:
    data = json.loads((BAD / "unknown_field.json").read_text())
    data["services"][0]["timeout_ms"] = -5
    data["services"][0]["base_path"] = "nope"
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    assert {p.path for p in caught.value.problems} == {
        "services[1].timeout",
        "services[0].timeout_ms",
        "services[0].base_path",
    }


def test_a_broken_service_hides_none_of_the_checks_that_span_services() -> None:
    ok = {"service_name": "a", "base_path": "/a", "internal_url": "http://127.0.0.1:1"}
    data = {
        "services": [
            {**ok, "timeout_ms": -5},  # fails the first pass
            ok,
            {**ok, "internal_url": "http://127.0.0.1:2"},  # same name and base path as [1]
            {"service_name": "b", "base_path": "/b", "internal_url": "ftp://h:1"},  # first pass
        ],
        "roles": {"r": ["b:read", "a:read", "nope:read"], "s": ["a:fly"]},
    }
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data)
    assert {p.path for p in caught.value.problems} == {
        "services[0].timeout_ms",
        "services[3].internal_url",
        "services[2].service_name",
        "services[2].base_path",
        "roles.r[2]",  # names no service; "b" failed the first pass but exists
        "roles.s[0]",
    }


def test_a_broken_top_level_still_checks_the_services() -> None:
    ok = {"service_name": "a", "base_path": "/a", "internal_url": "http://127.0.0.1:1"}
    with pytest.raises(CatalogError) as caught:
        parse_catalog({"services": [ok, ok], "extra": 1, "roles": {"r": ["x:read"]}})
    assert {p.path for p in caught.value.problems} == {
        "extra",
        "services[1].service_name",
        "services[1].base_path",
        "roles.r[0]",
    }


def test_duplicate_keys_are_refused_at_every_depth() -> None:
    raw = b'{"services": [{"a": 1, "a": 2, "b": {"c": 1, "c": 1}}], "x": 1, "x": 1}'
    with pytest.raises(CatalogError) as caught:
        decode_catalog(raw, "cat.json")
    assert [p.path for p in caught.value.problems] == [
        "x",
        "services[0].a",
        "services[0].b.c",
    ]
    assert str(caught.value).startswith("cat.json: invalid catalog (3 problem(s))")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@10.0.0.1:80", "http://***@10.0.0.1:80"),
        ("http://pw@h:1/x", "http://***@h:1/x"),
        ("https://u:p@ss/w@h:99999", "https://***@h:99999"),
        ("ftp://u:pw@h:1", "ftp://***@h:1"),
        ("u:pw@h:1", "***@h:1"),
    ],
)
def test_a_url_with_credentials_is_refused_without_repeating_them(url: str, shown: str) -> None:
    svc = {"service_name": "a", "base_path": "/a", "internal_url": url}
    with pytest.raises(CatalogError) as caught:
        parse_catalog({"services": [svc], "roles": {}})
    if "@" in url:
        assert "pw" not in str(caught.value) and "u:" not in str(caught.value)
    assert repr(shown) in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_name", "orders\n"),
        ("base_path", "/orders\n"),
        ("healthcheck_endpoint", "/health\n"),
        ("internal_url", "http://h\n:1"),
        ("internal_url", "http://h:1?"),
        ("internal_url", "http://@h:1"),
        ("version_header", "x-v\n"),
        ("tenant_upstreams", {"acme\n": "http://h:2"}),
        ("versions", {"v2\n": {"internal_url": "http://h:2"}}),
        ("internal_url", [{"url": "http://h:1", "region": "eu\n"}]),
    ],
)
def test_a_trailing_line_break_or_an_empty_url_part_is_refused(field: str, value: object) -> None:
    svc = {"service_name": "a", "base_path": "/a", "internal_url": "http://h:1", field: value}
    with pytest.raises(CatalogError) as caught:
        parse_catalog({"services": [svc]})
    assert [p.path.split(".")[1].split("[")[0] for p in caught.value.problems] == [field]


def test_json_error_names_line_and_column() -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(BAD / "not_json.json")
    assert "line 2" in caught.value.problems[0].message


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog(tmp_path / "absent.json")


def test_the_sample_catalog_is_valid_and_uses_every_field() -> None:
    catalog = load_catalog(SAMPLE)
    assert len(catalog.services) >= 3
    raw = json.loads(SAMPLE.read_text())
    used = {key for svc in raw["services"] for key in svc}
    # `tls` names PEM files on the host and needs https:// upstreams: docs/tls.md shows it.
    assert used | {"tls"} == set(Service.model_fields)
    assert any(isinstance(s["internal_url"], list) for s in raw["services"])
    assert raw["roles"]


def test_a_catalog_with_only_the_seed_fields_is_valid() -> None:
    seed = {
        "services": [
            {
                "service_name": "orders",
                "base_path": "/orders",
                "internal_url": "http://10.0.0.5:8080",
                "healthcheck_endpoint": "/health",
                "timeout_ms": 3000,
                "tenant_scope": "tenant",
                "cacheable": False,
                "retry_policy": {"max_retries": 2, "retry_on": ["5xx"]},
                "rbac_required": True,
                "rate_limit": {"requests_per_minute": 60},
            }
        ]
    }
    svc = parse_catalog(seed).services[0]
    assert svc.public is False
    assert svc.retry_policy is not None and svc.retry_policy.backoff_base_ms == 25


def test_a_prefix_of_another_base_path_is_allowed() -> None:
    catalog = parse_catalog(
        {
            "services": [
                {"service_name": "a", "base_path": "/api", "internal_url": "http://127.0.0.1:1"},
                {"service_name": "b", "base_path": "/api/v2", "internal_url": "http://127.0.0.1:2"},
            ]
        }
    )
    assert [s.service_name for s in catalog.services] == ["a", "b"]


@pytest.mark.parametrize("perm", ["*", "orders:*", "*:read", "orders:delete", "*:*"])
def test_permission_patterns_with_wildcards_are_accepted(perm: str) -> None:
    data = {
        "services": [{"service_name": "orders", "base_path": "/o", "internal_url": "http://h:1"}],
        "roles": {"r": [perm]},
    }
    assert parse_catalog(data).roles == {"r": [perm]}


def test_the_shipped_json_schema_matches_the_models() -> None:
    shipped = json.loads((ROOT / "service_catalog.schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: sidecar schema > service_catalog.schema.json"
    assert shipped["properties"]["services"]["type"] == "array"
