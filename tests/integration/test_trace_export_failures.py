"""A collector that is down: ext_authz keeps answering, and the exporter's failures are JSON
lines like every other log line (no traceback, no plain text), one per message a minute, not
one per failed batch. Over each OTLP protocol."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import stack
from tests.support.otlp import GRPC, HTTP
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

TRACE_PREFIX = "4bf92f3577b34da6a3ce929d0e0e"


def sampled_check(port: int, n: int) -> int:
    parent = f"00-{TRACE_PREFIX}{n:04x}-00f067aa0ba902b7-01"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/x", headers={"traceparent": parent})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("protocol", [GRPC, HTTP])
def test_export_failures_are_rate_limited_json_lines(tmp_path: Path, protocol: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    authz = stack.start_authz(
        tmp_path,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        },
    )
    try:
        sent = 0

        def exporter_lines() -> list[dict[str, object]]:
            return [
                json.loads(line)
                for line in authz.proc.output().splitlines()
                if '"logger":"opentelemetry' in line
            ]

        def failed() -> bool:
            nonlocal sent
            assert sampled_check(authz.check_port, sent) == 403  # answered as usual
            sent += 1
            return any(r["level"] == "error" for r in exporter_lines())

        wait_until(failed, timeout=30, what="the exporter to give up on a batch")
        # More batches fail meanwhile, each after the exporter's retry: bounded in time and count.
        until = time.monotonic() + 4
        while time.monotonic() < until and sent < 2000:
            assert sampled_check(authz.check_port, sent) == 403
            sent += 1
        output = authz.proc.output().splitlines()
        assert output and all(line.startswith("{") for line in output), output
        records = exporter_lines()
        errors = [r for r in records if r["level"] == "error"]
        assert len(errors) == 1, errors  # the same message again within a minute is counted
        assert all("Traceback" not in str(r) for r in records)
    finally:
        authz.proc.stop()
