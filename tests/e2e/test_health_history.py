"""Health history through a real Envoy: an upstream that starts failing its health check and
then recovers shows both transitions, with their times, in `sidecar status --history`, and in
the xDS server's `xds_health_transitions_total`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import wait
from tests.support.gateway import gateway, public
from tests.support.upstreams import HEALTH_PATH, running

CHECK = {"interval_ms": 150, "timeout_ms": 100, "unhealthy_threshold": 2, "healthy_threshold": 2}
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"


def history(log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "status", "--history", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SIDECAR_HEALTH_EVENT_LOG": str(log), "PATH": ""},
    )


def test_a_failing_then_recovered_upstream_shows_both_transitions_with_their_times(
    tmp_path: Path,
) -> None:
    log = tmp_path / "health-events.log"
    service = public("svc", None, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK)
    with running("a", "b") as (a, b):
        service["internal_url"] = [a.url, b.url]
        other = public("other", b.url)
        with gateway(tmp_path, [service, other], xds_args=["--health-event-log", str(log)]) as gw:
            wait.wait_until(lambda: gw.hosts("svc") and not gw.unhealthy("svc"), what="checked")
            a.set_healthy(False)
            wait.wait_until(lambda: gw.unhealthy("svc") == {a.port}, what="a unhealthy")
            a.set_healthy(True)
            wait.wait_until(lambda: not gw.unhealthy("svc"), what="a healthy again")
            endpoint = f"127.0.0.1:{a.port}"

            # Envoy writes its event log in batches: poll until both transitions are there.
            def shown() -> str | None:
                result = history(log, "svc")
                done = result.returncode == 0 and "unhealthy → healthy" in result.stdout
                return result.stdout if done else None

            out = wait.wait_until(shown, timeout=30, what="both transitions in the history")
            lines = out.splitlines()
            at = lines.index(f"svc {endpoint}")
            mine = []
            for line in lines[at + 1 :]:
                if not line.startswith("  "):
                    break
                mine.append(line)
            down = [x for x in mine if "healthy → unhealthy" in x]
            up = [x for x in mine if "unhealthy → healthy" in x]
            assert len(down) == 1 and "failed health check (HTTP 503)" in down[0], out
            assert len(up) == 1 and "passed health check" in up[0], out
            t_down = re.search(TIME, down[0])
            t_up = re.search(TIME, up[0])
            assert t_down and t_up and t_down.group(0) <= t_up.group(0), out
            # b never changed after its first check; `other` has no health check at all.
            assert f"svc 127.0.0.1:{b.port}" in lines
            assert not any(x.startswith("other ") for x in lines)
            # The counter the xDS server keeps from the same log.
            labels = f'endpoint="{endpoint}",service="svc"'
            wait.wait_until(
                lambda: (
                    f'xds_health_transitions_total{{{labels},to="unhealthy"}} 1.0'
                    in gw.xds.metrics()
                ),
                timeout=30,
                what="the transition counted",
            )
            assert f'xds_health_transitions_total{{{labels},to="healthy"}}' in gw.xds.metrics()
