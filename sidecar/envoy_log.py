"""`sidecar up`'s copy of Envoy's own log (its stderr): every line as Envoy wrote it, except
Envoy's warnings that the `cache_v2` filter is work in progress. Envoy 1.40 prints that warning
twice at every start of a catalog with a cacheable service; the xDS server has already said
once, in a user's words, what it means (xds_server.wip_notice). Any other line, warnings about
other work-in-progress features included, passes unchanged.

One pipe for the life of `sidecar up`: Envoy restarted by the supervisor writes to it too.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO


def dropped(line: bytes) -> bool:
    """Envoy's "... cache_v2 ... marked as work-in-progress ..." warning line."""
    return b"marked as work-in-progress" in line and b".cache_v2." in line


class EnvoyLogFilter:
    """Give `fd` to Envoy as its stderr; a thread copies what arrives to `sink`, line by line,
    without the lines `dropped` names. `close` after Envoy has stopped."""

    def __init__(self, sink: BinaryIO) -> None:
        read_fd, self.fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._sink = sink
        self._thread = threading.Thread(target=self._copy, name="envoy-log", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        for line in self._reader:
            if not dropped(line):
                self._sink.write(line)
                self._sink.flush()

    def close(self) -> None:
        """Close our end; the copy ends once every Envoy holding the pipe has exited."""
        os.close(self.fd)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._reader.close()
