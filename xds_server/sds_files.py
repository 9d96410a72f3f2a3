"""Writes the SDS files Envoy reads its certificates through (`resources.tls`): one small JSON
file per secret, naming PEM files by path. A file is written before any resource that refers
to it is served (the build step calls `SdsWriter` before the snapshot is swapped in), and by
rename, so Envoy never reads half of one. Files are named by what they hold, so a file is
never rewritten with other content, and several servers may share the directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from xds_server.resources.tls import sds_file


class SdsWriter:
    """Writes secrets' SDS files into `directory` (made, private to this user, if missing)."""

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory)
        self._written: dict[str, bytes] = {}

    def __call__(self, secrets: Mapping[str, secret_pb2.Secret]) -> None:
        """Raises OSError when the directory cannot be made or written, or belongs to another
        user (who could then point Envoy at their own certificate)."""
        if not secrets:
            return
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._dir.stat().st_uid != os.getuid():
            raise OSError(f"{self._dir}: belongs to another user; set --tls-sds-dir")
        for name, secret in secrets.items():
            content = sds_file(secret)
            path = self._dir / f"{name}.json"
            if self._written.get(name) == content and path.exists():
                continue
            temp = self._dir / f".{name}.json.tmp"
            temp.write_bytes(content)
            os.replace(temp, path)
            self._written[name] = content
