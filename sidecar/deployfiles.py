"""Regenerates the Envoy bootstraps shipped with the repository from `sidecar.bootstrap`:
`envoy/sidecar.json` (Envoy beside our servers on loopback), `envoy/compose.json` (docker-compose,
in the network namespace it shares with the servers) and the bootstrap ConfigMap in
`deploy/kubernetes/sidecar.yaml`.

    python -m sidecar.deployfiles      (tests fail until the shipped files match)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sidecar.bootstrap import BootstrapOptions, render_json

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = BootstrapOptions()
# Compose runs Envoy and the servers in one network namespace (docker-compose.yml, `pod`), as a
# Kubernetes pod does: everything on loopback, admin included.
COMPOSE = BootstrapOptions()
# Kubernetes: Envoy's stats on a port of their own for the cluster's Prometheus (the admin stays
# on loopback), and the overload manager's heap cap under the container's memory limit (512 MiB
# in deploy/kubernetes/sidecar.yaml), so that Envoy sheds load before the kubelet kills it.
KUBERNETES = BootstrapOptions(stats_port=9902, max_heap_bytes=384 * 1024 * 1024)
_CONFIGMAP = re.compile(r"(  envoy\.json: \|\n)(?:    .*\n|\n)*?(?=---\n)")


def kubernetes_yaml(current: str, bootstrap: str) -> str:
    """`current` with the bootstrap ConfigMap's `envoy.json` replaced by `bootstrap`."""
    body = "".join(f"    {line}\n" if line else "\n" for line in bootstrap.splitlines())
    replaced, count = _CONFIGMAP.subn(lambda m: m.group(1) + body, current)
    if count != 1:
        raise ValueError("no bootstrap ConfigMap (`envoy.json: |` before `---`) found")
    return replaced


def main() -> int:
    (ROOT / "envoy" / "sidecar.json").write_text(render_json(SIDECAR))
    (ROOT / "envoy" / "compose.json").write_text(render_json(COMPOSE))
    k8s = ROOT / "deploy" / "kubernetes" / "sidecar.yaml"
    k8s.write_text(kubernetes_yaml(k8s.read_text(), render_json(KUBERNETES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
