"""Echo upstreams for the demo and the tests: each answers any request with a JSON body that
shows what reached it (service, method, path, headers, body size).

`python -m sidecar.echo NAME=HOST:PORT ...` runs one per argument until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        super().__init__((host, port), _EchoHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> EchoServer:
        # A short poll interval makes stop() quick.
        threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"echo-{self.name}", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = json.dumps(
            {
                "service": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            },
            indent=2,
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m sidecar.echo NAME=HOST:PORT ...", file=sys.stderr)
        return 2
    servers = []
    for spec in args:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        servers.append(EchoServer(name, host or "127.0.0.1", int(port)).start())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    for s in servers:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
