"""The xDS server's memory and log under hostile ADS clients (issue 19, finding 4).

    python -m bench.xds_hostile [--runs 3] [--streams 20] [--names 150000] [--nacks 680]
                                [--nack-bytes 1000000]

Two clients, each against a fresh server on the sample catalog, each run `--runs` times:

- `names`: `--streams` SotW streams at once (one connection each), every one subscribing to
  `--names` made-up endpoint names, held for a second, then closed. Measured with the cap on
  names (the default) and with it lifted (`--xds-spare-names` huge: the baseline, what a
  server without the cap holds, same run). Prints the server's RSS before, at its peak while
  the streams are open, and after they closed (MiB), and the streams refused.
- `nacks`: one stream NACKs its clusters `--nacks` times with a `--nack-bytes` message each
  (the nonce of the response it answers, so every one counts). Prints the log bytes the server
  wrote for them, bytes per NACK, the ratio to the bytes sent, and how long it took.

Medians over the runs. Bounded: a few seconds per run, the client's messages under the
server's request limit (4 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from bench.xds_scale import rss_mib
from tests.support import stack, wait
from tests.support.catalogs import SAMPLE
from xds_server import typeurls

CDS, EDS = typeurls.CLUSTER, typeurls.ENDPOINT
UNCAPPED = ["--xds-spare-names", str(10**9), "--xds-max-streams-per-connection", "1000"]


def node(i: int) -> base_pb2.Node:
    return base_pb2.Node(id=f"hostile-{i}", user_agent_name="envoy")


@contextmanager
def server(args: list[str]) -> Iterator[stack.XdsServer]:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as d:
        catalog = Path(d) / "catalog" / "service_catalog.json"
        catalog.parent.mkdir()
        catalog.write_text(SAMPLE.read_text())
        xds = stack.start_xds(catalog, Path(d), args=args)
        try:
            wait.wait_until(xds.version, timeout=60, what="the catalog loaded")
            yield xds
        finally:
            xds.proc.stop()


def refused(xds: stack.XdsServer) -> int:
    total = 0.0
    for line in xds.metrics().splitlines():
        if line.startswith("xds_refused_streams_total{"):
            total += float(line.split()[-1])
    return int(total)


@dataclass
class NamesRow:
    before: float
    peak: float
    after: float
    refused: int


async def _subscribe(port: int, i: int, names: list[str], hold: float) -> None:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            yield discovery_pb2.DiscoveryRequest(type_url=EDS, node=node(i), resource_names=names)
            await asyncio.sleep(hold)

        try:
            async for _ in stub.StreamAggregatedResources(requests()):
                pass
        except grpc.aio.AioRpcError:
            pass


def names_run(args: list[str], streams: int, count: int) -> NamesRow:
    with server(args) as xds:
        pid = xds.proc.popen.pid
        before = rss_mib(pid)[0]
        names = [f"made-up-{n:09d}" for n in range(count)]
        peak = [before]

        async def go() -> None:
            clients = [
                asyncio.create_task(_subscribe(xds.port, i, names, 1.0)) for i in range(streams)
            ]
            while not all(c.done() for c in clients):
                peak[0] = max(peak[0], rss_mib(pid)[0])
                await asyncio.sleep(0.05)

        asyncio.run(go())
        time.sleep(0.5)
        return NamesRow(before, peak[0], rss_mib(pid)[0], refused(xds))


@dataclass
class NacksRow:
    log_bytes: int
    seconds: float
    sent_bytes: int


def nacks_run(count: int, size: int) -> NacksRow:
    with server([]) as xds:
        message = "x" * size

        async def go() -> float:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{xds.port}", options=[("grpc.max_send_message_length", -1)]
            ) as channel:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                out: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
                out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node(0)))

                async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
                    while True:
                        req = await out.get()
                        if req.type_url == "":
                            return
                        yield req

                call = stub.StreamAggregatedResources(requests())
                first = await call.read()
                started = time.perf_counter()
                for _ in range(count):
                    req = discovery_pb2.DiscoveryRequest(
                        type_url=CDS, response_nonce=first.nonce, version_info=""
                    )
                    req.error_detail.CopyFrom(status_pb2.Status(code=3, message=message))
                    out.put_nowait(req)
                    while out.qsize() > 4:
                        await asyncio.sleep(0.001)
                nacks = count
                wait_for = time.monotonic() + 60
                while time.monotonic() < wait_for:
                    if _nacks(xds) >= nacks:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                call.cancel()
                return elapsed

        before = xds.proc.log.stat().st_size
        seconds = asyncio.run(go())
        time.sleep(0.2)
        return NacksRow(xds.proc.log.stat().st_size - before, seconds, count * size)


def _nacks(xds: stack.XdsServer) -> float:
    for line in xds.metrics().splitlines():
        if line.startswith('xds_nacks_total{type="clusters"}'):
            return float(line.split()[-1])
    return 0.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--names", type=int, default=150_000)
    parser.add_argument("--nacks", type=int, default=680)
    parser.add_argument("--nack-bytes", type=int, default=1_000_000)
    opts = parser.parse_args()

    print(f"## {opts.streams} SotW streams x {opts.names:,} made-up endpoint names")
    print(f"{'server':<22} {'RSS before':>10} {'peak':>8} {'after':>8} {'refused':>8}")
    for label, args in (("capped (default)", []), ("cap lifted (baseline)", UNCAPPED)):
        rows = [names_run(args, opts.streams, opts.names) for _ in range(opts.runs)]
        print(
            f"{label:<22} {median([r.before for r in rows]):>10.0f} "
            f"{median([r.peak for r in rows]):>8.0f} {median([r.after for r in rows]):>8.0f} "
            f"{median([r.refused for r in rows]):>8.0f}"
        )

    print(f"\n## {opts.nacks} NACKs of {opts.nack_bytes:,} bytes on one stream")
    rows2 = [nacks_run(opts.nacks, opts.nack_bytes) for _ in range(opts.runs)]
    log = median([r.log_bytes for r in rows2])
    sent = rows2[0].sent_bytes
    print(f"{'log bytes':>12} {'per NACK':>9} {'log/sent':>10} {'seconds':>8}")
    seconds = median([r.seconds for r in rows2])
    print(f"{log:>12,.0f} {log / opts.nacks:>9,.0f} {log / sent:>10.6f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
