"""`sidecar up --env` as a user runs it: the overlay's address served, and the health history
`sidecar up` keeps in its runtime directory (health checks and outlier ejections) read back by
`sidecar status --history` with no flag."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_up import up_env
from tests.support import http, ports, wait
from tests.support.gateway import public
from tests.support.tokens import TEST_SECRET
from tests.support.upstreams import HEALTH_PATH, running

CHECK = {"interval_ms": 150, "timeout_ms": 100, "unhealthy_threshold": 2, "healthy_threshold": 2}
# Ejected after 2 gateway failures, back after the base ejection time.
OUTLIER = {
    "consecutive_5xx": 2,
    "consecutive_gateway_failure": 2,
    "interval_ms": 100,
    "base_ejection_time_ms": 500,
    "max_ejection_percent": 100,
}


def test_up_serves_the_overlay_and_keeps_a_history_status_reads(tmp_path: Path) -> None:
    with running("a", "b", "c") as (a, b, c):
        base = tmp_path / "service_catalog.json"
        base.write_text(
            json.dumps(
                {
                    "services": [
                        public("svc", a.url, healthcheck_endpoint=HEALTH_PATH, health_check=CHECK),
                        public("flaky", c.url, outlier_detection=OUTLIER),
                    ]
                }
            )
        )
        (tmp_path / "service_catalog.staging.json").write_text(
            json.dumps({"services": {"svc": {"internal_url": "http://127.0.0.1:${SVC_PORT}"}}})
        )
        port, xds_http_port = ports.free_port(), ports.free_port()
        env = up_env(port, xds_http_port)
        env = {k: v for k, v in env.items() if k != "SIDECAR_HEALTH_EVENT_LOG"}
        env.update(
            SIDECAR_ENV="staging",
            SVC_PORT=str(b.port),
            XDG_RUNTIME_DIR=str(tmp_path / "run"),
            SIDECAR_JWT_SECRET=TEST_SECRET.decode(),
        )
        log = tmp_path / "up.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "up", "--catalog", str(base)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        try:

            def served_by_b() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"sidecar up exited:\n{log.read_text()}")
                before = b.count()
                r = http.try_get(f"http://127.0.0.1:{port}/svc/x")
                return r is not None and r.status == 200 and b.count() == before + 1

            wait.wait_until(served_by_b, timeout=60, what="svc served by b (the overlay)")
            assert a.count(path="/svc/x") == 0

            b.set_healthy(False)
            c.behave("fail", status=502)
            for _ in range(4):
                http.try_get(f"http://127.0.0.1:{port}/flaky/x")

            def history() -> str | None:
                result = subprocess.run(
                    [sys.executable, "-m", "sidecar", "status", "--history"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=env,
                )
                out = result.stdout
                done = "healthy → unhealthy" in out and "healthy → ejected" in out
                return out if result.returncode == 0 and done else None

            shown = wait.wait_until(history, timeout=40, what="both kinds in the history")
            assert f"svc 127.0.0.1:{b.port}" in shown
            assert f"flaky 127.0.0.1:{c.port}" in shown
            assert "outlier ejection (" in shown
            assert str(tmp_path / "run" / "envoy-sidecar" / "health-events.log") in shown
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
