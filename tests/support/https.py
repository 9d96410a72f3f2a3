"""HTTPS for tests of Envoy's TLS: a client that reports the certificate it was shown, an HTTP/2
request over TLS (the `h2` package), an upstream that speaks HTTPS and may require a client
certificate, and file rotation by rename (what Envoy watches for)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from tests.support.mtls import Issued


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    peer_cert: bytes  # the DER certificate the server presented
    alpn: str | None


def client_context(
    ca: Path, client: Issued | None = None, alpn: tuple[str, ...] = ("http/1.1",)
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(list(alpn))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def connect(port: int, context: ssl.SSLContext, timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:`port`, SNI localhost; raises ssl.SSLError (or OSError)
    when the handshake fails."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def https_get(
    port: int,
    path: str,
    ca: Path,
    headers: Mapping[str, str] | None = None,
    client: Issued | None = None,
) -> Answer:
    """GET over HTTP/1.1 and TLS, one connection."""
    tls = connect(port, client_context(ca, client))
    conn = http.client.HTTPConnection("localhost", port, timeout=10)
    conn.sock = tls
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        cert = tls.getpeercert(binary_form=True) or b""
        return Answer(resp.status, body, cert, tls.selected_alpn_protocol())
    finally:
        conn.close()


def presented_cert(port: int, ca: Path) -> bytes | None:
    """The certificate a new handshake is shown (None: the handshake failed)."""
    try:
        with connect(port, client_context(ca)) as tls:
            return tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return None


def h2_get(port: int, path: str, ca: Path, headers: Mapping[str, str] | None = None) -> Answer:
    """GET over HTTP/2 (ALPN h2) and TLS, one connection."""
    tls = connect(port, client_context(ca, alpn=("h2",)))
    try:
        alpn = tls.selected_alpn_protocol()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        request = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "https"),
            (":authority", f"localhost:{port}"),
            *((k.lower(), v) for k, v in (headers or {}).items()),
        ]
        conn.send_headers(1, request, end_stream=True)
        tls.sendall(conn.data_to_send())
        status, body, done = 0, b"", False
        while not done:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
            tls.sendall(conn.data_to_send())
        return Answer(status, body, tls.getpeercert(binary_form=True) or b"", alpn)
    finally:
        tls.close()


def replace_by_rename(source: Path, target: Path) -> None:
    """Put `source`'s content at `target` the way Envoy sees it: written beside it, then
    renamed into place."""
    temp = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, temp)
    os.replace(temp, target)


class _Handler(BaseHTTPRequestHandler):
    server: TlsUpstream

    def do_GET(self) -> None:
        cert = self.connection.getpeercert()
        subject = dict(x[0] for x in cert.get("subject", ())) if cert else {}
        body = f"tls upstream; client {subject.get('commonName', '-')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class TlsUpstream(ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 with `server`'s certificate; with `client_ca`, it
    requires a client certificate that CA signed (ssl.CERT_REQUIRED)."""

    daemon_threads = True

    def __init__(self, server: Issued, client_ca: Path | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server.cert_file, server.key_file)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(client_ca))
        self._context = context
        self.handshake_errors = 0

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), (
            address
        )

    def finish_request(self, request: object, client_address: object) -> None:
        assert isinstance(request, ssl.SSLSocket)
        try:
            request.settimeout(10)
            request.do_handshake()
        except (ssl.SSLError, OSError):
            self.handshake_errors += 1
            return
        super().finish_request(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextmanager
def tls_upstream(server: Issued, client_ca: Path | None) -> Iterator[TlsUpstream]:
    upstream = TlsUpstream(server, client_ca)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(timeout=10)
