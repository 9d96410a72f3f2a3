"""Envoy's edge-proxy best practices are in the translated listener and the bootstrap, each at
its documented default (`sidecar_shared.defaults`, docs/security.md), and each setting
overrides its value."""

from __future__ import annotations

import re
from typing import Any

from envoy.config.core.v3 import protocol_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import json_format

from sidecar.bootstrap import BootstrapOptions, render
from sidecar_shared import defaults
from sidecar_shared.contract import decode
from sidecar_shared.errors import SettingsError
from tests.support import authz_config
from tests.support.catalog_edges import LOOKALIKES
from tests.support.translation import build_snapshot
from xds_server import settings, typeurls
from xds_server.catalog import MIN_BODY_BYTES, parse_catalog
from xds_server.translate import Options

CATALOG = parse_catalog(
    {"services": [{"service_name": "a", "base_path": "/a", "internal_url": "http://127.0.0.1:1"}]}
)


def listener_of(options: Options) -> tuple[Any, hcm_pb2.HttpConnectionManager]:
    (res,) = build_snapshot(CATALOG, options).resources[typeurls.LISTENER].values()
    manager = hcm_pb2.HttpConnectionManager()
    res.message.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return res.message, manager


def ms(duration: Any) -> int:
    return int(duration.ToMilliseconds())


def test_the_listener_meets_envoys_edge_best_practices_by_default() -> None:
    listener, m = listener_of(settings.parse([], environ={}).translate)
    d = defaults
    common = m.common_http_protocol_options
    assert common.headers_with_underscores_action == protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
    assert common.max_headers_count.value == d.EDGE_MAX_REQUEST_HEADERS == 100
    assert ms(common.idle_timeout) == d.EDGE_IDLE_TIMEOUT_MS == 300_000
    assert ms(m.request_headers_timeout) == d.EDGE_REQUEST_HEADERS_TIMEOUT_MS == 10_000
    assert ms(m.stream_idle_timeout) == d.EDGE_STREAM_IDLE_TIMEOUT_MS == 300_000
    assert ms(m.request_timeout) == d.EDGE_REQUEST_TIMEOUT_MS == 300_000
    h2 = m.http2_protocol_options
    assert h2.max_concurrent_streams.value == d.EDGE_H2_MAX_CONCURRENT_STREAMS == 100
    assert h2.initial_stream_window_size.value == d.EDGE_H2_STREAM_WINDOW_BYTES == 65_536
    assert h2.initial_connection_window_size.value == d.EDGE_H2_CONNECTION_WINDOW_BYTES == 1 << 20
    assert listener.per_connection_buffer_limit_bytes.value == d.EDGE_CONNECTION_BUFFER_BYTES
    assert d.EDGE_CONNECTION_BUFFER_BYTES == 32_768
    assert m.use_remote_address.value is True
    assert m.normalize_path.value is True
    assert m.merge_slashes is True
    assert m.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT
    assert m.proxy_100_continue is True


def test_every_edge_setting_overrides_its_default() -> None:
    argv = [
        *("--request-headers-timeout-ms", "1500", "--stream-idle-timeout-ms", "2500"),
        *("--request-timeout-ms", "3500", "--idle-timeout-ms", "4500"),
        *("--h2-max-concurrent-streams", "7", "--h2-stream-window-bytes", "70000"),
        *("--h2-connection-window-bytes", "2000000", "--connection-buffer-bytes", "4096"),
        *("--max-request-headers", "60", "--underscore-headers", "drop"),
    ]
    listener, m = listener_of(settings.parse(argv, environ={}).translate)
    common = m.common_http_protocol_options
    assert common.headers_with_underscores_action == protocol_pb2.HttpProtocolOptions.DROP_HEADER
    assert common.max_headers_count.value == 60
    assert (ms(m.request_headers_timeout), ms(m.stream_idle_timeout)) == (1500, 2500)
    assert (ms(m.request_timeout), ms(common.idle_timeout)) == (3500, 4500)
    h2 = m.http2_protocol_options
    assert (h2.max_concurrent_streams.value, h2.initial_stream_window_size.value) == (7, 70000)
    assert h2.initial_connection_window_size.value == 2_000_000
    assert listener.per_connection_buffer_limit_bytes.value == 4096


def test_method_override_headers_are_stripped_before_ext_authz() -> None:
    _, m = listener_of(Options())
    names = [f.name for f in m.http_filters]
    strip = m.http_filters[names.index("sidecar.strip_method_override")]
    assert names.index("sidecar.strip_method_override") < names.index(
        "envoy.filters.http.ext_authz"
    )
    mutation = header_mutation_pb2.HeaderMutation()
    strip.typed_config.Unpack(mutation)
    assert {r.remove for r in mutation.mutations.request_mutations} == {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }


def test_every_local_reply_has_the_json_denial_body() -> None:
    _, m = listener_of(Options())
    config = json_format.MessageToDict(m.local_reply_config)
    fallback = config["bodyFormat"]
    assert fallback["contentType"] == "application/json"
    assert set(fallback["jsonFormat"]) == {"error", "message", "request_id"}
    by_status = {}
    for mapper in config["mappers"]:
        f = mapper["filter"]
        if "statusCodeFilter" in f:
            by_status[f["statusCodeFilter"]["comparison"]["value"]["defaultValue"]] = mapper
    for status in (400, 413, 431, 503):
        body = by_status[status]["bodyFormatOverride"]
        assert body["jsonFormat"]["request_id"] == "%REQ(X-REQUEST-ID)%"
    # ext_authz unreachable: its failure status with the UAEX flag, before any other mapper.
    first = config["mappers"][0]
    assert first["bodyFormatOverride"]["jsonFormat"]["error"] == "authz_unavailable"
    # ext_authz's own denials keep their body.
    kept = config["mappers"][1]["bodyFormatOverride"]
    assert kept["textFormatSource"]["inlineString"] == "%LOCAL_REPLY_BODY%"  # not deprecated


def test_a_failure_status_that_ext_authz_itself_answers_is_refused() -> None:
    for status in ("401", "403", "429", "500"):
        try:
            settings.parse(["--authz-failure-status", status], environ={})
        except SettingsError as err:
            assert "ext_authz's own answers" in str(err)
        else:
            raise AssertionError(f"{status} was accepted")


def test_the_bootstrap_sheds_load_by_heap_and_caps_connections() -> None:
    om = render(BootstrapOptions())["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in om["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]
    assert heap["max_heap_size_bytes"] == defaults.ENVOY_MAX_HEAP_BYTES == 2 * 1024**3
    connections = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert connections["max_active_downstream_connections"] == defaults.MAX_DOWNSTREAM_CONNECTIONS
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in om["actions"]}
    assert actions == {
        "envoy.overload_actions.shrink_heap": 0.95,
        "envoy.overload_actions.stop_accepting_requests": 0.98,
    }
    custom = render(BootstrapOptions(max_heap_bytes=1 << 30))["overload_manager"]
    assert custom["resource_monitors"][0]["typed_config"]["max_heap_size_bytes"] == 1 << 30


def _routes(services: list[dict[str, Any]]) -> list[Any]:
    snap = build_snapshot(parse_catalog({"services": services}), Options())
    (res,) = snap.resources[typeurls.ROUTE].values()
    return list(res.message.virtual_hosts[0].routes)


def _svc(name: str, path: str, **kw: Any) -> dict[str, Any]:
    return {"service_name": name, "base_path": path, "internal_url": "http://127.0.0.1:1", **kw}


ORDINARY = ["/orders/1", "/orders/administrators", "/orders/adm", "/orders/1;x", "/orders"]


def test_a_strict_service_refuses_look_alikes_of_a_longer_service_under_it() -> None:
    routes = _routes([_svc("orders", "/orders"), _svc("admin", "/orders/admin")])
    assert [r.name for r in routes] == ["admin", "orders.lookalike.0", "orders"]
    guard = routes[1]
    assert guard.direct_response.status == 400
    pattern = re.compile(guard.match.safe_regex.regex)
    for path in LOOKALIKES:
        assert pattern.fullmatch(path), path
    for path in ORDINARY:
        assert not pattern.fullmatch(path), path


def test_strict_paths_off_routes_look_alikes_as_before() -> None:
    routes = _routes(
        [_svc("orders", "/orders", strict_paths=False), _svc("admin", "/orders/admin")]
    )
    assert [r.name for r in routes] == ["admin", "orders"]


def test_the_root_service_guards_every_service_and_deeper_paths_are_covered() -> None:
    routes = _routes([_svc("root", "/"), _svc("deep", "/a/b/c")])
    (guard,) = [r for r in routes if ".lookalike." in r.name]
    pattern = re.compile(guard.match.safe_regex.regex)
    for path in ("/A/b/c", "/a;x/b/c", "/a/b./c", "/a/b/C%20", "/a/B/c/d"):
        assert pattern.fullmatch(path), path
    assert not pattern.fullmatch("/a/b/cd")


def test_a_body_limit_refuses_a_declared_length_first_and_buffers_the_rest() -> None:
    routes = _routes(
        [_svc("up", "/up", max_request_body_bytes=MIN_BODY_BYTES), _svc("other", "/o")]
    )
    by_name = {r.name: r for r in routes}
    too_large = by_name["up.too_large"]
    assert too_large.direct_response.status == 413
    (length,) = too_large.match.headers
    assert (length.name, length.range_match.start) == ("content-length", MIN_BODY_BYTES + 1)
    assert "envoy.filters.http.buffer" in by_name["up"].typed_per_filter_config
    assert "envoy.filters.http.buffer" not in by_name["other"].typed_per_filter_config


BUFFER = "envoy.filters.http.buffer"


def _body_limited(services: list[dict[str, Any]]) -> tuple[hcm_pb2.HttpConnectionManager, Any]:
    """The listener's connection manager and the routes for `services`."""
    snap = build_snapshot(parse_catalog({"services": services}), Options())
    (listener,) = snap.resources[typeurls.LISTENER].values()
    manager = hcm_pb2.HttpConnectionManager()
    listener.message.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (routes,) = snap.resources[typeurls.ROUTE].values()
    return manager, {r.name: r for r in routes.message.virtual_hosts[0].routes}


def test_the_body_limit_is_skipped_for_a_request_that_declares_its_length() -> None:
    manager, routes = _body_limited(
        [
            _svc(
                "up",
                "/up",
                max_request_body_bytes=MIN_BODY_BYTES,
                versions={"v2": {"internal_url": "http://127.0.0.1:2"}},
            ),
            _svc("o", "/o"),
        ]
    )
    names = [f.name for f in manager.http_filters]
    # After ext_authz (only an allowed request's body is read), off unless a route turns it on.
    assert names.index(BUFFER) == names.index("envoy.filters.http.ext_authz") + 1
    limit = manager.http_filters[names.index(BUFFER)]
    assert limit.disabled
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    assert limit.typed_config.Unpack(wrapped)
    assert wrapped.extension_config.name == BUFFER
    assert wrapped.extension_config.typed_config.Unpack(buffer_pb2.Buffer())
    # One rule: a request whose content-length is a number skips the filter; nothing else does.
    assert not wrapped.HasField("matcher")
    assert not wrapped.xds_matcher.HasField("on_no_match")
    (rule,) = wrapped.xds_matcher.matcher_list.matchers
    declared = rule.predicate.single_predicate
    header = http_inputs_pb2.HttpRequestHeaderMatchInput()
    assert declared.input.typed_config.Unpack(header)
    assert header.header_name == "content-length"
    assert rule.on_match.action.typed_config.Unpack(skip_action_pb2.SkipFilter())
    # RE2 matches the whole value; these patterns mean the same in Python's `re`.
    pattern = re.compile(declared.value_match.safe_regex.regex)
    for value in ("0", "1024", "10485760", "4294967296", "9" * 18):
        assert pattern.fullmatch(value), value
    # Anything the `too_large` route's range match (int64) might not have read is buffered.
    for value in ("", "9" * 19, "1, 1", "-1", " 5", "0x10", "1e3"):
        assert not pattern.fullmatch(value), value
    assert int("9" * 18) < routes["up.too_large"].match.headers[0].range_match.end
    # Each of the service's routes turns the filter on with its limit; others leave it off.
    for name in ("up", "up@v2"):
        enabled = route_components_pb2.FilterConfig()
        assert routes[name].typed_per_filter_config[BUFFER].Unpack(enabled)
        per_route = buffer_pb2.BufferPerRoute()
        assert enabled.config.Unpack(per_route) and not enabled.disabled
        assert per_route.buffer.max_request_bytes.value == MIN_BODY_BYTES
    assert BUFFER not in routes["o"].typed_per_filter_config


def test_without_a_body_limit_there_is_no_buffer_filter() -> None:
    manager, _ = _body_limited([_svc("o", "/o")])
    assert BUFFER not in [f.name for f in manager.http_filters]


def test_a_service_that_honours_method_overrides_keeps_them_and_its_policy_says_so() -> None:
    routes = _routes([_svc("legacy", "/legacy", method_override=True), _svc("new", "/new")])
    by_name = {r.name: r for r in routes}
    assert "sidecar.strip_method_override" in by_name["legacy"].typed_per_filter_config
    assert "sidecar.strip_method_override" not in by_name["new"].typed_per_filter_config
    assert decode(authz_config.route_policy(by_name["legacy"])).method_override
