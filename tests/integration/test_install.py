"""A plain `pip install` as a user runs it, in a fresh venv, gives working OTLP export whichever
copy of opentelemetry-proto's modules pip left on disk (xds-protos ships old ones at the same
paths), and a demo catalog that works from any directory.

One venv for the module: `pip install -c constraints.txt <a copy of the source tree>` (pip builds
the wheel, as `pip install .` does), then the wheel `pip wheel` builds reinstalled over it. Both
orders of the clash are then made on purpose (`--force-reinstall --no-deps` of one wheel, from
pip's cache). Needs PyPI (or pip's cache) and nothing else; bounded by pip's own timeouts and
ours."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support import stack
from tests.support.otlp import GRPC, HTTP, OtlpReceiver
from tests.support.policies import POLICY_KEY_ENV
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INSTALL_TIMEOUT_S = 900

EXPORT = """
import json, os, sys
from sidecar_shared import otlp_proto, tracing
provider = tracing.tracer_provider("fresh-venv", os.environ)
with provider.get_tracer("t").start_as_current_span("exported"):
    pass
provider.shutdown()
print(json.dumps({"overwritten": otlp_proto.overwritten(), "served": otlp_proto.installed()}))
"""


@dataclass
class Venv:
    root: Path
    unpacked_last: str | None = None  # the distribution `last` unpacked most recently

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def pip(self, *args: str) -> None:
        run([self.python, "-m", "pip", "--disable-pip-version-check", *args], self.root.parent)

    def script(self, code: str, env: dict[str, str]) -> dict[str, object]:
        out = run([self.python, "-c", code], self.root.parent, env)
        result: dict[str, object] = json.loads(out.splitlines()[-1])
        return result


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Outside the repository (so nothing imports from the source tree), without PYTHONPATH."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def source_copy(dest: Path) -> Path:
    """The tree pip builds from, without the venv, caches or build output of the checkout."""
    skip = shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache"
    )
    return Path(shutil.copytree(ROOT, dest, ignore=skip))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    base = tmp_path_factory.mktemp("install")
    src = source_copy(base / "src")
    run([sys.executable, "-m", "venv", str(base / "venv")], base)
    env = Venv(base / "venv")
    env.pip("install", "-q", "-c", str(ROOT / "constraints.txt"), str(src))
    run(
        [env.python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "wheel"), str(src)],
        base,
    )
    (wheel,) = (base / "wheel").glob("envoy_sidecar-*.whl")
    env.pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    yield env


def last(env: Venv, distribution: str) -> None:
    """Unpack `distribution` again (pip's cache), so that its copy of the shared files wins."""
    if env.unpacked_last == distribution:
        return
    env.pip(
        "install",
        "-q",
        "--no-deps",
        "--force-reinstall",
        f"{distribution}=={version(distribution)}",
    )
    env.unpacked_last = distribution


@pytest.mark.parametrize("winner", ["opentelemetry-proto", "xds-protos"])
@pytest.mark.parametrize("protocol", [GRPC, HTTP])
def test_otlp_export_works_whichever_copy_pip_unpacked_last(
    venv: Venv, winner: str, protocol: str
) -> None:
    last(venv, winner)
    receiver = OtlpReceiver(protocol).start()
    try:
        result = venv.script(EXPORT, {**receiver.env, "OTEL_BSP_SCHEDULE_DELAY": "100"})
        spans = receiver.spans()
    finally:
        receiver.stop()
    assert [(s.service, s.name) for s in spans] == [("fresh-venv", "exported")]
    # The test makes the clash it claims to survive, and the fix stays out of the way otherwise.
    assert bool(result["overwritten"]) is (winner == "xds-protos")
    assert result["served"] is (winner == "xds-protos")


def test_an_installed_ext_authz_traces_its_checks_with_xds_protos_copies_on_disk(
    venv: Venv, tmp_path: Path
) -> None:
    last(venv, "xds-protos")
    receiver = OtlpReceiver(HTTP).start()
    http_port, check_port = free_port(), free_port()
    proc = stack.start(
        "authz",
        [
            str(venv.root / "bin" / "ext-authz"),
            *("--authz-host", "127.0.0.1", "--authz-port", str(free_port())),
            *("--authz-http-port", str(http_port), "--authz-http-check-port", str(check_port)),
        ],
        tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            **receiver.env,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            **POLICY_KEY_ENV,
            "SIDECAR_JWT_SECRET": "x" * 32,
        },
    )
    try:
        traceparent = f"00-{TRACE}-00f067aa0ba902b7-01"

        def checked() -> bool:
            if not proc.alive():
                raise AssertionError(f"ext-authz exited:\n{proc.output()}")
            return _get(f"http://127.0.0.1:{check_port}/orders/1", traceparent) is not None

        wait_until(checked, timeout=30, what="ext-authz to answer a check")
        spans = wait_until(
            lambda: [s for s in receiver.spans() if s.trace_id == TRACE],
            timeout=30,
            what="ext-authz's span in the receiver",
        )
        assert {s.service for s in spans} == {"ext-authz"}
        assert not [line for line in proc.output().splitlines() if not line.startswith("{")]
    finally:
        proc.stop()
        receiver.stop()


def _get(url: str, traceparent: str) -> int | None:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(url, headers={"traceparent": traceparent})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_sidecar_up_demo_runs_from_an_empty_directory(venv: Venv, tmp_path: Path) -> None:
    """The sample catalog ships in the package: `sidecar up --demo` needs no checkout."""
    empty = tmp_path / "empty"
    empty.mkdir()
    ports = [free_port() for _ in range(7)]
    argv = [
        str(venv.root / "bin" / "sidecar"),
        "up",
        "--demo",
        *("--listener-port", str(ports[0]), "--admin-port", str(ports[1])),
        *("--xds-port", str(ports[2]), "--xds-http-port", str(ports[3])),
        *("--authz-port", str(ports[4]), "--authz-http-port", str(ports[5])),
        *("--authz-http-check-port", str(ports[6])),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIDECAR_CATALOG")}
    proc = stack.start("up", ["env", "-C", str(empty), *argv], tmp_path, env=env)  # cwd: empty
    try:

        def banner() -> bool:
            if not proc.alive():
                raise AssertionError(f"sidecar up exited:\n{proc.output()}")
            return "curl" in proc.output()

        wait_until(banner, timeout=90, what="sidecar up's banner with a curl to try")
        assert "packaged sample catalog" in proc.output()
        assert not list(empty.iterdir())  # nothing written into the user's directory
    finally:
        proc.stop()
