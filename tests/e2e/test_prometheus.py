"""A real Prometheus scrapes the running stack: every target is up, the metric names the alerts
and the dashboard use exist, and the alert rules load."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.support import http, ports, stack, tokens, wait
from tests.support.catalogs import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sidecar.json"


def used_metric_names() -> set[str]:
    """Metric names in the alert rules and the dashboard's queries."""
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names: set[str] = set()
    for expr in exprs:
        bare = re.sub(r"\{[^}]*\}|\b(?:by|without) \([^)]*\)", "", expr)  # labels are not names
        names.update(re.findall(r"\b((?:ext_authz|xds|envoy)_[a-z0-9_]+)", bare))
    return names


def test_prometheus_scrapes_every_target_and_finds_the_metrics_we_alert_on(
    envoy: stack.Envoy, xds: stack.XdsServer, authz: stack.Authz, tmp_path: Path
) -> None:
    wait.wait_until(
        lambda: (r := http.try_get(envoy.url + "/orders/1", tokens.bearer())) and r.status == 200,
        what="traffic through Envoy",
    )
    http.get(envoy.url + "/orders/1")  # a denial too
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "xds-server",
                "static_configs": [{"targets": [f"127.0.0.1:{xds.http_port}"]}],
            },
            {
                "job_name": "ext-authz",
                "static_configs": [{"targets": [f"127.0.0.1:{authz.http_port}"]}],
            },
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{envoy.admin_port}"]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = ports.free_port()
    prometheus = stack.start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(promql: str) -> Any:
        resp = http.try_get(f"{api}/query?query={urllib.parse.quote(promql)}")
        return resp.json()["data"]["result"] if resp and resp.status == 200 else None

    with stack.stopping(prometheus):
        up = wait.wait_until(
            lambda: (r := query("up == 1")) and len(r) == 3 and r,
            timeout=30,
            what="all three targets up",
        )
        assert {s["metric"]["job"] for s in up} == {"xds-server", "ext-authz", "envoy"}

        def absent() -> set[str]:
            present = set(http.get(f"{api}/label/__name__/values").json()["data"])
            return {
                n
                for n in used_metric_names()
                if n not in present and not any(p.startswith(n + "_") for p in present)
            }

        # Counters that only exist once something happened (NACKs, refused streams) may be
        # absent; everything an operator needs on a healthy stack must be there.
        allowed_absent = {"xds_nacks_total", "xds_refused_streams_total"}
        try:
            wait.wait_until(lambda: absent() <= allowed_absent, timeout=30, what="names")
        except AssertionError:
            raise AssertionError(f"never scraped: {sorted(absent() - allowed_absent)}") from None
        assert absent() <= allowed_absent, sorted(absent())
        rules = http.get(f"{api}/rules").json()["data"]["groups"]
        (group,) = rules
        assert len(group["rules"]) == 7
        assert all(r["health"] == "ok" for r in group["rules"])
