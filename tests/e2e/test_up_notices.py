"""`sidecar up --demo` from a directory without a catalog runs the packaged sample, and tells
the user once, in words they understand, that its cacheable service uses Envoy's
work-in-progress cache: one JSON warning from the xDS server, none of Envoy's own two lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_up import up_env
from tests.support import ports, wait


def test_up_demo_anywhere_warns_once_about_the_work_in_progress_cache(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    log = tmp_path / "up.log"
    env = {k: v for k, v in up_env(ports.free_port(), ports.free_port()).items()}
    env.pop("SIDECAR_CATALOG", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--demo"],
            cwd=empty,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:

        def banner() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sidecar up exited:\n{log.read_text()}")
            return "curl" in log.read_text()

        wait.wait_until(banner, timeout=60, what="sidecar up to print a curl")
        # Envoy has ACKed the listener with the cache filter by now (the banner waits for it).
        lines = log.read_text().splitlines()
        assert any("packaged sample catalog" in line for line in lines)
        notices = [
            json.loads(line) for line in lines if line.startswith("{") and '"envoy_feature"' in line
        ]
        assert [(n["level"], n["envoy_feature"]) for n in notices] == [("warning", "cache_v2")]
        assert not [line for line in lines if "marked as work-in-progress" in line]
        assert not list(empty.iterdir())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
