"""`ext-authz`: the authorization server alone (for containers)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from ext_authz import app, settings
from ext_authz.keys import KeyConfigError
from ext_authz.ratelimit import BackendConfigError
from sidecar_shared.errors import SettingsError
from sidecar_shared.jsonlog import make_logger


def main(argv: Sequence[str] | None = None) -> int:
    log = make_logger("ext_authz")
    try:
        conf = settings.parse(argv)
    except SettingsError as err:
        return _cannot_start(log, err)
    log.setLevel(conf.log_level.upper())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        app.run(conf, log, stop)
    except (KeyConfigError, BackendConfigError, SettingsError, OSError) as err:
        return _cannot_start(log, err)
    return 0


def _cannot_start(log: logging.Logger, err: Exception) -> int:
    log.error("cannot start", extra={"fields": {"error": str(err)}})
    print(f"ext-authz: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
