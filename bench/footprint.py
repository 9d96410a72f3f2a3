"""What each process of the sidecar uses under load: the measurement behind the Kubernetes
manifest's resource requests and limits.

    python -m bench.footprint [--duration 20] [--connections 16] [--services 50]

`sidecar up` with a catalog of `--services` services (echo upstreams, JWT + RBAC + a per-user
limit on each) and `wrk` sending requests with a token to one of them for `--duration` seconds.
Prints, per process (Envoy, xds-server, ext-authz): resident memory at rest and at its peak
(VmHWM), and CPU used per second of load (cores), with the requests per second wrk reached.
The machine is shared: quote the peak memory and the CPU at a known rate, not a single run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.shutdown import up_environment
from tests.support import ports, tokens, wait
from tests.support.catalogs import write_catalog
from tests.support.upstreams import Upstream

NAMES = {"envoy": "envoy", "xds-server": "xds_server", "ext-authz": "ext_authz"}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _role(pid: int) -> str | None:
    try:
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for role, needle in NAMES.items():
        if needle in cmd or role in cmd:
            return role
    return None


def _kib(pid: int, field: str) -> int:
    text = (Path("/proc") / str(pid) / "status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def _cpu_s(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("footprint: wrk is needed (Debian's wrk package)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    upstream = Upstream("echo").start()
    services = [
        {
            "service_name": f"svc{i}",
            "base_path": f"/svc{i}",
            "internal_url": upstream.url,
            "timeout_ms": 5000,
            "rbac_required": True,
            "rate_limit": {"requests_per_second": 1_000_000},
        }
        for i in range(args.services)
    ]
    catalog = write_catalog(workdir, services, roles={"admin": ["*"]})
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
    try:
        wait.wait_until(
            lambda: up.poll() is None and "Ctrl-C" in log.read_text(),
            timeout=60,
            what="sidecar up",
        )
        procs = {r: p for p in _children(up.pid) if (r := _role(p)) is not None}
        rest = {r: _kib(p, "VmRSS") for r, p in procs.items()}
        cpu0 = {r: _cpu_s(p) for r, p in procs.items()}
        started = time.monotonic()
        header = f"Authorization: Bearer {tokens.token(roles=['admin'], ttl_s=3600)}"
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "-H",
                header,
                f"http://127.0.0.1:{port}/svc0/x",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=args.duration + 60,
        )
        took = time.monotonic() - started
        rps = re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout)
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", wrk.stdout)
        print(
            f"wrk -c{args.connections} {args.duration}s: {rps.group(1) if rps else '?'} req/s, "
            f"{bad.group(1) if bad else 0} not 2xx"
        )
        print(f"{'process':<12}{'RSS at rest':>14}{'peak RSS':>12}{'CPU (cores)':>14}")
        for role, pid in sorted(procs.items()):
            cpu = (_cpu_s(pid) - cpu0[role]) / took
            print(
                f"{role:<12}{rest[role] / 1024:>11.0f} MiB{_kib(pid, 'VmHWM') / 1024:>8.0f} MiB"
                f"{cpu:>14.2f}"
            )
    finally:
        up.terminate()
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
        upstream.stop()


if __name__ == "__main__":
    main()
