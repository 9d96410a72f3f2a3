"""`ext-authz`: the authorization server alone (for containers)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from ext_authz import app, settings
from ext_authz.tokens import KeyConfigError
from sidecar.jsonlog import make_logger


def main(argv: Sequence[str] | None = None) -> int:
    log = make_logger("ext_authz")
    try:
        conf = settings.parse(argv)
    except KeyConfigError as err:
        log.error("cannot start", extra={"fields": {"error": str(err)}})
        print(f"ext-authz: {err}", file=sys.stderr)
        return 1
    log.setLevel(conf.log_level.upper())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        app.run(conf, log, stop)
    except (KeyConfigError, OSError) as err:
        log.error("cannot start", extra={"fields": {"error": str(err)}})
        print(f"ext-authz: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
