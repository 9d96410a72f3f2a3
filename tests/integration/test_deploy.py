"""The deployment files are wired to what the code does: no container engine runs here, so the
compose file, the Kubernetes example and the Prometheus files are checked against the Envoy
bootstrap, the settings' names and defaults, and by Prometheus' own promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ext_authz.settings import build_parser as authz_parser
from sidecar import deployfiles
from sidecar.bootstrap import BootstrapOptions, render, render_json
from sidecar_shared import defaults
from sidecar_shared.contract import AUTHZ_HEALTH_SERVICE, XDS_HEALTH_SERVICE
from sidecar_shared.supervise import find_envoy
from tests.support.catalogs import ROOT
from xds_server.catalog import load_catalog, parse_catalog
from xds_server.settings import build_parser as xds_parser

COMPOSE = ROOT / "docker-compose.yml"
REGENERATE = "regenerate the shipped bootstraps: python -m sidecar.deployfiles"
PROMETHEUS = ROOT / "deploy" / "prometheus"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "sidecar.yaml"


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path → host path (relative to the repository)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        out[container] = ROOT / host
    return out


def envoy_version() -> str:
    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout)
    assert found, out.stdout
    return found.group(1)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_compose_runs_the_envoy_we_test_with_on_the_bootstrap_we_render() -> None:
    services = compose()
    envoy = services["envoy"]
    assert envoy["image"] == f"envoyproxy/envoy:v{envoy_version()}"
    bootstrap = mounts(envoy)["/etc/envoy/envoy.json"]
    assert envoy["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.json"]
    expected = deployfiles.COMPOSE
    assert bootstrap.read_text() == render_json(expected), REGENERATE
    # Envoy reaches each server where it listens.
    xds_env, authz_env = services["xds-server"]["environment"], services["ext-authz"]["environment"]
    assert int(xds_env["SIDECAR_XDS_PORT"]) == expected.xds_port == defaults.XDS_PORT
    assert int(authz_env["SIDECAR_AUTHZ_PORT"]) == expected.authz_port == defaults.AUTHZ_PORT
    check_port = int(authz_env["SIDECAR_AUTHZ_HTTP_CHECK_PORT"])
    assert check_port == expected.authz_http_check_port == defaults.AUTHZ_HTTP_CHECK_PORT
    assert {"xds-server", "ext-authz"} <= set(envoy["depends_on"])


def test_every_variable_compose_sets_is_a_setting_of_its_server() -> None:
    for name, parser in (("xds-server", xds_parser({})), ("ext-authz", authz_parser({}))):
        flags = {o for action in parser._actions for o in action.option_strings}
        for variable in compose()[name]["environment"]:
            if variable.startswith("SIDECAR_"):
                flag = "--" + variable.removeprefix("SIDECAR_").lower().replace("_", "-")
                assert flag in flags, f"{name}: {variable} is no setting of {name}"


def test_compose_health_checks_probe_each_servers_grpc_port() -> None:
    services = compose()
    for name, port_var in (("xds-server", "SIDECAR_XDS_PORT"), ("ext-authz", "SIDECAR_AUTHZ_PORT")):
        test = services[name]["healthcheck"]["test"]
        port = services[name]["environment"][port_var]
        assert test == ["CMD", "sidecar", "probe", f"127.0.0.1:{port}"]


def test_compose_catalog_names_only_hosts_of_the_compose_network() -> None:
    services = compose()
    catalog_dir = mounts(services["xds-server"])["/etc/sidecar"]
    path = services["xds-server"]["environment"]["SIDECAR_CATALOG"]
    catalog = load_catalog(catalog_dir / Path(path).name)
    served = {
        int(spec.rsplit(":", 1)[1]) for spec in services["demo-upstream"]["command"] if "=" in spec
    }
    for svc in catalog.services:
        for upstream in svc.upstreams:
            assert upstream.host in services, f"{svc.service_name}: {upstream.host}"
            assert upstream.port in served, (
                f"{svc.service_name}: nothing listens on {upstream.port}"
            )
    redis = urlsplit(services["ext-authz"]["environment"]["SIDECAR_REDIS_URL"])
    assert redis.hostname in services
    for name in ("xds-server", "ext-authz"):
        otlp = urlsplit(services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.hostname in services


def test_prometheus_scrapes_each_ops_port_and_runs_the_version_promtool_checks() -> None:
    services = compose()
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"])
        for job in config["scrape_configs"]
    }
    xds_env, authz_env = services["xds-server"]["environment"], services["ext-authz"]["environment"]
    assert targets["xds-server"] == ("/metrics", [f"xds-server:{xds_env['SIDECAR_XDS_HTTP_PORT']}"])
    assert xds_env["SIDECAR_XDS_HTTP_HOST"] == "0.0.0.0"
    assert targets["ext-authz"] == (
        "/metrics",
        [f"ext-authz:{authz_env['SIDECAR_AUTHZ_HTTP_PORT']}"],
    )
    assert authz_env["SIDECAR_AUTHZ_HTTP_HOST"] == "0.0.0.0"
    admin = render(BootstrapOptions(admin_address="0.0.0.0"))["admin"]["address"]["socket_address"]
    assert targets["envoy"] == ("/stats/prometheus", [f"envoy:{admin['port_value']}"])
    version = re.search(r"version (\d+\.\d+\.\d+)", promtool("--version").stdout)
    assert version is not None
    assert services["prometheus"]["image"] == f"prom/prometheus:v{version.group(1)}"
    assert mounts(services["prometheus"])["/etc/prometheus"] == PROMETHEUS


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["config", "rules", "rule-tests"],
)
def test_promtool_accepts_the_prometheus_files(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = compose()
    grafana = mounts(services["grafana"])
    datasource = yaml.safe_load(
        (grafana["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    provider = yaml.safe_load(
        (grafana["/etc/grafana/provisioning"] / "dashboards" / "sidecar.yml").read_text()
    )["providers"][0]
    dashboards = grafana[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "sidecar.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(t["datasource"]["uid"] == datasource["uid"] for t in dashboard["panels"])
    for wanted in ("ext_authz_checks_total", "xds_nacks_total", "xds_proxies", "envoy_http"):
        assert any(wanted in e for e in exprs), wanted


def kubernetes() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def test_kubernetes_mounts_the_catalog_as_a_directory_so_configmap_swaps_reload() -> None:
    docs = kubernetes()
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    xds = containers["xds-server"]
    env = {e["name"]: e["value"] for e in xds["env"]}
    catalog_path = Path(env["SIDECAR_CATALOG"])
    (mount,) = (m for m in xds["volumeMounts"] if Path(m["mountPath"]) == catalog_path.parent)
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap's updates"
    config_map = config_maps[volumes[mount["name"]]["configMap"]["name"]]
    parse_catalog(json.loads(config_map["data"][catalog_path.name]))


def test_kubernetes_probes_use_native_grpc_health_on_each_servers_port() -> None:
    (deployment,) = (d for d in kubernetes() if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    for name, port, service in (
        ("xds-server", defaults.XDS_PORT, XDS_HEALTH_SERVICE),
        ("ext-authz", defaults.AUTHZ_PORT, AUTHZ_HEALTH_SERVICE),
    ):
        container = containers[name]
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": service}
    envoy = containers["envoy"]
    assert envoy["image"] == f"envoyproxy/envoy:v{envoy_version()}"


def test_kubernetes_envoy_bootstrap_is_the_shipped_one() -> None:
    config_maps = {d["metadata"]["name"]: d for d in kubernetes() if d["kind"] == "ConfigMap"}
    shipped = config_maps["sidecar-envoy-bootstrap"]["data"]["envoy.json"]
    assert shipped == render_json(deployfiles.SIDECAR), REGENERATE
