"""Compile protos/ into the Python modules the packages import, with grpcio-tools.

    python protos/generate.py          write sidecar_shared/admin_api/admin_pb2.py (and .pyi)
    python protos/generate.py --check  exit 1 when what is committed differs from what it makes

The generated code is committed (tests/unit/test_protos.py runs `--check`): an editable install
and `pip install .` both work without a build step anyone could forget, and grpcio-tools is a
development dependency only. Only messages are generated: the servers register the service
with `grpc.method_handlers_generic_handler`, as ADS does, and clients call it by method name.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# proto file (under protos/) → the directory its modules go to
TARGETS = {"sidecar/admin/v1/admin.proto": ROOT / "sidecar_shared" / "admin_api"}


def generate(out: Path) -> dict[Path, bytes]:
    """Every generated file, by its path under the repository."""
    made: dict[Path, bytes] = {}
    for proto, target in TARGETS.items():
        code = protoc.main(
            ["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--pyi_out={out}", proto]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {proto}")
        stem = Path(proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            source = out / f"{stem}{suffix}"
            made[target.relative_to(ROOT) / source.name] = source.read_bytes()
    return made


def _same(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(Path(tmp))
    stale = [
        p for p, data in made.items() if not (ROOT / p).is_file() or (ROOT / p).read_bytes() != data
    ]
    if "--check" in argv:
        for path in stale:
            print(f"{path} is not what protos/ generates: run python protos/generate.py")
        return 1 if stale else 0
    for path in stale:
        (ROOT / path).write_bytes(made[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
