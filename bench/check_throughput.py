"""Requests per second through a real Envoy, with and without our ext_authz, over each of its
transports, in one run: the issue-9 table with its targets.

    python -m bench.check_throughput [--runs 3] [--duration 5] [--threads 1] [--connections 16]
                                     [--configs no-auth,http-1-token,...] [--p50-rounds 3]
                                     [--rss-users 1250000]

Each configuration in CONFIGS gets its own xDS server (telling Envoy which transport to use),
ext_authz (its own process, `python -m ext_authz`, as the `ext-authz` container runs it) and
gateway Envoy (Envoy at default concurrency, 2 workers on 2 cores), so token caches, CPU counts
and listener ports never mix; all share one fast upstream (a second Envoy answering 200 "ok"
from a `direct_response`, --concurrency 1). The baseline `no-auth` is a public route that
skips ext_authz: Envoy alone. The others use a route with JWT + RBAC + tenant scope + a rate
limit too high to reach (so every check counts it), with metrics on, 1 % of allows audited
and tracing configured but never sampled (--no-tracing: unconfigured).
wrk drives every configuration through the same Lua script, which rotates through a file of
bearer tokens (none, one, or 10,000 distinct users; with 10,000 the token cache is cut to
1,000 so that every check verifies its token). `http-floor` and `grpc-floor` put
`bench.floor_authz` (an ext_authz server of that transport that decides nothing) where
ext_authz would be: what the transport itself costs under the same load. Warm-up repeats 1 s
of load until every token was sent once. Runs are interleaved (A, B, C, A, B, C, ...) so noise
hits all alike.

Prints the wrk command, then one line per run and a table of medians: requests/s, latency p50
and p99 (wrk --latency), the ratio to `no-auth`, ext_authz CPU µs per check and gateway Envoy
CPU µs per request (utime + stime from /proc/PID/stat over the run, divided by the requests wrk
completed). Then the p50 that `http-1-token` adds at one connection, ext_authz's RSS after
`--rss-users` distinct users through the memory limiter, and the issue's targets beside the
measured numbers. Non-2xx responses and socket errors are printed in capitals: a benchmark of
401s is worthless. Needs `wrk` on PATH (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar_shared.contract import POLICY_HEADER, Limit, RoutePolicy
from sidecar_shared.supervise import find_envoy
from tests.support import envoy_upstream, http, keys, metrics, ports, stack, tokens, wait
from tests.support.policies import encode
from xds_server.engines import NativeKeys
from xds_server.resources import native

PROTECTED = "/api"  # "rbac_required": false, not public: ext_authz checks the token
OPEN = "/open"  # "public": true, no rate_limit: Envoy skips ext_authz
LIMITED = "/limited"  # like /api, with a rate limit too high to reach: every Check counts
# What the targets are measured on: JWT + RBAC (role reader) + tenant scope + a rate
# limit too high to reach (every check counts, in memory unless the config says Redis).
SECURE = "/secure"
REDIS = {
    "SIDECAR_RATE_LIMIT_BACKEND": "redis",
    # Keys expire by themselves (1 s windows); the prefix keeps them apart from anything else.
    "SIDECAR_REDIS_KEY_PREFIX": "bench-rl:",
    # Long enough that a busy machine does not turn Redis calls into fail-open shortcuts.
    "SIDECAR_REDIS_TIMEOUT_MS": "100",
}
# Allows audited at 1 % (a production sampling); denials always are. Metrics are always on.
AUDIT_ARGS = ("--audit-allow-sample", "0.01")


# Tracing configured but not sampled, as in production: Envoy starts no trace (0 %) and passes
# an unsampled traceparent, ext_authz follows its parent. The collector port answers nothing,
# and nothing is sent to it. --no-tracing leaves OTEL_* unset.
def tracing_env(collector_port: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }


TRACING_XDS_ARGS = ("--envoy-trace-sampling", "0")
# A token cache smaller than the users, visited round robin: every check verifies its token.
MISSES = ("--token-cache-size", "1000")
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TokenSource:
    """How many distinct users wrk sends bearer tokens for; 0 sends no Authorization header."""

    users: int
    tenant: str | None = None


@dataclass(frozen=True)
class AuthzArgs:
    """Extra command-line flags and environment for this configuration's ext_authz."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    name: str
    path: str
    token_source: TokenSource
    authz_args: AuthzArgs = field(default_factory=AuthzArgs)
    transport: str = "http"  # how Envoy calls ext_authz (--authz-transport)
    floor: bool = False  # Envoy calls bench.floor_authz (decides nothing) instead of ext_authz
    # The xDS server's --decision (docs/engines.md); `native` and `auto` get RS256 tokens and
    # the JWKS (an HS secret is never compiled into Envoy), ext_authz the same JWKS.
    decision: str = "ext_authz"
    # A hand-written Envoy (static config: jwt_authn + rbac on the role, nothing else) instead
    # of our xDS server: what Envoy's own filters cost, the native engine's anchor. `parts`
    # adds pieces of the native engine to it one by one (`ANCHOR_PARTS`), to see what costs.
    anchor: bool = False
    parts: tuple[str, ...] = ()

    @property
    def rs256(self) -> bool:
        return self.decision != "ext_authz" or self.anchor

    @property
    def checks_expected(self) -> bool:
        """Whether ext_authz decides every request of this configuration."""
        return self.token_source.users > 0 and self.decision != "native" and not self.anchor


ONE = TokenSource(1, "acme")
MANY = TokenSource(10_000, "acme")
# The first configuration is the baseline (ratio 1.00). Add rows here; --configs filters them.
CONFIGS = [
    Config("no-auth", OPEN + "/x", TokenSource(0)),
    # Envoy alone receiving the same requests as the 1-token rows (the RS256 bearer token, about
    # 600 bytes more per request, parsed and forwarded upstream): no filter decides anything.
    Config("no-auth+token", OPEN + "/x", ONE, decision="native"),
    Config("http-1-token", SECURE + "/x", ONE),
    Config("http-10k-users", SECURE + "/x", MANY, AuthzArgs(MISSES)),
    Config("http-redis-10k-users", SECURE + "/x", MANY, AuthzArgs(MISSES, REDIS)),
    Config("grpc-1-token", SECURE + "/x", ONE, transport="grpc"),
    Config("grpc-10k-users", SECURE + "/x", MANY, AuthzArgs(MISSES), "grpc"),
    Config("http-floor", SECURE + "/x", ONE, floor=True),
    Config("grpc-floor", SECURE + "/x", ONE, transport="grpc", floor=True),
    Config("native-anchor", SECURE + "/x", ONE, anchor=True),
    Config("native-1-token", SECURE + "/x", ONE, decision="native"),
    Config("native-10k-users", SECURE + "/x", MANY, decision="native"),
    Config("auto-1-token", SECURE + "/x", ONE, decision="auto"),
]
# The native engine's pieces on top of the anchor: the tenant condition (CEL), the identity
# headers (Lua), the per-user limit (local_ratelimit).
ANCHOR_PARTS = ("cel", "lua", "limit")
# Older rows (no RBAC, no tenant, no limit unless named so): --configs selects them.
EXTRA_CONFIGS = [
    *(Config(f"anchor+{p}", SECURE + "/x", ONE, anchor=True, parts=(p,)) for p in ANCHOR_PARTS),
    Config("authz-1-token", PROTECTED + "/x", TokenSource(1), transport="grpc"),
    Config("authz-10k-users", PROTECTED + "/x", TokenSource(10_000), transport="grpc"),
    Config("limit-memory-10k-users", LIMITED + "/x", TokenSource(10_000), transport="grpc"),
    Config(
        "limit-redis-10k-users",
        LIMITED + "/x",
        TokenSource(10_000),
        AuthzArgs(env=REDIS),
        transport="grpc",
    ),
]
# The table: (what, config, measure, target, how the target reads)
TARGETS = [
    ("throughput, HTTP transport, one cached token", "http-1-token", "ratio", 0.55, ">="),
    ("throughput, HTTP transport, 10,000 users (misses)", "http-10k-users", "ratio", 0.40, ">="),
    (
        "throughput, HTTP transport, Redis, 10,000 users",
        "http-redis-10k-users",
        "ratio",
        0.40,
        ">=",
    ),
    ("throughput, gRPC transport, one cached token", "grpc-1-token", "ratio", 0.27, ">="),
    ("ext_authz CPU per check, HTTP transport, cached", "http-1-token", "cpu_us", 20.0, "<="),
    ("throughput, native engine, one token", "native-1-token", "ratio", 0.85, ">="),
    ("throughput, native engine, 10,000 users", "native-10k-users", "ratio", 0.85, ">="),
    ("  (anchor: hand-written jwt_authn + rbac)", "native-anchor", "ratio", 0.85, ">="),
    ("throughput, auto (limited route: ext_authz)", "auto-1-token", "ratio", 0.55, ">="),
]

LUA = """\
-- wrk -s this.lua URL -- TOKENS_FILE THREADS: each request carries the next token in the
-- file (an empty file sends no Authorization header); threads start at different offsets.
local started = 0
function setup(thread)
  thread:set("offset", started)
  started = started + 1
end

local tokens = {}
local n = 0
local i = 0
function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      n = n + 1
      tokens[n] = line
    end
  end
  local threads = tonumber(args[2]) or 1
  if n > 0 then
    i = (offset or 0) * math.floor(n / threads) % n
  end
end

function request()
  if n == 0 then
    return wrk.format(nil, wrk.path)
  end
  i = i % n + 1
  return wrk.format(nil, wrk.path, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


@dataclass
class Stack:
    """One configuration's processes and its token file."""

    config: Config
    authz: stack.Authz
    envoy: stack.Envoy
    tokens_file: Path


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


@dataclass(frozen=True)
class Run:
    wrk: WrkResult
    authz_us_per_req: float
    envoy_us_per_req: float
    checks: int  # ext_authz decisions counted by its metrics during the run


# --- processes ------------------------------------------------------------------------------


def start_upstream(workdir: Path) -> tuple[stack.Proc, int]:
    """A second Envoy that answers every request with 200 "ok" (one worker)."""
    port, admin_port = ports.free_port(), ports.free_port()
    bootstrap = workdir / "upstream.json"
    bootstrap.write_text(json.dumps(envoy_upstream.bootstrap(port, admin_port)))
    argv = [find_envoy(), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "error"]
    argv += ["--concurrency", "1"]
    proc = start_answering("upstream", argv, workdir, f"http://127.0.0.1:{port}/")
    return proc, port


def start_answering(name: str, argv: list[str], workdir: Path, url: str) -> stack.Proc:
    """Start a process and wait until `url` answers 200 (exit if the process dies first)."""
    proc = stack.start(name, argv, workdir)

    def up() -> bool:
        if not proc.alive():
            raise SystemExit(f"{name} exited:\n{proc.output()}")
        resp = http.try_get(url)
        return resp is not None and resp.status == 200

    wait.wait_until(up, timeout=20, what=name)
    return proc


def write_catalog(workdir: Path, upstream_port: int) -> Path:
    url = f"http://127.0.0.1:{upstream_port}"
    services = [
        {"service_name": "open", "base_path": OPEN, "internal_url": url, "public": True},
        {
            "service_name": "api",
            "base_path": PROTECTED,
            "internal_url": url,
            "rbac_required": False,
        },
        {
            "service_name": "limited",
            "base_path": LIMITED,
            "internal_url": url,
            "rbac_required": False,
            "rate_limit": {"requests_per_second": 1_000_000},
        },
        {
            "service_name": "secure",
            "base_path": SECURE,
            "internal_url": url,
            "tenant_scope": "tenant",
            "rate_limit": {"requests_per_second": 1_000_000},
        },
    ]
    catalog_dir = workdir / "catalog"  # its own directory: the xDS server watches it
    catalog_dir.mkdir()
    catalog = catalog_dir / "service_catalog.json"
    roles = {"reader": ["api:read", "secure:read"]}
    catalog.write_text(json.dumps({"services": services, "roles": roles}))
    return catalog


SIGNER = "bench-rs"


def rs256_token(sub: str, tenant: str | None) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "roles": ["reader"], "iat": now, "exp": now + 3600}
    if tenant is not None:
        claims["tenant_id"] = tenant
    key = keys.rsa_key(SIGNER)
    return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": SIGNER})


def write_tokens(path: Path, source: TokenSource, rs256: bool = False) -> None:
    lines = [
        rs256_token(f"user-{i}", source.tenant)
        if rs256
        else tokens.token(sub=f"user-{i}", roles=["reader"], tenant=source.tenant, ttl_s=3600)
        for i in range(source.users)
    ]
    path.write_text("".join(line + "\n" for line in lines))


def start_stack(
    config: Config,
    catalog: Path,
    workdir: Path,
    started: list[stack.Proc],
    trace_env: Mapping[str, str],
) -> Stack:
    """xDS server + ext_authz + gateway Envoy for one configuration; each process goes into
    `started`. Its own xDS server gives its Envoy its own listener port: Envoys sharing one
    port (SO_REUSEPORT) would split wrk's connections between them. `trace_env` (OTEL_*) goes
    to the xDS server, which configures Envoy's tracer from it, and to ext_authz."""
    jwks = {"SIDECAR_JWKS": str(write_jwks(workdir))} if config.rs256 else {}
    decision = {"SIDECAR_DECISION": config.decision}
    xds = stack.start_xds(
        catalog,
        workdir,
        name=f"xds-{config.name}",
        transport=config.transport,
        args=list(TRACING_XDS_ARGS) if trace_env else None,
        env={**trace_env, **jwks, **decision},
    )
    started.append(xds.proc)
    if config.floor:
        authz = start_floor(workdir, config.name, config.transport)
    else:
        authz = stack.start_authz(
            workdir,
            name=f"authz-{config.name}",
            env={**trace_env, **config.authz_args.env, **jwks},
            args=[*AUDIT_ARGS, *config.authz_args.args],
        )
    started.append(authz.proc)
    if config.anchor:
        envoy = start_anchor(workdir, config.name, catalog, config.parts)
    else:
        envoy = stack.start_envoy(xds, workdir, node_id=f"gw-{config.name}", authz=authz)
    started.append(envoy.proc)
    tokens_file = workdir / f"tokens-{config.name}.txt"
    write_tokens(tokens_file, config.token_source, config.rs256)
    first = tokens_file.read_text().split("\n", 1)[0]
    headers = tokens.bearer(first) if first else {}

    def answers() -> bool:
        resp = http.try_get(envoy.url + config.path, headers)
        return resp is not None and resp.status == 200

    wait.wait_until(answers, timeout=30, what=f"200 on {config.path} ({config.name})")
    return Stack(config, authz, envoy, tokens_file)


def write_jwks(workdir: Path) -> Path:
    return keys.write_jwks(workdir / "jwks.json", keys.rsa_key(SIGNER))


def start_anchor(
    workdir: Path, name: str, catalog: Path, parts: tuple[str, ...] = ()
) -> stack.Envoy:
    """Envoy (default concurrency, like the gateways) from a static config: the `secure`
    route's upstream behind jwt_authn (the JWKS) and rbac (GET by role `reader`), nothing
    else: what Envoy's own filters cost, written by hand; with `parts` of the native engine's
    configuration added (`ANCHOR_PARTS`)."""
    upstream = json.loads(catalog.read_text())["services"][0]["internal_url"]
    port = int(upstream.rsplit(":", 1)[1])
    native_keys = NativeKeys(jwks=str(write_jwks(workdir)), roles=("roles",), role_fallback=None)
    policy = RoutePolicy(
        service="secure",
        allowed_roles={"read": frozenset({"reader"})},
        rate_limit=Limit(1_000_000, 1),
    )
    rbac = native.rbac_per_route(native_keys, policy).rbac
    if "cel" not in parts:
        del rbac.rules.policies["read+x-tenant-id"]  # the tenant comparison's policy
    extra: list[dict[str, object]] = []
    if "lua" in parts:
        lua = lua_pb2.Lua()
        lua.default_source_code.inline_string = native.identity_script(native_keys)
        extra.append({"name": "lua", "typed_config": as_json(lua)})
    if "limit" in parts:
        limit = native.limit_per_route(native_keys, policy)
        extra.append({"name": "limit", "typed_config": as_json(limit)})
    listen, admin = ports.free_port(), ports.free_port()
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "anchor",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
        "http_filters": [
            {"name": "jwt", "typed_config": as_json(jwt_anchor(native_keys))},
            {"name": "rbac", "typed_config": as_json(rbac)},
            *extra,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "anchor",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    bootstrap = workdir / f"anchor-{name}.json"
    bootstrap.write_text(json.dumps(config))
    argv = [find_envoy(), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "error"]
    proc = start_answering(f"anchor-{name}", argv, workdir, f"http://127.0.0.1:{admin}/ready")
    return stack.Envoy(proc, admin, listen, f"anchor-{name}")


def jwt_anchor(native_keys: NativeKeys) -> jwt_pb2.JwtAuthentication:
    config = native.jwt_config(native_keys)
    config.rules.add().match.prefix = "/"
    config.rules[0].requires.provider_name = native.PROVIDER
    return config


def as_json(message: Message) -> dict[str, object]:
    out: dict[str, object] = json_format.MessageToDict(message)
    return {"@type": f"type.googleapis.com/{message.DESCRIPTOR.full_name}", **out}


def start_floor(workdir: Path, name: str, transport: str) -> stack.Authz:
    """bench.floor_authz for `transport`, standing where ext_authz would."""
    check_port, metrics_port = ports.free_port(), ports.free_port()
    argv = [sys.executable, "-m", "bench.floor_authz", transport, str(check_port)]
    ready = f"http://127.0.0.1:{metrics_port}/ready"
    proc = start_answering(f"floor-{name}", [*argv, str(metrics_port)], workdir, ready)
    return stack.Authz(proc, check_port, metrics_port, check_port)


# --- measuring ------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def metric_total(authz: stack.Authz, name: str) -> int:
    """The sum of a counter's samples on ext_authz's metrics page."""
    return int(metrics.scraped(authz.metrics(), name))


def checks_total(authz: stack.Authz) -> int:
    return metric_total(authz, "ext_authz_checks_total")


@dataclass(frozen=True)
class Wrk:
    threads: int
    connections: int
    script: Path

    def argv(self, url: str, tokens_file: Path, seconds: float) -> list[str]:
        return [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(self.script),
            url,
            "--",
            str(tokens_file),
            str(self.threads),
        ]

    def run(self, url: str, tokens_file: Path, seconds: float) -> WrkResult:
        out = subprocess.run(
            self.argv(url, tokens_file, seconds),
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        ).stdout
        return parse_wrk(out)

    def stack_argv(self, stack: Stack, seconds: float) -> list[str]:
        return self.argv(stack.envoy.url + stack.config.path, stack.tokens_file, seconds)

    def run_stack(self, stack: Stack, seconds: float) -> WrkResult:
        return self.run(stack.envoy.url + stack.config.path, stack.tokens_file, seconds)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency_ms(out: str, percent: int) -> float:
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percent}% latency in wrk output:\n{out}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(out: str) -> WrkResult:
    requests = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if requests is None or rps is None:
        raise ValueError(f"unexpected wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(requests[1]),
        rps=float(rps[1]),
        p50_ms=_latency_ms(out, 50),
        p99_ms=_latency_ms(out, 99),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def measure(wrk: Wrk, stack: Stack, seconds: float) -> Run:
    authz_pid, envoy_pid = stack.authz.proc.popen.pid, stack.envoy.proc.popen.pid
    checks_before = checks_total(stack.authz)
    authz_before, envoy_before = cpu_ticks(authz_pid), cpu_ticks(envoy_pid)
    result = wrk.run_stack(stack, seconds)
    authz_after, envoy_after = cpu_ticks(authz_pid), cpu_ticks(envoy_pid)
    checks = checks_total(stack.authz) - checks_before
    per_req = TICK_US / max(result.requests, 1)
    return Run(
        wrk=result,
        authz_us_per_req=(authz_after - authz_before) * per_req,
        envoy_us_per_req=(envoy_after - envoy_before) * per_req,
        checks=checks,
    )


def warm_up(wrk: Wrk, stack: Stack, max_s: float = 60.0) -> str:
    """1 s of load, repeated until every token has been sent once (the cache then holds all)."""
    started = time.monotonic()
    sent = 0
    while True:
        sent += wrk.run_stack(stack, 1).requests
        elapsed = time.monotonic() - started
        if sent >= stack.config.token_source.users or elapsed > max_s:
            return f"{stack.config.name}: {sent} requests in {elapsed:.1f} s"


# --- reporting ------------------------------------------------------------------------------


def problems(run: Run, config: Config) -> str:
    notes = []
    if run.wrk.non_2xx:
        notes.append(f"!!! {run.wrk.non_2xx} NON-2xx RESPONSES !!!")
    if run.wrk.socket_errors:
        notes.append(f"!!! {run.wrk.socket_errors} SOCKET ERRORS !!!")
    if config.token_source.users == 0 and run.checks:
        notes.append(f"!!! ext_authz made {run.checks} checks on a route it should skip !!!")
    if not config.checks_expected and config.token_source.users and run.checks:
        notes.append(f"!!! ext_authz made {run.checks} checks on a native route !!!")
    if config.checks_expected and abs(run.checks - run.wrk.requests) > 0.02 * run.wrk.requests:
        notes.append(f"!!! {run.checks} checks for {run.wrk.requests} requests !!!")
    return "  ".join(notes)


def run_line(index: int, config: Config, run: Run) -> str:
    w = run.wrk
    return (
        f"run {index + 1} {config.name:<22} {w.rps:9.0f} req/s  p50 {w.p50_ms:6.2f} ms  "
        f"p99 {w.p99_ms:6.2f} ms  requests {w.requests:7d}  checks {run.checks:7d}  "
        f"authz {run.authz_us_per_req:6.0f} µs/req  envoy {run.envoy_us_per_req:5.0f} µs/req"
        f"  {problems(run, config)}"
    ).rstrip()


def table(configs: list[Config], runs: dict[str, list[Run]]) -> list[str]:
    def med(name: str, attr: str) -> float:
        return float(statistics.median(getattr(r.wrk, attr) for r in runs[name]))

    base = med(configs[0].name, "rps")
    header = (
        f"{'config':<22} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'authz µs/Check':>15} {'envoy µs/req':>13}  non-2xx / socket errors"
    )
    lines = [header, "-" * len(header)]
    for c in configs:
        rs = runs[c.name]
        authz = statistics.median(r.authz_us_per_req for r in rs)
        envoy = statistics.median(r.envoy_us_per_req for r in rs)
        non_2xx = sum(r.wrk.non_2xx for r in rs)
        errors = sum(r.wrk.socket_errors for r in rs)
        bad = (
            f"!!! {non_2xx} NON-2xx / {errors} SOCKET ERRORS !!!" if non_2xx or errors else "0 / 0"
        )
        authz_cell = f"{authz:15.0f}" if c.token_source.users else f"{'-':>15}"
        lines.append(
            f"{c.name:<22} {med(c.name, 'rps'):9.0f} {med(c.name, 'rps') / base:6.2f} "
            f"{med(c.name, 'p50_ms'):7.2f} {med(c.name, 'p99_ms'):7.2f} "
            f"{authz_cell} {envoy:13.0f}  {bad}"
        )
    return lines


def median_of(runs: list[Run], measure: str) -> float:
    if measure == "cpu_us":
        return float(statistics.median(r.authz_us_per_req for r in runs))
    return float(statistics.median(r.wrk.rps for r in runs))


def targets_table(
    configs: list[Config],
    runs: dict[str, list[Run]],
    added_p50_ms: float | None,
    rss: list[tuple[int, float]],
) -> list[str]:
    """The issue's table: each target beside the number measured in this run."""
    base = median_of(runs[configs[0].name], "rps")
    lines = [f"{'what':<52} {'target':>10} {'measured':>10}  ", "-" * 80]

    def row(what: str, target: str, value: str, ok: bool | None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        lines.append(f"{what:<52} {target:>10} {value:>10}  {verdict}")

    for what, name, measure, goal, sense in TARGETS:
        if name not in runs:
            row(what, f"{sense} {goal:g}", "not run", None)
            continue
        value = median_of(runs[name], measure)
        if measure == "ratio":
            value /= base
        ok = value >= goal if sense == ">=" else value <= goal
        row(what, f"{sense} {goal:g}", f"{value:.2f}" if measure == "ratio" else f"{value:.1f}", ok)
    if "no-auth+token" in runs:
        carried = median_of(runs["no-auth+token"], "rps")
        for name in ("native-1-token", "http-1-token", "grpc-1-token"):
            if name in runs:
                ratio = median_of(runs[name], "rps") / carried
                row(f"  ({name} over Envoy alone with the same token)", "-", f"{ratio:.2f}", None)
    for name, what in (("http-floor", "HTTP"), ("grpc-floor", "gRPC")):
        if name in runs:
            floor = median_of(runs[name], "cpu_us")
            ratio = median_of(runs[name], "rps") / base
            row(f"  (floor: a do-nothing {what} server, throughput)", "-", f"{ratio:.2f}", None)
            row(f"  (floor: a do-nothing {what} server, CPU/check)", "-", f"{floor:.1f}", None)
    if added_p50_ms is None:
        row("added p50 latency at one connection, HTTP", "<= 0.15 ms", "not run", None)
    else:
        row(
            "added p50 latency at one connection, HTTP",
            "<= 0.15 ms",
            f"{added_p50_ms:.3f}",
            added_p50_ms <= 0.15,
        )
    for users, mb in rss:
        row(
            f"ext_authz RSS after {users:,} distinct users (memory)",
            "flat >cap",
            f"{mb:.0f} MiB",
            None,
        )
    return lines


def added_p50(script: Path, base: Stack, other: Stack, seconds: float, rounds: int) -> float:
    """Median over alternating rounds of (p50 through `other` - p50 through `base`), wrk with
    one connection: the latency a check adds when nothing queues."""
    one = Wrk(1, 1, script)
    diffs = []
    for _ in range(rounds):
        a = one.run_stack(base, seconds).p50_ms
        b = one.run_stack(other, seconds).p50_ms
        diffs.append(b - a)
    return float(statistics.median(diffs))


# --- ext_authz's memory under many users ----------------------------------------------------

RSS_POLICY = encode(RoutePolicy(service="rss", rbac_required=False, rate_limit=Limit(10, 3600)))
_HS256_HEAD = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def fast_token(user: int, exp: int) -> bytes:
    """An HS256 token for `user` signed with the test secret (PyJWT is slower than the server
    under test; this is the same bytes it would make)."""
    payload = json.dumps({"sub": f"u{user}", "exp": exp}, separators=(",", ":")).encode()
    signing = _HS256_HEAD + b"." + base64.urlsafe_b64encode(payload).rstrip(b"=")
    mac = hmac.new(tokens.TEST_SECRET, signing, hashlib.sha256).digest()
    return signing + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_after_users(workdir: Path, users: int, checkpoints: int) -> list[tuple[int, float]]:
    """ext_authz (its own process, `python -m ext_authz`) answers one check for each of `users`
    distinct users on a route limited per hour, so each user stays a key of the memory limiter
    (capped at 1,000,000 keys); its RSS at `checkpoints` evenly spaced counts. Checks go
    straight to its HTTP check port, pipelined 500 at a time on one connection."""
    authz = stack.start_authz(workdir, name="authz-rss", args=list(AUDIT_ARGS))
    out: list[tuple[int, float]] = []
    exp = int(time.time()) + 3600
    step = max(1, users // checkpoints)
    batch = 500
    try:
        with socket.create_connection(("127.0.0.1", authz.check_port), timeout=60) as sock:
            for start in range(0, users, batch):
                n = min(batch, users - start)
                sock.sendall(
                    b"".join(
                        b"GET /sidecar-check/rss HTTP/1.1\r\nhost: x\r\n"
                        + POLICY_HEADER.encode()
                        + b": "
                        + RSS_POLICY.encode()
                        + b"\r\nauthorization: Bearer "
                        + fast_token(u, exp)
                        + b"\r\n\r\n"
                        for u in range(start, start + n)
                    )
                )
                got = b""
                while got.count(b"HTTP/1.1 ") < n:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise SystemExit("ext_authz closed the connection")
                    got += chunk
                if got.count(b"HTTP/1.1 200 ") != n:
                    raise SystemExit(f"!!! not every check was allowed: {got[:300]!r}")
                done = start + n
                if done % step < batch or done == users:
                    out.append((done, rss_mib(authz.proc.popen.pid)))
                    print(f"  {done:>9,} users: ext_authz RSS {out[-1][1]:.0f} MiB", flush=True)
    finally:
        authz.proc.stop()
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    names = ",".join(c.name for c in CONFIGS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per configuration")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c")
    extra = ",".join(c.name for c in EXTRA_CONFIGS)
    parser.add_argument(
        "--configs",
        default=names,
        help=f"comma-separated; the first is the baseline ({names}; also {extra})",
    )
    parser.add_argument(
        "--p50-rounds", type=int, default=3, help="rounds of the one-connection latency (0: skip)"
    )
    parser.add_argument(
        "--rss-users",
        type=int,
        default=1_250_000,
        help="distinct users sent to one ext_authz for its RSS (0: skip)",
    )
    parser.add_argument(
        "--no-tracing",
        action="store_true",
        help="leave tracing unconfigured (by default it is configured, never sampled)",
    )
    return parser.parse_args()


def select(spec: str) -> list[Config]:
    by_name = {c.name: c for c in [*CONFIGS, *EXTRA_CONFIGS]}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise SystemExit(f"unknown configs {unknown}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def main() -> None:
    args = parse_args()
    configs = select(args.configs)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    started_at = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    wrk = Wrk(args.threads, args.connections, workdir / "tokens.lua")
    wrk.script.write_text(LUA)
    started: list[stack.Proc] = []
    runs: dict[str, list[Run]] = {c.name: [] for c in configs}
    try:
        upstream, upstream_port = start_upstream(workdir)
        started.append(upstream)
        catalog = write_catalog(workdir, upstream_port)
        trace_env = {} if args.no_tracing else tracing_env(ports.free_port())
        stacks = [start_stack(c, catalog, workdir, started, trace_env) for c in configs]
        print(f"ext_authz flags: {' '.join(AUDIT_ARGS)} (1 % of allows audited; every denial),")
        print(
            "  tracing: off (--no-tracing)"
            if args.no_tracing
            else "  tracing configured, never sampled (Envoy 0 %, ext_authz follows its parent);"
        )
        print(f"  metrics on; *-10k-users add {' '.join(MISSES)}: every check verifies its token")
        print("per configuration: its own xDS server, ext_authz (its own process, as `ext-authz`")
        print("  in a container: python -m ext_authz) and gateway Envoy (default concurrency:")
        print("  2 workers on this 2-core machine); the route is JWT + RBAC + tenant scope + a")
        print("  rate limit too high to reach (memory, or Redis where named);")
        print("  shared upstream: one Envoy, --concurrency 1, direct_response 200;")
        print(f"  wrk -t{args.threads} -c{args.connections} runs on the same 2 cores")
        print("wrk command (URL and token file differ per configuration):")
        print("  " + " ".join(wrk.stack_argv(stacks[-1], args.duration)))
        print("  token files: one bearer token per line, sub user-0..user-N-1, role reader,")
        print("  tenant acme")
        print("warm-up (1 s runs until every token was sent once):")
        for stack in stacks:
            print("  " + warm_up(wrk, stack))
        no_tokens = workdir / "no-tokens.txt"
        no_tokens.write_text("")
        direct = wrk.run(f"http://127.0.0.1:{upstream_port}/", no_tokens, 2)
        print(f"upstream alone (2 s, no gateway): {direct.rps:.0f} req/s")
        print()
        for i in range(args.runs):
            for stack in stacks:
                run = measure(wrk, stack, args.duration)
                runs[stack.config.name].append(run)
                print(run_line(i, stack.config, run), flush=True)
        print()
        print(f"medians of {args.runs} runs x {args.duration:g} s, interleaved; ratio = req/s")
        print(f"over {configs[0].name}; CPU µs = (utime+stime delta) / requests wrk completed")
        for line in table(configs, runs):
            print(line)
        by_name = {st.config.name: st for st in stacks}
        p50: float | None = None
        if args.p50_rounds and "http-1-token" in by_name:
            p50 = added_p50(
                wrk.script, stacks[0], by_name["http-1-token"], args.duration, args.p50_rounds
            )
            print(f"\nadded p50 at one connection (http-1-token - {configs[0].name}): {p50:.3f} ms")
        native_p50: float | None = None
        if args.p50_rounds and "native-1-token" in by_name:
            native_p50 = added_p50(
                wrk.script, stacks[0], by_name["native-1-token"], args.duration, args.p50_rounds
            )
            print(f"added p50 at one connection (native-1-token - {configs[0].name}): ", end="")
            print(f"{native_p50:.3f} ms")
        rss: list[tuple[int, float]] = []
        if args.rss_users:
            print(f"\nRSS: {args.rss_users:,} distinct users through the memory limiter")
            rss = rss_after_users(workdir, args.rss_users, 5)
        print()
        for line in targets_table(configs, runs, p50, rss):
            print(line)
        if native_p50 is not None:
            verdict = "met" if native_p50 <= 0.05 else "MISSED"
            what = "added p50 latency at one connection, native"
            print(f"{what:<52} {'<= 0.05 ms':>10} {native_p50:>10.3f}  {verdict}")
        for stack in stacks:
            errors = metric_total(stack.authz, "ext_authz_rate_limit_backend_errors_total")
            if errors:
                print(f"!! {errors} rate-limit backend errors (answered by the failure policy)")
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\ntotal time: {time.monotonic() - started_at:.0f} s")


if __name__ == "__main__":
    main()
