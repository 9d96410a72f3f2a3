"""`sidecar bootstrap` as a container runs it: settings from `SIDECAR_*` variables, and a real
Envoy started from its output syncs with the xDS server over the protocol asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import commands
from sidecar_shared import supervise
from tests.support import stack
from tests.support.catalogs import SAMPLE
from tests.support.http import try_get
from tests.support.ports import free_port
from tests.support.wait import wait_until


@pytest.mark.parametrize("protocol", stack.PROTOCOLS)
def test_an_envoy_from_sidecar_bootstrap_syncs_over_the_protocol_its_variables_name(
    tmp_path: Path, protocol: str
) -> None:
    xds = stack.start_xds(SAMPLE, tmp_path)
    admin_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_XDS_PORT=str(xds.port),
        SIDECAR_ADMIN_PORT=str(admin_port),
        SIDECAR_NODE_ID=f"from-env-{protocol}",
        SIDECAR_XDS_PROTOCOL=protocol,
        SIDECAR_AUTHZ_TRANSPORT=xds.transport,
    )
    rendered = subprocess.run(
        [sys.executable, "-m", "sidecar", "bootstrap"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(rendered.stdout)
    envoy = stack.start(
        "envoy", commands.envoy(supervise.find_envoy(), bootstrap, "warning"), tmp_path
    )
    with stack.stopping(envoy, xds.proc):

        def synced() -> bool:
            assert envoy.alive(), envoy.output()
            return any(
                p["node_id"] == f"from-env-{protocol}"
                and p["protocol"] == protocol
                and all(t["state"] == "SYNCED" for t in p["types"].values())
                and len(p["types"]) == 4
                for p in xds.status()["proxies"]
            )

        wait_until(synced, timeout=30, what=f"the Envoy to sync over {protocol}")
        assert try_get(f"http://127.0.0.1:{admin_port}/ready") is not None
