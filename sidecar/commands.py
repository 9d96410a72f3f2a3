"""The command lines of the processes `sidecar up` runs. Tests and benchmarks start the same
processes with the same builders."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def xds_server(*flags: str, python: str = sys.executable, module: str = "xds_server") -> list[str]:
    """`module`: a wrapper that runs the same server (tests use one to inject faults)."""
    return [python, "-m", module, *flags]


def ext_authz(*flags: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "ext_authz", *flags]


def demo_upstreams(specs: Sequence[str], python: str = sys.executable) -> list[str]:
    """Echo upstreams, one per `name=host:port`."""
    return [python, "-m", "sidecar.echo", *specs]


# Envoy writes its access log (the native engine's audit lines) out every this many ms, not
# every 10 s (its default): an audit line is written within about a second of its decision.
ACCESS_LOG_FLUSH_MS = "1000"


def envoy(binary: str, bootstrap: Path, log_level: str) -> list[str]:
    # A dynamic base id lets several Envoys run on one machine (tests, benchmarks).
    return [
        *(binary, "-c", str(bootstrap), "--use-dynamic-base-id", "-l", log_level),
        *("--file-flush-interval-msec", ACCESS_LOG_FLUSH_MS),
    ]
