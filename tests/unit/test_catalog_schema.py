"""The shipped JSON Schema refuses what `sidecar validate` refuses, field by field, where JSON
Schema can say it: generated values for each checked field are judged by both, and the verdicts
must agree. What a schema cannot say (rules across services, a host name's total length,
whether a bracketed IPv6 address is one) is left to `validate`."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar_shared.contract import IDENTITY_HEADERS
from xds_server.catalog import RETRY_CONDITIONS, CatalogError, json_schema, parse_catalog

pytestmark = pytest.mark.unit

GOOD_URL = "http://127.0.0.1:8080"


def _ecma(pattern: str) -> str:
    """`pattern` for Python's re with ECMA-262's meaning of `$` (the end of the input; Python's
    `$` also matches before a final newline): each `$` outside a character class becomes `\\Z`."""
    out, in_class, escaped = [], False, False
    for c in pattern:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(c)
    return "".join(out)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not re.search(_ecma(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})
SCHEMA = EcmaValidator(json_schema())


def verdicts(catalog: dict[str, Any]) -> tuple[bool, bool]:
    """(the schema accepts it, validate accepts it)"""
    schema_ok = not any(SCHEMA.iter_errors(catalog))
    try:
        parse_catalog(catalog)
    except CatalogError:
        return schema_ok, False
    return schema_ok, True


def service(**fields: Any) -> dict[str, Any]:
    return {"service_name": "orders", "base_path": "/orders", "internal_url": GOOD_URL, **fields}


def agree(catalog: dict[str, Any]) -> None:
    schema_ok, validate_ok = verdicts(catalog)
    assert schema_ok == validate_ok, (
        f"schema {'accepts' if schema_ok else 'refuses'}, validate "
        f"{'accepts' if validate_ok else 'refuses'}: {catalog!r}"
    )


def texts(alphabet: str, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), max_size=max_size)


urls = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
        st.sampled_from(["://", ":/", "//"]),
        st.sampled_from(["", "", "", "u:p@", "@"]),
        st.sampled_from(
            ["h", "127.0.0.1", "[::1]", "a.b", "a..b", "-a", "a-", "a_b", "é", "h\n", "", "a" * 64]
        ),
        st.sampled_from([":1", ":80", ":0", ":65535", ":65536", ":0080", ":00", ":", ":x", ""]),
        st.sampled_from(["", "", "/", "/p", "?", "#", "?a=1", " ", "\t"]),
    ),
)
names = st.one_of(texts("abz09_-.A \n", 8), st.sampled_from(["a" * 63, "a" * 64, "orders"]))
paths = texts("/aZ09._~!$&'()*+,;=:@%-? #\n", 12)


@settings(max_examples=200, deadline=None)
@given(st.one_of(urls, urls.map(lambda u: [u]), urls.map(lambda u: [{"url": u}])))
def test_internal_urls(url: Any) -> None:
    agree({"services": [service(internal_url=url)]})


@settings(max_examples=200, deadline=None)
@given(names)
def test_service_names(name: str) -> None:
    agree({"services": [service(service_name=name)]})


@settings(max_examples=200, deadline=None)
@given(paths, st.sampled_from(["base_path", "healthcheck_endpoint"]))
def test_paths(path: str, field: str) -> None:
    agree({"services": [service(**{field: path})]})


@settings(max_examples=200, deadline=None)
@given(texts("aZ09._-/ \n", 8) | st.just("a" * 65))
def test_regions(region: str) -> None:
    agree({"services": [service(internal_url=[{"url": GOOD_URL, "region": region}])]})


@settings(max_examples=200, deadline=None)
@given(texts("aZ09._-/ \n", 8) | st.just("a" * 65))
def test_tenant_names(tenant: str) -> None:
    agree({"services": [service(tenant_upstreams={tenant: GOOD_URL})]})


@settings(max_examples=200, deadline=None)
@given(texts("aZ09._-/ \n", 8) | st.just("v" * 33))
def test_version_names(version: str) -> None:
    agree({"services": [service(versions={version: {"internal_url": GOOD_URL}})]})


@settings(max_examples=200, deadline=None)
@given(texts("az09-_A\n", 8) | st.sampled_from(sorted({*IDENTITY_HEADERS, "authorization"})))
def test_version_headers(header: str) -> None:
    agree({"services": [service(version_header=header)]})


@settings(max_examples=200, deadline=None)
@given(texts("aZ, /:\t\x85\xa0", 6) | st.sampled_from(["a" * 256, "a" * 257]))
def test_role_names(role: str) -> None:
    agree({"services": [service()], "roles": {role: ["orders:read"]}})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*sorted(RETRY_CONDITIONS), "sometimes"]), max_size=3))
def test_retry_conditions(conditions: list[str]) -> None:
    agree({"services": [service(retry_policy={"retry_on": conditions})]})


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["requests_per_second", "requests_per_minute", "requests_per_hour"]),
        st.one_of(st.none(), st.integers(1, 10)),
    )
)
def test_rate_limits(rates: dict[str, int | None]) -> None:
    agree({"services": [service(rate_limit=rates)]})


def test_the_comparison_can_fail() -> None:
    """A schema without the patterns would disagree: the test above is not vacuous."""
    plain = jsonschema.Draft202012Validator({"type": "object"})
    catalog = {"services": [service(service_name="Orders")]}
    assert not any(plain.iter_errors(catalog))
    assert verdicts(catalog) == (False, False)


def with_endpoint(**fields: Any) -> dict[str, Any]:
    endpoint = {"name": "e", "path": "/orders/x", **fields}
    return {"services": [service(endpoints=[endpoint])], "roles": {"admin": ["*"]}}


@settings(max_examples=200, deadline=None)
@given(paths, st.sampled_from(["prefix", "exact", "template"]))
def test_endpoint_paths(path: str, match: str) -> None:
    agree(with_endpoint(path="/orders/" + path, match=match))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["x", "{id}", "{Id}", "{a_b}", "{}", "{1a}", "x{id}", ".", "..", "", "%"]),
        unique=True,
        max_size=4,
    ),
    st.sampled_from(["prefix", "exact", "template"]),
)
def test_endpoint_templates(segments: list[str], match: str) -> None:
    agree(with_endpoint(path="/".join(["/orders", *segments]), match=match))


@settings(max_examples=200, deadline=None)
@given(names)
def test_endpoint_names(name: str) -> None:
    agree(with_endpoint(name=name))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["GET", "POST", "DELETE", "get", "TRACE"]), max_size=3))
def test_endpoint_methods(methods: list[str]) -> None:
    agree(with_endpoint(methods=methods))


@settings(max_examples=100, deadline=None)
@given(st.lists(texts("aZ, /:\t\x85", 4), max_size=3))
def test_endpoint_roles(roles: list[str]) -> None:
    catalog = with_endpoint(roles=roles)
    catalog["roles"] = {role: [] for role in roles if role} | {"admin": ["*"]}
    agree(catalog)
