"""`sidecar up` waits for its own Envoy: a local process that speaks ADS as `sidecar-envoy`
during start-up and NACKs everything neither ends it nor chooses its error text."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from sidecar_shared import defaults
from tests.e2e.test_up import up_env
from tests.support import ports, wait
from tests.support.ads_client import AdsClient
from tests.support.catalogs import SAMPLE


def reject_all(type_url: str, resources: Mapping[str, bytes]) -> str:
    return "rogue: go away"


def test_up_ignores_another_process_nacking_as_its_node(tmp_path: Path) -> None:
    port, xds_http_port = ports.free_port(), ports.free_port()
    env = up_env(port, xds_http_port)
    xds_port = int(env["SIDECAR_XDS_PORT"])
    stop = threading.Event()
    nacked = threading.Event()

    def rogue() -> None:
        async def again() -> None:
            while not stop.is_set():
                client = AdsClient(f"127.0.0.1:{xds_port}", defaults.NODE_ID, "sotw", reject_all)
                task = asyncio.create_task(client.run())
                while not stop.is_set() and not task.done():
                    if client.seen["type.googleapis.com/envoy.config.cluster.v3.Cluster"].nacked:
                        nacked.set()
                    await asyncio.sleep(0.02)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                await asyncio.sleep(0.05)

        asyncio.run(again())

    thread = threading.Thread(target=rogue, daemon=True)
    thread.start()
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--demo", "--catalog", str(SAMPLE)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sidecar up exited:\n{log.read_text()}")
            return "curl" in log.read_text()

        wait.wait_until(ready, timeout=60, what="sidecar up to print a curl")
        assert nacked.is_set(), "the rogue NACKed during start-up"
        assert "sidecar up: Envoy rejected" not in log.read_text()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        thread.join(10)
