"""Valid users under a flood of distinct invalid tokens, through a real Envoy.

    python -m bench.flood [--duration 10] [--connections 64] [--token-bytes 7800]
                          [--rate 20] [--modes one-address,one-address-fresh,many-addresses]

One stack (xDS server, ext_authz, gateway Envoy; a second Envoy as a fast upstream). A valid
client sends `--rate` requests a second with one valid token (keep-alive, like a real client),
measuring each answer. It runs first alone (the baseline, same run), then under a flood: wrk
with `--connections` connections sending bearer tokens of `--token-bytes` bytes that are
well-formed (an HS256 header, base64url parts) but never validly signed, every one distinct
(so no cache of any kind answers them), in two modes:

- `one-address`: the flood and the valid client come from the same address (loopback); the
  flood spends the failed-auth budget at once, and from then on its tokens are 429s while the
  valid client's token still passes.
- `one-address-fresh`: the same flood, but the valid client stands for new sessions behind the
  flood's address: every request carries a valid token never seen before (no cache can answer
  it), so each must be verified from an address whose budget is spent.
- `many-addresses`: each flood request claims another client address (ext_authz trusts one
  proxy hop, and wrk sets `x-forwarded-for`), so no per-address budget can help: this is the
  pure CPU cost of refusing garbage (cheap checks first, signature last).

Prints, per mode: valid requests sent, success %, p50/p99 ms (target: >= 99.9 % and p99 < 50 ms),
the p99 ratio to the baseline, flood requests/s and their status mix, and ext_authz's peak RSS.
Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.check_throughput import PROTECTED, start_upstream, write_catalog
from tests.support import http as test_http
from tests.support import metrics, stack, tokens, wait

LUA = """\
-- wrk -s this.lua URL -- TOKEN_BYTES MODE: distinct, well-formed, never validly signed tokens.
local id = 0
function setup(thread)
  id = id + 1
  thread:set("id", id)
end

local head = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  -- {"alg":"HS256","typ":"JWT"}
local body, spread
local n = 0
function init(args)
  body = string.rep("A", math.max(16, (tonumber(args[1]) or 7800) - 80))
  spread = args[2] == "many-addresses"
end

function request()
  n = n + 1
  local token = head .. "." .. body .. "x" .. id .. "x" .. n .. ".c2lnbmF0dXJlX19fX19fX19f"
  local headers = {["Authorization"] = "Bearer " .. token}
  if spread then
    local b, c = math.floor(n / 250) % 250, n % 250
    headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", id, b, c)
  end
  return wrk.format(nil, wrk.path, headers)
end

local statuses = {}
function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("requests=%d\\n", summary.requests))
end
"""


@dataclass(frozen=True)
class ValidRun:
    sent: int
    ok: int
    latencies_ms: list[float]

    @property
    def success(self) -> float:
        return 100.0 * self.ok / self.sent if self.sent else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def valid_client(
    port: int, path: str, token: str | Callable[[int], str], rate: float, seconds: float
) -> ValidRun:
    """`rate` requests a second for `seconds`, on one keep-alive connection (reopened after a
    failure), with `token`, or `token(n)` for the n-th request; each answer other than 200
    counts as a failure."""
    token_for = token if callable(token) else (lambda _n: token)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    sent = ok = 0
    latencies: list[float] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        time.sleep(max(0.0, sent / rate - elapsed))
        headers = {"Authorization": f"Bearer {token_for(sent)}"}
        sent += 1
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            ok += resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.close()
    return ValidRun(sent, ok, latencies)


def fresh_token(n: int) -> str:
    """A valid token no request has carried before (a new session)."""
    return tokens.token(sub=f"session-{time.time_ns()}-{n}", roles=["reader"], tenant=None)


def flood(url: str, script: Path, connections: int, seconds: float, size: int, mode: str) -> str:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url]
    out = subprocess.run(
        [*argv, "--", str(size), mode],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    return out.stdout + out.stderr


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def statuses(authz: stack.Authz) -> Counter[str]:
    out: Counter[str] = Counter()
    for sample in metrics.scraped_samples(authz.metrics(), "ext_authz_checks_total"):
        out[sample.labels["status"]] += int(sample.value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--token-bytes", type=int, default=7800)
    parser.add_argument("--rate", type=float, default=20.0, help="valid requests per second")
    parser.add_argument("--modes", default="one-address,one-address-fresh,many-addresses")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        workdir = Path(tmp)
        started: list[stack.Proc] = []
        try:
            upstream, upstream_port = start_upstream(workdir)
            started.append(upstream)
            catalog = write_catalog(workdir, upstream_port)
            xds = stack.start_xds(catalog, workdir)
            started.append(xds.proc)
            authz = stack.start_authz(
                workdir,
                args=["--audit-allow-sample", "0", "--trusted-proxy-hops", "1"],
            )
            started.append(authz.proc)
            envoy = stack.start_envoy(xds, workdir, node_id="gw-flood", authz=authz)
            started.append(envoy.proc)
            token = tokens.token(sub="valid-user", roles=["reader"], tenant=None, ttl_s=3600)
            path = PROTECTED + "/x"
            wait.wait_until(
                lambda: (
                    (r := test_http.try_get(envoy.url + path, tokens.bearer(token))) is not None
                    and r.status == 200
                ),
                timeout=30,
                what="the valid client's first 200",
            )
            script = workdir / "flood.lua"
            script.write_text(LUA)
            port = envoy.listener_port

            rows = []
            base = valid_client(port, path, token, args.rate, args.duration)
            rows.append(("baseline (no flood)", base, "", ""))
            for mode in [m for m in args.modes.split(",") if m]:
                before = statuses(authz)
                client_token: str | Callable[[int], str] = token
                if mode == "one-address-fresh":
                    client_token = fresh_token
                with ThreadPoolExecutor(1) as pool:
                    during = pool.submit(
                        valid_client, port, path, client_token, args.rate, args.duration
                    )
                    out = flood(
                        envoy.url + path,
                        script,
                        args.connections,
                        args.duration,
                        args.token_bytes,
                        "many-addresses" if mode == "many-addresses" else "one-address",
                    )
                    run = during.result()
                sent = next(
                    (int(x.split("=")[1]) for x in out.splitlines() if x.startswith("requests=")),
                    0,
                )
                mix = statuses(authz) - before
                mix_text = " ".join(f"{k}:{v}" for k, v in sorted(mix.items()))
                rows.append((f"flood {mode}", run, f"{sent / args.duration:.0f}", mix_text))
            print(
                f"\nvalid client {args.rate:g}/s for {args.duration:g}s; flood "
                f"{args.connections} connections, {args.token_bytes}-byte distinct tokens"
            )
            print(
                f"{'run':<24} {'sent':>5} {'ok %':>7} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'p99/base':>8} {'flood/s':>8}  ext_authz decisions"
            )
            base_p99 = base.pct(99)
            for name, run, rate, mix_text in rows:
                print(
                    f"{name:<24} {run.sent:>5} {run.success:>7.2f} {run.pct(50):>7.1f} "
                    f"{run.pct(99):>7.1f} {run.pct(99) / base_p99:>8.2f} {rate:>8}  {mix_text}"
                )
            print("target: ok % >= 99.9 and p99 < 50 ms under flood")
            print(
                f"ext_authz peak RSS {rss_mb(authz.proc.popen.pid):.0f} MB; median valid "
                f"latency {statistics.median(base.latencies_ms):.1f} ms alone"
            )
        finally:
            for proc in reversed(started):
                proc.stop()


if __name__ == "__main__":
    main()
