"""The Grafana dashboard imports anywhere (a datasource variable and `__inputs`, no panel bound
to one datasource), every query parses (promtool), and every metric it names is one that the
running xDS server, ext_authz or Envoy exports. Both servers serve OpenMetrics when asked, with
process metrics and without `_created` series."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support import http, stack, tokens, wait
from tests.support.catalogs import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sidecar.json"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
VARIABLE = "${datasource}"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_info")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # matchers, ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
    return {n for n in names if n.lower() not in KEYWORDS}


def test_the_dashboard_imports_anywhere() -> None:
    board = dashboard()
    (source,) = board["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    assert "uid" not in json.dumps(board["__inputs"])
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": VARIABLE}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": VARIABLE}


def test_every_query_parses(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(queries())
                ],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_name_extraction_finds_names_and_nothing_else() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, type) (rate(a_bucket{x="b"}[5m]))) / on(i) b'
    assert metric_names(expr) == {"a_bucket", "b"}


def scrape(url: str, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def names_in(text: str) -> set[str]:
    """Every family (from # TYPE lines) and sample name in an exposition."""
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    return {f + s for f in families for s in SUFFIXES} | samples


def test_every_query_names_a_metric_the_stack_exports(
    envoy: stack.Envoy, xds: stack.XdsServer, authz: stack.Authz
) -> None:
    wait.wait_until(
        lambda: (r := http.try_get(envoy.url + "/orders/1", tokens.bearer())) and r.status == 200,
        what="traffic through Envoy",
    )
    exported: set[str] = set()
    for port in (xds.http_port, authz.http_port):
        ctype, text = scrape(f"http://127.0.0.1:{port}/metrics", OPENMETRICS)
        assert ctype.startswith("application/openmetrics-text"), port
        assert text.endswith("# EOF\n")
        assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
        assert "_created" not in text
        plain_type, _ = scrape(f"http://127.0.0.1:{port}/metrics", "*/*")
        assert plain_type.startswith("text/plain; version=0.0.4")
        exported |= names_in(text)
    _, envoy_text = scrape(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", "*/*")
    exported |= names_in(envoy_text)
    used = set().union(*(metric_names(e) for e in queries()))
    assert used, "no metric names found in the dashboard"
    assert used <= exported, sorted(used - exported)
