"""Envoy's health-check event log read as transitions (xds_server/health_events.py), and the
sink every checked cluster gets (resources/clusters.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2

from sidecar import history as history_view
from sidecar.bootstrap import BootstrapOptions, render
from sidecar_shared.errors import SettingsError
from xds_server.catalog import Service
from xds_server.health_events import Tailer, history, parse_line, read_tail
from xds_server.resources.clusters import HEALTH_EVENT_SINK, cluster

# Lines as Envoy 1.40 wrote them (a run with an upstream answering 503, then 200 again).
_HOST = (
    '"host":{"socket_address":{"protocol":"TCP","address":"127.0.0.1","port_value":38003,'
    '"resolver_name":"","ipv4_compat":false,"network_namespace_filepath":""}}'
)
FIRST = (
    '{"health_checker_type":"HTTP",' + _HOST + ',"cluster_name":"orders","add_healthy_event":'
    '{"first_check":true},"timestamp":"2026-12-06T06:13:52.897Z","locality":{"region":""}}'
)
EJECT = (
    '{"health_checker_type":"HTTP",' + _HOST + ',"cluster_name":"orders","eject_unhealthy_event":'
    '{"failure_type":"ACTIVE","http_status_code":503},"timestamp":"2026-12-06T06:13:54.298Z"}'
)
FAILURE = (
    '{"health_checker_type":"HTTP",' + _HOST + ',"cluster_name":"orders","timestamp":'
    '"2026-12-06T06:13:54.298Z","health_check_failure_event":{"failure_type":"ACTIVE",'
    '"first_check":false,"http_status_code":503}}'
)
BACK = (
    '{"health_checker_type":"HTTP",' + _HOST + ',"cluster_name":"orders","add_healthy_event":'
    '{"first_check":false},"timestamp":"2026-12-06T06:13:56.311Z"}'
)


def test_envoys_lines_read_as_transitions_with_time_from_to_and_why() -> None:
    found = [parse_line(x) for x in (FIRST, EJECT, FAILURE, BACK)]
    assert [(t.at, t.from_state, t.to_state, t.why) for t in found if t] == [
        ("2026-12-06T06:13:52.897Z", "unchecked", "healthy", "passed health check"),
        ("2026-12-06T06:13:54.298Z", "healthy", "unhealthy", "failed health check (HTTP 503)"),
        ("2026-12-06T06:13:56.311Z", "unhealthy", "healthy", "passed health check"),
    ]
    assert found[2] is None  # a failed check that changed nothing
    first = found[0]
    assert first is not None
    assert (first.service, first.cluster, first.endpoint) == ("orders", "orders", "127.0.0.1:38003")


def test_a_timeout_a_tenant_cluster_and_an_outlier_ejection_say_so() -> None:
    timeout = parse_line(
        EJECT.replace('"orders"', '"orders.acme"').replace(
            '"failure_type":"ACTIVE","http_status_code":503', '"failure_type":"NETWORK_TIMEOUT"'
        )
    )
    assert timeout is not None
    assert (timeout.service, timeout.cluster) == ("orders", "orders.acme")
    assert timeout.why == "health check timed out"
    outlier = parse_line(
        json.dumps(
            {
                "type": "CONSECUTIVE_5XX",
                "cluster_name": "orders",
                "upstream_url": "127.0.0.1:9000",
                "action": "EJECT",
                "enforced": True,
                "timestamp": "2026-12-06T06:14:00Z",
            }
        )
    )
    assert outlier is not None
    assert (outlier.to_state, outlier.why) == ("ejected", "outlier ejection (5xx)")


def test_lines_that_are_not_events_are_skipped() -> None:
    for line in ("", "not json", "[]", '{"cluster_name": 5}', '{"cluster_name":"a"}'):
        assert parse_line(line) is None


def test_only_the_tail_is_read_and_each_endpoint_keeps_its_last_transitions(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.log"
    log.write_text("\n".join([FIRST] + [EJECT, BACK] * 50) + "\n")
    everything = read_tail(log)
    assert len(everything) == 101
    tail = read_tail(log, max_bytes=len(BACK) * 3)
    assert 1 <= len(tail) <= 3  # the first, cut line is dropped
    kept = history(everything, per_endpoint=4)
    (transitions,) = kept.values()
    assert [t.to_state for t in transitions] == ["unhealthy", "healthy"] * 2
    assert history(everything, 4, service="users") == {}


def test_the_tailer_reads_what_was_appended_whole_lines_only_and_a_truncated_file_again(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.log"
    log.write_text(FIRST + "\n")
    tailer = Tailer(log)
    assert tailer.poll() == []  # what was there before is not counted again
    with log.open("a") as f:
        f.write(EJECT + "\n" + BACK[:40])
    assert [t.to_state for t in tailer.poll()] == ["unhealthy"]
    with log.open("a") as f:
        f.write(BACK[40:] + "\n")
    assert [t.to_state for t in tailer.poll()] == ["healthy"]
    log.write_text(EJECT + "\n")  # rotated: shorter than what was read
    assert [t.to_state for t in tailer.poll()] == ["unhealthy"]
    log.unlink()
    assert tailer.poll() == []


def test_a_checked_cluster_logs_its_events_and_an_unchecked_one_does_not() -> None:
    svc = Service.model_validate(
        {
            "service_name": "orders",
            "base_path": "/orders",
            "internal_url": "http://127.0.0.1:8001",
            "healthcheck_endpoint": "/health",
        }
    )
    checked = cluster(svc, svc.upstreams, health_event_log="/run/h.log")
    (logger,) = checked.health_checks[0].event_logger
    assert logger.name == HEALTH_EVENT_SINK
    sink = file_pb2.HealthCheckEventFileSink()
    assert logger.typed_config.Unpack(sink) and sink.event_log_path == "/run/h.log"
    assert not cluster(svc, svc.upstreams).health_checks[0].event_logger
    unchecked = svc.model_copy(update={"healthcheck_endpoint": None})
    assert not cluster(unchecked, svc.upstreams, health_event_log="/run/h.log").health_checks


def test_status_history_prints_each_endpoint_with_its_transitions(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    log.write_text("\n".join([FIRST, EJECT, FAILURE, BACK]) + "\n")
    assert history_view.lines(log, "orders") == [
        f"health history of service orders (last 10 per endpoint) from {log}:",
        "orders 127.0.0.1:38003",
        "  2026-12-06T06:13:52.897Z  unchecked → healthy    passed health check",
        "  2026-12-06T06:13:54.298Z  healthy → unhealthy    failed health check (HTTP 503)",
        "  2026-12-06T06:13:56.311Z  unhealthy → healthy    passed health check",
    ]


def test_status_history_as_json(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    log.write_text("\n".join([FIRST, EJECT]) + "\n")
    assert history_view.as_json(log, None, per_endpoint=1) == {
        "log": str(log),
        "endpoints": [
            {
                "service": "orders",
                "cluster": "orders",
                "endpoint": "127.0.0.1:38003",
                "transitions": [
                    {
                        "at": "2026-12-06T06:13:54.298Z",
                        "from": "healthy",
                        "to": "unhealthy",
                        "why": "failed health check (HTTP 503)",
                    }
                ],
            }
        ],
    }


def test_the_runtime_directory_is_refused_when_others_may_write_to_it(tmp_path: Path) -> None:
    environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
    made = history_view.make_runtime_dir(environ)
    assert made == tmp_path / "envoy-sidecar"
    made.chmod(0o777)
    with pytest.raises(SettingsError, match="only its owner"):
        history_view.make_runtime_dir(environ)


def test_sidecar_ups_bootstrap_logs_outlier_ejections_to_the_same_file() -> None:
    env = {"SIDECAR_HEALTH_EVENT_LOG": "/run/h.log"}
    rendered = render(BootstrapOptions(outlier_event_log=history_view.outlier_log(env)))
    assert rendered["cluster_manager"] == {"outlier_detection": {"event_log_path": "/run/h.log"}}
    off = history_view.outlier_log({"SIDECAR_HEALTH_EVENT_LOG": "off"})
    assert "cluster_manager" not in render(BootstrapOptions(outlier_event_log=off))


def test_an_outlier_ejection_line_as_envoy_wrote_it_is_a_transition() -> None:
    eject = parse_line(
        '{"type":"CONSECUTIVE_5XX","timestamp":"2026-12-06T06:23:51.174Z","cluster_name":'
        '"orders","upstream_url":"127.0.0.1:41325","action":"EJECT","num_ejections":1,'
        '"enforced":true,"eject_consecutive_event":{}}'
    )
    back = parse_line(
        '{"type":"CONSECUTIVE_5XX","timestamp":"2026-12-06T06:23:52.299Z",'
        '"secs_since_last_action":"1","cluster_name":"orders","upstream_url":"127.0.0.1:41325",'
        '"action":"UNEJECT","num_ejections":1,"enforced":false}'
    )
    assert eject is not None and back is not None
    assert (eject.endpoint, eject.from_state, eject.to_state) == (
        "127.0.0.1:41325",
        "healthy",
        "ejected",
    )
    assert (back.from_state, back.to_state, back.why) == (
        "ejected",
        "healthy",
        "outlier ejection ended",
    )
