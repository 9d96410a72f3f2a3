"""`xds-server`: run the control plane alone (for containers). The composition root's edge: a
setting that cannot work (`SettingsError`) is one line on stderr and exit 2; a port that cannot
be bound, exit 1."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from sidecar_shared.errors import SettingsError
from sidecar_shared.jsonlog import make_logger
from xds_server import app, settings
from xds_server.reload import Build


def main(argv: Sequence[str] | None = None, build: Build | None = None) -> int:
    try:
        conf = settings.parse(argv)
    except SettingsError as err:
        return _bad_setting(err)
    log = make_logger("xds_server", conf.log_level)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await app.run(conf, log, stop, build)

    try:
        asyncio.run(runner())
    except SettingsError as err:
        return _bad_setting(err)
    except OSError as err:
        log.error("cannot start", extra={"fields": {"error": str(err)}})
        return 1
    return 0


def _bad_setting(err: SettingsError) -> int:
    print(f"xds-server: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
