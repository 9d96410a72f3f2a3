"""`xds-server`: run the control plane alone (for containers)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from sidecar_shared.jsonlog import make_logger
from xds_server import app, settings
from xds_server.reload import Build


def main(argv: Sequence[str] | None = None, build: Build | None = None) -> int:
    conf = settings.parse(argv)
    log = make_logger("xds_server", conf.log_level)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await app.run(conf, log, stop, build)

    try:
        asyncio.run(runner())
    except OSError as err:
        log.error("cannot start", extra={"fields": {"error": str(err)}})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
