"""Fixtures every tier may use, and the tier markers: a test is `unit` (no sockets),
`integration` (Redis, the Envoy binary, subprocesses) or `e2e` (a whole stack) by the folder it
lives in, so `./dev test -m unit` runs in seconds."""

from __future__ import annotations

import fcntl
import os

# Tests start gRPC servers in this process (an OTLP receiver, say) and fork children; gRPC's
# fork handlers then break the child between fork and exec. Children never use our gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.echo import EchoServer
from sidecar_shared import defaults
from tests.support import ports, stack
from tests.support.catalogs import write_sample_catalog

TIERS = ("unit", "integration", "e2e")


@pytest.fixture(autouse=True, scope="session")
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The servers tests start keep their state (the xDS server's `--state-dir` default under
    `XDG_STATE_HOME`, `sidecar up`'s health event log under `XDG_RUNTIME_DIR`) in the session's
    temporary directory, not the user's (each pytest-xdist worker has its own)."""
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "XDG_RUNTIME_DIR")}
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    yield
    for name, before in saved.items():
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# Test files that run `sidecar up`: its demo binds the sample catalog's fixed upstream ports, so
# under pytest-xdist (`./dev test`) their tests take a lock shared by the workers.
SIDECAR_UP_FILES = ("test_up.py", "test_up_", "test_install.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((t for t in TIERS if t in item.path.parts), None)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)


@pytest.fixture(autouse=True)
def _one_sidecar_up_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test of a file that runs `sidecar up` holds a lock every pytest-xdist worker of this
    run shares (a file in the run's temporary root), so no two bind the demo's ports at once."""
    if not request.node.path.name.startswith(SIDECAR_UP_FILES):
        yield
        return
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp is popen-gwN under the run's
    with open(root / "sidecar-up.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def echo() -> Iterator[Callable[[str], EchoServer]]:
    """Start echo upstreams on ports from the OS; all are stopped after the test."""
    servers: list[EchoServer] = []

    def make(name: str) -> EchoServer:
        server = EchoServer(name, port=ports.free_port()).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def sample_catalog(tmp_path: Path, echo: Callable[[str], EchoServer]) -> Path:
    """The sample catalog, every service pointing at its own echo upstream(s)."""
    return write_sample_catalog(tmp_path, echo)


@pytest.fixture
def transport() -> str:
    """How Envoy calls ext_authz in this test (the default; the decision suites parametrize
    it over both: `pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)`)."""
    return defaults.AUTHZ_TRANSPORT


@pytest.fixture
def xds(sample_catalog: Path, tmp_path: Path, transport: str) -> Iterator[stack.XdsServer]:
    server = stack.start_xds(
        sample_catalog, tmp_path, transport=transport, args=stack.VETO_UNAUTHENTICATED
    )
    yield server
    server.proc.stop()


@pytest.fixture
def authz(tmp_path: Path) -> Iterator[stack.Authz]:
    server = stack.start_authz(tmp_path)
    yield server
    server.proc.stop()


@pytest.fixture
def protocol() -> str:
    """The xDS protocol the `envoy` fixture speaks; a test parametrizes it with
    `stack.PROTOCOLS` to run with each."""
    return "sotw"


@pytest.fixture
def envoy(
    xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path, protocol: str
) -> Iterator[stack.Envoy]:
    proxy = stack.start_envoy(xds, tmp_path, authz=authz, delta=protocol == "delta")
    yield proxy
    proxy.proc.stop()
