"""ext_authz behind an Envoy we do not configure: the catalog and the two Envoy configurations
of docs/standalone.md, taken from the page itself (so the page cannot drift from what works),
run with a real Envoy on both transports, ext_authz reading the policy file `sidecar policy
--file` compiles from that catalog, and no policy key at all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from sidecar import commands, policy_cmd
from sidecar.echo import EchoServer
from sidecar_shared import contract, supervise
from sidecar_shared.contract import POLICY_HEADER, RoutePolicy
from tests.support import http, policies, stack, tokens, wait
from tests.support.grpc_upstream import call as grpc_call
from tests.support.ports import free_port

DOC = Path(__file__).parents[2] / "docs" / "standalone.md"


def doc_block(language: str, first_line: str | None = None) -> str:
    """The first fenced block of `language` in the page (whose first line is `first_line`)."""
    for block in re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL):
        if first_line is None or block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"docs/standalone.md has no {language} block {first_line or ''}")


def documented_envoy(transport: str, ports: dict[int, int]) -> str:
    """The page's Envoy configuration for `transport`, its ports replaced by `ports`."""
    config = doc_block("yaml", f"# envoy-{transport}.yaml")
    assert set(map(int, re.findall(r"port_value: (\d+)", config))) <= set(ports)
    config = re.sub(r"port_value: (\d+)", lambda m: f"port_value: {ports[int(m[1])]}", config)
    return config.replace("address: 0.0.0.0", "address: 127.0.0.1")


# A gRPC service allowing each user one call a minute.
GRPC_SERVICE = {
    "service_name": "echo",
    "base_path": "/test.Echo",
    "internal_url": "http://127.0.0.1:8080",
    "rate_limit": {"requests_per_minute": 1},
}


@dataclass
class Standalone:
    url: str
    authz: stack.Authz
    app: EchoServer
    port: int


@pytest.fixture(params=["grpc", "http"])
def standalone(
    request: pytest.FixtureRequest, tmp_path: Path, echo: Callable[[str], EchoServer]
) -> Iterator[Standalone]:
    catalog = tmp_path / "service_catalog.json"
    data = json.loads(doc_block("json"))
    data["services"].append(GRPC_SERVICE)  # beside the page's: for gRPC callers' status codes
    catalog.write_text(json.dumps(data))
    compiled = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "--file", "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    policy_path = tmp_path / "policies.json"
    policy_path.write_text(compiled.stdout)
    authz = stack.start_authz(
        tmp_path,
        env={"SIDECAR_POLICY_KEY_FILE": "", "SIDECAR_POLICY_FILE": str(policy_path)},
    )
    app = echo("app")
    listener, admin = free_port(), free_port()
    ports = {10000: listener, 9901: admin, 8080: app.port, 9191: authz.port, 9193: authz.check_port}
    config = tmp_path / f"envoy-{request.param}.yaml"
    config.write_text(documented_envoy(request.param, ports))
    assert policy_cmd.check_envoy_config(_yaml(config)) == []
    proc = stack.start("envoy", commands.envoy(supervise.find_envoy(), config, "warning"), tmp_path)
    try:

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"envoy exited:\n{proc.output()}")
            resp = http.try_get(f"http://127.0.0.1:{admin}/ready")
            return resp is not None and resp.status == 200

        wait.wait_until(ready, what="the documented Envoy to be ready")
        yield Standalone(f"http://127.0.0.1:{listener}", authz, app, listener)
    finally:
        proc.stop()
        authz.proc.stop()


def _yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def test_a_token_is_allowed_with_identity_headers_upstream(standalone: Standalone) -> None:
    resp = http.get(
        standalone.url + "/orders/7",
        {**tokens.bearer(roles=["viewer"]), "x-user-id": "mallory", "x-tenant-upstream": "x"},
    )
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-roles"] == "viewer"
    assert "x-tenant-upstream" not in seen
    assert resp.headers["ratelimit-policy"] == '"orders";q=100;w=60'


def test_no_token_is_401_and_a_role_the_catalog_does_not_allow_is_403(
    standalone: Standalone,
) -> None:
    url = standalone.url + "/orders/7"
    missing = http.get(url)
    assert missing.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert http.http("POST", url, tokens.bearer(roles=["viewer"]), b"{}").status == 403
    assert http.get(url, tokens.bearer(roles=["guest"])).status == 403
    # A public service of the file needs no token; a path the file does not have is refused.
    assert http.get(standalone.url + "/status").status == 200
    assert http.get(standalone.url + "/other", tokens.bearer()).status == 403


def test_a_policy_a_client_sends_is_never_believed(standalone: Standalone) -> None:
    public = RoutePolicy(service="orders", public=True, rbac_required=False)
    # Unsigned, or signed with a key (ext_authz here has none): on gRPC the header is just a
    # header; on HTTP it is refused (403), never used.
    for forged in (contract.encode(public), policies.encode(public)):
        resp = http.get(standalone.url + "/orders/7", {POLICY_HEADER: forged})
        assert resp.status in (401, 403)
    assert http.get(standalone.url + "/orders/7", {POLICY_HEADER: ""}).status == 401


def test_denials_without_a_policy_are_logged_once_a_second_with_a_count(
    standalone: Standalone,
) -> None:
    url = standalone.url + "/nowhere"
    for _ in range(20):
        assert http.get(url).status == 403

    def counted() -> int | None:
        http.get(url)
        lines = [
            json.loads(line)
            for line in standalone.authz.proc.output().splitlines()
            if '"route policy unusable"' in line
        ]
        held = sum(line.get("held_back", 0) for line in lines)
        return len(lines) if held >= 15 else None

    logged = wait.wait_until(counted, timeout=30, what="a log line counting held-back denials")
    assert logged < 20


def test_the_service_of_a_grpc_route_is_named_in_its_context(tmp_path: Path) -> None:
    """`sidecar policy SERVICE` prints the setting the documented gRPC configuration uses."""
    catalog = tmp_path / "service_catalog.json"
    catalog.write_text(doc_block("json"))
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "orders", "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "SIDECAR_AUTHZ_TRANSPORT": "grpc"},
    )
    route = json.loads(out.stdout)["routes"][0]
    documented = doc_block("yaml", "# envoy-grpc.yaml")
    assert "context_extensions: {service: orders}" in documented
    config = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert config["check_settings"] == {"context_extensions": {"service": "orders"}}


def test_grpc_callers_get_the_status_code_of_each_denial(standalone: Standalone) -> None:
    def code(headers: dict[str, str] | None = None) -> grpc.StatusCode:
        try:
            grpc_call(standalone.port, b"x", metadata=list((headers or {}).items()))
        except grpc.RpcError as err:
            found: grpc.StatusCode = err.code()
            return found
        return grpc.StatusCode.OK

    assert code() == grpc.StatusCode.UNAUTHENTICATED
    assert code(tokens.bearer(roles=["viewer"])) == grpc.StatusCode.PERMISSION_DENIED
    admin = tokens.bearer(roles=["admin"])
    # The first call is allowed (the page's app is no gRPC server: whatever it answers).
    assert code(admin) != grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [code(admin), code(admin)] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


def test_a_per_route_http_service_without_server_uri_is_found_in_a_running_envoy(
    tmp_path: Path, echo: Callable[[str], EchoServer]
) -> None:
    """Envoy accepts the mistake and denies every request of the route without calling
    ext_authz; `sidecar policy --check-envoy` names it, from the running Envoy's config dump."""
    authz = stack.start_authz(tmp_path)
    listener, admin = free_port(), free_port()
    ports = {10000: listener, 9901: admin, 8080: echo("app").port, 9191: 0, 9193: authz.check_port}
    config = yaml.safe_load(documented_envoy("http", ports))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["typed_per_filter_config"] = {
        "envoy.filters.http.ext_authz": {
            "@type": policy_cmd.PER_ROUTE_TYPE,
            "check_settings": {"http_service": {"path_prefix": "/sidecar-check"}},
        }
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    proc = stack.start("envoy", commands.envoy(supervise.find_envoy(), path, "warning"), tmp_path)
    with stack.stopping(proc, authz.proc):
        wait.wait_until(
            lambda: (
                (r := http.try_get(f"http://127.0.0.1:{admin}/ready")) is not None
                and r.status == 200
            ),
            what="Envoy ready",
        )
        # The filter's status_on_error (503 in the page's configuration; 403 without it).
        assert http.get(f"http://127.0.0.1:{listener}/orders/1", tokens.bearer()).status == 503
        assert authz.audit_lines() == []  # ext_authz never heard of it
        checked = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "policy",
                "--check-envoy",
                f"http://127.0.0.1:{admin}/config_dump",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert "check_settings.http_service: no server_uri" in checked.stdout
        assert policy_cmd.check_envoy_config(json.loads(path.read_text())) != []
