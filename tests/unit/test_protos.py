"""The generated modules of protos/ are committed: they must be what protos/generate.py makes
from the .proto files now (else run `python protos/generate.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar_shared.admin_api import ADMIN_SERVICE, admin_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_name_is_the_one_the_proto_declares() -> None:
    (service,) = admin_pb2.DESCRIPTOR.services_by_name.values()
    assert service.full_name == ADMIN_SERVICE
    assert set(service.methods_by_name) == {"Explain", "WatchStatus", "ValidateCatalog"}
