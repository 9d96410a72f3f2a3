"""`sidecar status --history`: each endpoint's last health transitions, from Envoy's
health-check event log (`xds_server.health_events`), and where `sidecar up` keeps that log.

`sidecar up` owns a runtime directory (`runtime_dir`: `$XDG_RUNTIME_DIR/envoy-sidecar`, else
`<tmp>/envoy-sidecar-<uid>`, mode 0700, refused when someone else owns it or may write to it)
and, unless `--health-event-log` says otherwise, has Envoy log there (`default_log`); the file
outlives the run, so the history is still there after an incident. `sidecar status --history`
reads the same default.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar_shared.errors import SettingsError
from xds_server.health_events import Transition, history, read_tail

LOG_NAME = "health-events.log"
PER_ENDPOINT = 10


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "envoy-sidecar"
    return Path(tempfile.gettempdir()) / f"envoy-sidecar-{os.getuid()}"


def default_log(environ: Mapping[str, str] = os.environ) -> Path:
    return runtime_dir(environ) / LOG_NAME


def outlier_log(env: Mapping[str, str]) -> str:
    """The file `sidecar up` has Envoy log outlier ejections to: the health event log's own
    (Envoy shares one file between the two sinks), none when that is off."""
    path = env.get("SIDECAR_HEALTH_EVENT_LOG", "")
    return "" if path in ("", "off") else path


def make_runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The runtime directory, created if need be; raise SettingsError when it is not ours
    alone (another user could feed us a history)."""
    path = runtime_dir(environ)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as err:
        raise SettingsError(f"cannot make the runtime directory {path}: {err}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SettingsError(
            f"the runtime directory {path} is not a directory only its owner (uid "
            f"{os.getuid()}) may write to; remove it or set --health-event-log"
        )
    return path


def lines(path: Path, service: str | None, per_endpoint: int = PER_ENDPOINT) -> list[str]:
    """The history as `sidecar status --history` prints it; raise OSError when the log
    cannot be read."""
    found = history(read_tail(path), per_endpoint, service)
    shown = f"service {service}" if service else "every service"
    out = [f"health history of {shown} (last {per_endpoint} per endpoint) from {path}:"]
    if not found:
        out.append("  no transition logged yet")
    for (svc, cluster, endpoint), transitions in found.items():
        where = svc if cluster == svc else f"{svc} (cluster {cluster})"
        out.append(f"{where} {endpoint}")
        out.extend(_line(t) for t in transitions)
    return out


def as_json(path: Path, service: str | None, per_endpoint: int = PER_ENDPOINT) -> dict[str, Any]:
    """The history as `sidecar status --history --json` prints it (raise OSError as `lines`)."""
    found = history(read_tail(path), per_endpoint, service)
    return {
        "log": str(path),
        "endpoints": [
            {
                "service": svc,
                "cluster": cluster,
                "endpoint": endpoint,
                "transitions": [
                    {"at": t.at, "from": t.from_state, "to": t.to_state, "why": t.why}
                    for t in transitions
                ],
            }
            for (svc, cluster, endpoint), transitions in found.items()
        ],
    }


def _line(t: Transition) -> str:
    change = f"{t.from_state} → {t.to_state}"
    return f"  {t.at}  {change:<22} {t.why}"
