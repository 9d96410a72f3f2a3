"""The copies of opentelemetry-proto's modules we serve when xds-protos' won on disk are
opentelemetry-proto's own files, and a file that is not the one it installed is noticed."""

from __future__ import annotations

import shutil
from importlib.metadata import PathDistribution, distribution
from pathlib import Path

from sidecar_shared import otlp_proto


def test_the_copies_are_the_pinned_opentelemetry_protos_own_files() -> None:
    """Fails after a bump of opentelemetry-proto in constraints.txt until the copies follow:
    pip download --no-deps opentelemetry-proto==NEW, and copy the eight files of MODULES."""
    dist = distribution("opentelemetry-proto")
    assert dist.version == otlp_proto.VENDORED_VERSION
    recorded = {str(f): f.hash for f in dist.files or []}
    for module, name in otlp_proto.MODULES.items():
        expected = recorded[otlp_proto.record_path(module)]
        assert expected is not None
        data = (otlp_proto.HERE / name).read_bytes()
        assert otlp_proto.file_hash(data) == f"{expected.mode}={expected.value}", module


def fake_install(root: Path, replace: str | None) -> PathDistribution:
    """opentelemetry-proto as pip would leave it in `root`, with the file of module `replace`
    overwritten (as xds-protos does)."""
    lines = []
    for module, name in otlp_proto.MODULES.items():
        target = root / otlp_proto.record_path(module)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(otlp_proto.HERE / name, target)
        lines.append(
            f"{otlp_proto.record_path(module)},{otlp_proto.file_hash(target.read_bytes())},1"
        )
        if module == replace:
            target.write_text("# an older copy\n")
    info = root / "opentelemetry_proto-1.45.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: opentelemetry-proto\nVersion: 1.45.2\n")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return PathDistribution(info)


def test_intact_files_need_no_copies(tmp_path: Path) -> None:
    assert otlp_proto.overwritten(fake_install(tmp_path, None)) == []


def test_an_overwritten_file_is_noticed(tmp_path: Path) -> None:
    module = "opentelemetry.proto.common.v1.common_pb2"
    assert otlp_proto.overwritten(fake_install(tmp_path, module)) == [module]
