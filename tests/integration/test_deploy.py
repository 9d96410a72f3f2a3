"""The deployment files are wired to what the code does: no container engine runs here, so the
compose file, the Kubernetes example and the Prometheus files are checked against the Envoy
bootstrap, the settings' names and defaults, and by Prometheus' own promtool."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ext_authz.settings import build_parser as authz_parser
from sidecar import commands, deployfiles
from sidecar.bootstrap import BootstrapOptions, render, render_json
from sidecar_shared import defaults, supervise
from sidecar_shared.supervise import find_envoy
from tests.support import http as test_http
from tests.support.catalogs import ROOT
from tests.support.envoy import envoy_validate
from tests.support.ports import free_port
from tests.support.wait import wait_until
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


SERVERS = (
    ("xds-server", "SIDECAR_XDS_HOST", "SIDECAR_XDS_HTTP_HOST", "SIDECAR_XDS_HTTP_PORT"),
    ("ext-authz", "SIDECAR_AUTHZ_HOST", "SIDECAR_AUTHZ_HTTP_HOST", "SIDECAR_AUTHZ_HTTP_PORT"),
)


def test_compose_health_checks_probe_each_servers_readiness_on_loopback() -> None:
    services = compose()
    for name, _, ops_host, ops_port in SERVERS:
        env = services[name]["environment"]
        test = services[name]["healthcheck"]["test"]
        assert env[ops_host] == "127.0.0.1"
        assert test == ["CMD", "sidecar", "probe", f"http://127.0.0.1:{env[ops_port]}/ready"]


def test_compose_keeps_every_port_of_ours_and_envoys_admin_on_loopback() -> None:
    services = compose()
    # Envoy, the servers and Prometheus share one network namespace, whose owner publishes
    # only Envoy's listener and Prometheus.
    owner = "pod"
    for name in ("envoy", "xds-server", "ext-authz", "prometheus"):
        assert services[name]["network_mode"] == f"service:{owner}", name
        assert "ports" not in services[name], name
        assert owner in services[name]["depends_on"], name
    published = {p.split(":")[-1] for p in services[owner]["ports"]}
    assert published == {str(defaults.LISTENER_PORT), "9090"}
    for name, host, ops_host, _ in SERVERS:
        env = services[name]["environment"]
        assert env[host] == env[ops_host] == "127.0.0.1", name
    admin = json.loads(mounts(services["envoy"])["/etc/envoy/envoy.json"].read_text())["admin"]
    assert admin["address"]["socket_address"]["address"] == "127.0.0.1"


def test_compose_restarts_every_long_running_service() -> None:
    for name, service in compose().items():
        assert service.get("restart") in ("unless-stopped", "always"), name


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
    # Prometheus shares the servers' and Envoy's network namespace: it scrapes them on loopback.
    assert services["prometheus"]["network_mode"] == services["envoy"]["network_mode"]
    assert targets["xds-server"] == ("/metrics", [f"127.0.0.1:{xds_env['SIDECAR_XDS_HTTP_PORT']}"])
    assert xds_env["SIDECAR_XDS_HTTP_HOST"] == "127.0.0.1"
    assert targets["ext-authz"] == (
        "/metrics",
        [f"127.0.0.1:{authz_env['SIDECAR_AUTHZ_HTTP_PORT']}"],
    )
    assert authz_env["SIDECAR_AUTHZ_HTTP_HOST"] == "127.0.0.1"
    admin = render(deployfiles.COMPOSE)["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    assert targets["envoy"] == ("/stats/prometheus", [f"127.0.0.1:{admin['port_value']}"])
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
    # Prometheus runs in the `pod` service's network namespace: reached by that name.
    assert services["prometheus"]["network_mode"] == "service:pod"
    assert urlsplit(datasource["url"]).hostname == "pod"
    provider = yaml.safe_load(
        (grafana["/etc/grafana/provisioning"] / "dashboards" / "sidecar.yml").read_text()
    )["providers"][0]
    dashboards = grafana[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "sidecar.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Every panel uses the dashboard's datasource variable, which selects the default one here.
    assert datasource["isDefault"] is True
    assert all(t["datasource"]["uid"] == "${datasource}" for t in dashboard["panels"])
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


def pod_containers() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    (deployment,) = (d for d in kubernetes() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, {c["name"]: c for c in pod["containers"]}


def test_kubernetes_probes_exec_sidecar_probe_on_loopback_liveness_apart_from_readiness() -> None:
    _, containers = pod_containers()
    for name, host, _, ops_port in SERVERS:
        container = containers[name]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[host] == "127.0.0.1", f"{name}: its check/xDS port must stay on loopback"
        port = {"xds-server": defaults.XDS_HTTP_PORT, "ext-authz": defaults.AUTHZ_HTTP_PORT}[name]
        assert int(env.get(ops_port, port)) == port
        ready = f"http://127.0.0.1:{port}/ready"
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        # The kubelet's own grpc/httpGet/tcpSocket probes connect to the pod IP: exec only.
        assert set(readiness) - {"timeoutSeconds", "periodSeconds", "failureThreshold"} == {"exec"}
        assert set(liveness) - {"timeoutSeconds", "periodSeconds", "failureThreshold"} == {"exec"}
        assert readiness["exec"]["command"] == ["sidecar", "probe", ready]
        assert liveness["exec"]["command"] == ["sidecar", "probe", "--alive", ready]
        # An exec probe starts a Python process: more than the kubelet's default second.
        assert readiness["timeoutSeconds"] >= 5 and liveness["timeoutSeconds"] >= 5
    envoy = containers["envoy"]
    assert envoy["image"] == f"envoyproxy/envoy:v{envoy_version()}"


def _drain_time(command: list[str]) -> int:
    return int(command[command.index("--drain-time-s") + 1])


def test_kubernetes_envoy_drains_before_it_stops_and_ext_authz_outlives_the_drain() -> None:
    pod, containers = pod_containers()
    envoy = containers["envoy"]
    drain_s = _drain_time(envoy["command"])
    assert envoy["command"][envoy["command"].index("--drain-strategy") + 1] == "immediate"
    shell, flag, script = envoy["lifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag) == ("/bin/bash", "-c")
    assert f"/dev/tcp/127.0.0.1/{defaults.ENVOY_ADMIN_PORT}" in script
    assert "POST /drain_listeners?graceful " in script
    assert script.endswith(f"sleep {drain_s}")
    assert containers["ext-authz"]["lifecycle"]["preStop"]["exec"]["command"] == [
        "sleep",
        str(drain_s),
    ]
    assert pod["terminationGracePeriodSeconds"] > drain_s


def _answered_connection_header(port: int) -> str | None:
    """The `connection` header of Envoy's answer to a kept-alive HTTP/1.1 request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("connection")
    finally:
        conn.close()


def test_the_kubernetes_prestop_makes_a_real_envoy_drain(tmp_path: Path) -> None:
    """The preStop's script, run by bash against a real Envoy started with the pod's drain
    flags (its admin port put in, the final wait left out): Envoy then tells every client to
    close its connection after its request (`connection: close`), as a drain does."""
    _, containers = pod_containers()
    command = containers["envoy"]["command"]
    script = containers["envoy"]["lifecycle"]["preStop"]["exec"]["command"][2]
    drain, _, _ = script.rpartition(";")
    admin_port, listener_port = free_port(), free_port()
    bootstrap = render(BootstrapOptions(admin_port=admin_port))
    del bootstrap["dynamic_resources"]  # a static listener: no control plane needed
    bootstrap["static_resources"]["listeners"] = [_answering_listener(listener_port)]
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    start = command.index("--drain-strategy")
    drain_flags = command[start : start + 4]  # --drain-strategy X --drain-time-s Y
    assert drain_flags[2] == "--drain-time-s"
    envoy = supervise.spawn(
        [*commands.envoy(find_envoy(), path, "error"), *drain_flags], stdout=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: http_get_status(listener_port) == 200, timeout=20, what="Envoy's listener"
        )
        assert _answered_connection_header(listener_port) is None  # kept alive
        ran = subprocess.run(
            ["/bin/bash", "-c", drain.replace(f"/{defaults.ENVOY_ADMIN_PORT}", f"/{admin_port}")],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert _answered_connection_header(listener_port) == "close"
    finally:
        supervise.stop(envoy, signal.SIGTERM, 10)


def http_get_status(port: int) -> int | None:
    resp = test_http.try_get(f"http://127.0.0.1:{port}/")
    return resp.status if resp is not None else None


HCM = "envoy.filters.network.http_connection_manager"


def _answering_listener(port: int) -> dict[str, Any]:
    """A listener on 127.0.0.1:`port` that answers every request 200 itself."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "answer",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": "answer",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def test_kubernetes_envoy_bootstrap_is_the_shipped_one() -> None:
    config_maps = {d["metadata"]["name"]: d for d in kubernetes() if d["kind"] == "ConfigMap"}
    shipped = config_maps["sidecar-envoy-bootstrap"]["data"]["envoy.json"]
    assert shipped == render_json(deployfiles.KUBERNETES), REGENERATE


def test_compose_gives_both_servers_the_same_route_policy_key() -> None:
    services = compose()
    paths = {
        name: services[name]["environment"]["SIDECAR_POLICY_KEY_FILE"]
        for name in ("xds-server", "ext-authz")
    }
    assert set(paths.values()) == {"/run/secrets/policy_key"}, paths
    for name in paths:
        assert services[name]["secrets"] == ["policy_key"]
    secrets = yaml.safe_load(COMPOSE.read_text())["secrets"]
    assert secrets["policy_key"] == {"environment": "SIDECAR_POLICY_KEY"}


def test_kubernetes_gives_both_servers_the_same_route_policy_key() -> None:
    (deployment,) = (d for d in kubernetes() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = set()
    for name in ("xds-server", "ext-authz"):
        env = {e["name"]: e["value"] for e in containers[name]["env"]}
        key = Path(env["SIDECAR_POLICY_KEY_FILE"])
        (mount,) = (
            m for m in containers[name]["volumeMounts"] if Path(m["mountPath"]) == key.parent
        )
        secrets.add((volumes[mount["name"]]["secret"]["secretName"], key.name))
    assert secrets == {("sidecar-policy-key", "key")}


def test_kubernetes_manifest_passes_kubernetes_validate_strict() -> None:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    ran = subprocess.run(
        [str(tool), "--strict", "--kubernetes-version", "1.30.0", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "passed for resource deployment/app" in ran.stdout + ran.stderr


def test_kubernetes_pod_runs_nothing_as_root_and_nothing_writable_or_privileged() -> None:
    pod, containers = pod_containers()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for name, container in containers.items():
        context = container["securityContext"]
        assert context["runAsUser"] >= 10000, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name


def test_kubernetes_every_container_requests_cpu_and_memory_and_caps_memory() -> None:
    _, containers = pod_containers()
    for name, container in containers.items():
        resources = container["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}, name
        assert set(resources["limits"]) == {"memory"}, name
    # Envoy's overload manager sheds load before the kubelet's memory limit kills it.
    limit_mib = int(containers["envoy"]["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert deployfiles.KUBERNETES.max_heap_bytes < limit_mib * 1024 * 1024


def test_kubernetes_metrics_ports_are_named_and_the_listener_is_never_scraped() -> None:
    (deployment,) = (d for d in kubernetes() if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    # prometheus.io/scrape names one port at most: without one, every declared port is a
    # target, the listener included (scraped through ext_authz).
    assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})
    _, containers = pod_containers()
    metrics = {
        port["name"]: port["containerPort"]
        for container in containers.values()
        for port in container.get("ports", [])
        if port.get("name", "").endswith("-metrics")
    }
    assert metrics == {
        "envoy-metrics": deployfiles.KUBERNETES.stats_port,
        "xds-metrics": defaults.XDS_HTTP_PORT,
        "authz-metrics": defaults.AUTHZ_HTTP_PORT,
    }
    (policy,) = (d for d in kubernetes() if d["kind"] == "NetworkPolicy")
    open_to_all, from_monitoring = policy["spec"]["ingress"]
    assert open_to_all == {"ports": [{"port": 10000}]}
    assert {p["port"] for p in from_monitoring["ports"]} == set(metrics.values())


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' `keep` and `replace` relabelling (anchored regexes), enough for our job."""
    out = dict(labels)
    for rule in rules:
        value = ";".join(out.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            out[rule["target_label"]] = match.expand(
                rule.get("replacement", "$1").replace("$", "\\")
            )
    return out


def test_prometheus_kubernetes_job_scrapes_each_metrics_port_on_its_path_as_its_job() -> None:
    # Debian's promtool is built without Kubernetes discovery, so the job's relabelling is run
    # here on the labels Kubernetes discovery gives each container port of the pod.
    config = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    _, containers = pod_containers()
    targets = {}
    for container in containers.values():
        for port in container.get("ports", []):
            labels = {
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_phase": "Running",
                "__metrics_path__": "/metrics",
                "job": "sidecar",
            }
            kept = _relabel(job["relabel_configs"], labels)
            if kept is not None:
                targets[port["containerPort"]] = (kept["job"], kept["__metrics_path__"])
    assert targets == {
        deployfiles.KUBERNETES.stats_port: ("envoy", "/stats/prometheus"),
        defaults.XDS_HTTP_PORT: ("xds-server", "/metrics"),
        defaults.AUTHZ_HTTP_PORT: ("ext-authz", "/metrics"),
    }


def test_envoy_stats_listener_serves_prometheus_stats_and_nothing_else_of_the_admin(
    tmp_path: Path,
) -> None:
    admin_port, stats_port = free_port(), free_port()
    bootstrap = render(BootstrapOptions(admin_port=admin_port, stats_port=stats_port))
    del bootstrap["dynamic_resources"]  # no control plane needed for a static listener
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    validated = envoy_validate(path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    envoy = supervise.spawn(commands.envoy(find_envoy(), path, "error"), stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{stats_port}"
    try:
        wait_until(
            lambda: test_http.try_get(f"{base}/stats/prometheus") is not None,
            timeout=20,
            what="Envoy's stats listener",
        )
        stats = test_http.get(f"{base}/stats/prometheus")
        assert stats.status == 200
        assert b"envoy_server_live" in stats.body
        for path_ in ("/config_dump", "/clusters", "/stats", "/quitquitquit", "/drain_listeners"):
            assert test_http.get(f"{base}{path_}").status == 404, path_
        assert test_http.http("POST", f"{base}/quitquitquit").status == 404
        assert test_http.http("POST", f"{base}/stats/prometheus").status == 404
        assert test_http.get(f"{base}/stats/prometheus/../../config_dump").status == 404
        # Still running: nothing reached the admin's handlers.
        assert test_http.get(f"{base}/stats/prometheus").status == 200
    finally:
        supervise.stop(envoy, signal.SIGTERM, 10)
