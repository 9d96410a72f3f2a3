"""An xDS server that cannot listen says where, in one log line, and exits 1: no traceback."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sidecar import commands
from tests.support import ports

SAMPLE = Path(__file__).resolve().parents[2] / "service_catalog.json"


@pytest.mark.parametrize("flag", ["--xds-port", "--xds-http-port"])
def test_a_port_already_in_use_is_a_start_up_error_naming_the_address(flag: str) -> None:
    with ports.taken_port() as taken:
        chosen = {"--xds-port": ports.free_port(), "--xds-http-port": ports.free_port()}
        chosen[flag] = taken
        argv = commands.xds_server(
            *("--catalog", str(SAMPLE), "--xds-host", "127.0.0.1"),
            *(item for name, port in chosen.items() for item in (name, str(port))),
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (failure,) = [r for r in records if r["message"] == "cannot start"]
    # "cannot listen on 127.0.0.1:PORT: ..." or "... bind on address ('127.0.0.1', PORT) ..."
    assert re.search(rf"127\.0\.0\.1'?(:|, ){taken}\b", failure["error"]), failure
