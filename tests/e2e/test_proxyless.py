"""A proxyless gRPC client (grpcio with an `xds:///` target) connecting to our xDS server is
told at once that it is not served, and why (`xds_server.proxyless`), instead of waiting for a
listener until its deadline; the refusal is listed in the status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import stack


def test_a_proxyless_grpc_client_is_refused_at_once_saying_why(
    sample_catalog: Path, tmp_path: Path
) -> None:
    xds = stack.start_xds(sample_catalog, tmp_path)
    with stack.stopping(xds.proc):
        client = [sys.executable, "-m", "tests.support.proxyless_client"]
        result = subprocess.run(
            [*client, str(xds.port), "xds:///orders", "30"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        call = json.loads(result.stdout.strip().splitlines()[-1])
        assert call["code"] == "UNAVAILABLE", call
        assert "FAILED_PRECONDITION" in call["details"]
        assert "proxyless gRPC clients (xds:/// targets) are not served" in call["details"]
        assert call["seconds"] < 15  # not the call's 30 s deadline
        refused = xds.status()["refused"]
        assert [(r["node_id"], r["reason"]) for r in refused] == [
            ("proxyless-client", "proxyless_grpc")
        ]
