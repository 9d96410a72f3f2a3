"""An identity provider's key endpoints over https, as a test controls them: the OpenID
configuration and the JWKS, with a chosen `Cache-Control`; stopped and started again on the
same port to play an outage."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.keys import KeyPair
from tests.support.tls import ServerTls


class OidcServer:
    def __init__(self, tls: ServerTls, port: int, realm: str = "/realms/acme") -> None:
        self.tls = tls
        self.port = port
        self.issuer = f"https://127.0.0.1:{port}{realm}"
        self.config_path = f"{realm}/.well-known/openid-configuration"
        self.jwks_path = f"{realm}/protocol/openid-connect/certs"
        self.keys: list[KeyPair] = []
        self.cache_control = "max-age=300"
        self.jwks_requests = 0
        self.redirects: dict[str, str] = {}  # path → where a 302 sends the client
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _documents(self) -> dict[str, Any]:
        return {
            self.config_path: {
                "issuer": self.issuer,
                "jwks_uri": f"https://127.0.0.1:{self.port}{self.jwks_path}",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            },
            self.jwks_path: {"keys": [k.public_jwk for k in self.keys]},
        }

    def start(self) -> OidcServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in owner.redirects:
                    self.send_response(302)
                    self.send_header("location", owner.redirects[self.path])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                doc = owner._documents().get(self.path)
                if self.path == owner.jwks_path:
                    owner.jwks_requests += 1
                body = json.dumps(doc).encode()
                self.send_response(200 if doc is not None else 404)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", owner.cache_control)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
