"""What SIGTERM to `sidecar up` does to the requests it is serving.

    python -m bench.shutdown [--clients 16] [--warm 3.5] [--delay 2]

`sidecar up` in front of an upstream that answers after `--delay` seconds, behind ext_authz (a
token per request); `--clients` threads each send requests in a loop on a kept-alive connection
(a new one after `connection: close`); SIGTERM to `sidecar up` after `--warm` seconds. Prints
how long `sidecar up` took to exit and, per phase (answered before the signal, in flight at the
signal, sent after it), what the requests got: an HTTP status, a refused connection, or an empty
reply / reset (a request cut).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support import ports, tokens, wait
from tests.support.catalogs import write_catalog
from tests.support.upstreams import Upstream


def up_environment(listener_port: int) -> dict[str, str]:
    """This process's environment for a `sidecar up` on `listener_port`: no SIDECAR_* of ours,
    every other port of its own, the test signing key (bench.footprint uses it too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_LISTENER_PORT=str(listener_port),
        SIDECAR_ADMIN_PORT=str(ports.free_port()),
        SIDECAR_XDS_PORT=str(ports.free_port()),
        SIDECAR_XDS_HTTP_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_HTTP_PORT=str(ports.free_port()),
        SIDECAR_AUTHZ_HTTP_CHECK_PORT=str(ports.free_port()),
        SIDECAR_JWT_SECRET=tokens.TEST_SECRET.decode(),
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warm", type=float, default=3.5, help="seconds of load before SIGTERM")
    parser.add_argument("--delay", type=float, default=2.0, help="the upstream's answer time")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-shutdown-"))
    upstream = Upstream("slow").start().behave("slow", delay_s=args.delay)
    service = {
        "service_name": "slow",
        "base_path": "/slow",
        "internal_url": upstream.url,
        "timeout_ms": int(args.delay * 1000) + 10_000,
        "rbac_required": False,
    }
    catalog = write_catalog(workdir, [service])
    port = ports.free_port()
    env = up_environment(port)
    log = workdir / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "up", "--catalog", str(catalog)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wait.wait_until(
        lambda: up.poll() is None and "Ctrl-C" in log.read_text(), timeout=60, what="sidecar up"
    )
    auth = tokens.bearer()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    done = threading.Event()
    signalled: list[float] = []

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while not done.is_set():
            began = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/slow/x", headers=auth)
                resp = conn.getresponse()
                resp.read()
                got = f"HTTP {resp.status}"
                if (resp.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                got, conn = "refused (new connection)", None
                done.wait(0.05)
            except OSError as err:  # RemoteDisconnected, reset, broken pipe: the request was cut
                got, conn = f"EMPTY REPLY / reset ({type(err).__name__})", None
            ended = time.monotonic()
            if not signalled or ended < signalled[0]:
                phase = "before SIGTERM"
            elif began < signalled[0]:
                phase = "in flight at SIGTERM"
            else:
                phase = "sent after SIGTERM"
            with lock:
                outcomes[(phase, got)] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    done.wait(args.warm)
    signalled.append(time.monotonic())
    up.send_signal(signal.SIGTERM)
    status = up.wait(timeout=120)
    exited_after = time.monotonic() - signalled[0]
    done.wait(1.0)  # the clients go on a moment: what does a late client get?
    done.set()
    for t in threads:
        t.join(timeout=35)
    upstream.stop()
    print(f"clients={args.clients}: sidecar up exited {status} after {exited_after:.2f} s")
    for (phase, got), count in sorted(outcomes.items()):
        print(f"  {phase:22s} {got:45s} {count}")
    for line in log.read_text().splitlines():
        if line.startswith("sidecar up:"):
            print(f"  {line}")


if __name__ == "__main__":
    main()
