"""An xDS server that cannot listen says where, in one log line, and exits 1: no traceback. Its
ports are its alone: one held by anything, another xDS server included, is such a failure."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sidecar import commands
from tests.support import ports, stack

SAMPLE = Path(__file__).resolve().parents[2] / "service_catalog.json"


def run_to_exit(chosen: dict[str, int]) -> subprocess.CompletedProcess[str]:
    """An xDS server on the sample catalog with the ports `chosen` (flag → port), run until it
    exits."""
    argv = commands.xds_server(
        *("--catalog", str(SAMPLE), "--xds-host", "127.0.0.1"),
        *(item for name, port in chosen.items() for item in (name, str(port))),
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def refused(done: subprocess.CompletedProcess[str], port: int) -> None:
    """`done` exited 1 with one "cannot start" record naming 127.0.0.1:`port`."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (failure,) = [r for r in records if r["message"] == "cannot start"]
    # "cannot listen on 127.0.0.1:PORT: ..." or "... bind on address ('127.0.0.1', PORT) ..."
    assert re.search(rf"127\.0\.0\.1'?(:|, ){port}\b", failure["error"]), failure


@pytest.mark.parametrize("holder", ports.HOLDERS)
@pytest.mark.parametrize("flag", ["--xds-port", "--xds-http-port"])
def test_a_port_already_in_use_is_a_start_up_error_naming_the_address(
    flag: str, holder: str
) -> None:
    with ports.taken_port(holder) as taken:
        chosen = {"--xds-port": ports.free_port(), "--xds-http-port": ports.free_port()}
        chosen[flag] = taken
        done = run_to_exit(chosen)
    refused(done, taken)


@pytest.mark.parametrize("flag", ["--xds-port", "--xds-http-port"])
def test_a_second_xds_server_on_a_port_of_the_first_refuses_to_start(
    flag: str, tmp_path: Path
) -> None:
    first = stack.start_xds(SAMPLE, tmp_path)
    try:
        held = {"--xds-port": first.port, "--xds-http-port": first.http_port}[flag]
        chosen = {"--xds-port": ports.free_port(), "--xds-http-port": ports.free_port()}
        chosen[flag] = held
        done = run_to_exit(chosen)
        assert first.proc.alive() and first.version() is not None
    finally:
        first.proc.stop()
    refused(done, held)
