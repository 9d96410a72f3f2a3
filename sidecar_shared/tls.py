"""TLS for our servers' ports: the files a server is given, its gRPC credentials and its
`ssl.SSLContext`, both re-reading the files when they change, and the warning for a port that
anyone on the network may reach.

A server with a certificate and key speaks TLS; with a client CA too, it requires every peer to
present a certificate that CA signed (mTLS), and refuses the handshake otherwise: no stream is
opened and no check is answered. Rotation: each new connection's handshake uses the files as
they are on disk then (checked at most once a second, by modification time and size);
connections already open keep the certificate they were made with.
"""

from __future__ import annotations

import argparse
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag

# How often, at most, a handshake looks at the files' modification times.
RECHECK_S = 1.0

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and key (PEM), and the CA its clients' certificates must
    chain to (None: clients are not asked for one)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def authenticates_clients(self) -> bool:
        return self.client_ca is not None


def server_tls(
    flag_prefix: str, cert: str | None, key: str | None, client_ca: str | None
) -> ServerTls | None:
    """The TLS settings from `--<prefix>-tls-cert/-key/-client-ca` (None: plain text). Raises
    SettingsError when they do not go together; the files are read when the server starts."""
    if not cert and not key and not client_ca:
        return None
    if not cert or not key:
        raise SettingsError(
            f"--{flag_prefix}-tls-cert and --{flag_prefix}-tls-key go together"
            + (f" (--{flag_prefix}-tls-client-ca needs both)" if client_ca else "")
        )
    return ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca else None)


def add_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], prefix: str, ports: str
) -> None:
    """`--<prefix>-tls-cert`, `--<prefix>-tls-key`, `--<prefix>-tls-client-ca` (and their
    `SIDECAR_*` variables) for the server whose `ports` they secure. The prefix keeps the two
    servers' settings apart where one command takes both (`sidecar up`)."""
    for name, help in (
        ("cert", f"PEM certificate chain for {ports}: they speak TLS (with --{prefix}-tls-key)"),
        ("key", f"PEM private key of --{prefix}-tls-cert"),
        (
            "client-ca",
            f"PEM CA bundle: {ports} then require a client certificate it signed (mTLS)",
        ),
    ):
        add_flag(parser, f"{prefix}-tls-{name}", default=None, help=help, environ=environ)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name a server binds) is reachable from this host only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(
    port_name: str,
    host: str,
    port: int,
    tls: ServerTls | None,
    risk: str,
    client_ca_flag: str | None = None,
) -> str | None:
    """The warning a server logs at start when `port_name`, bound on `host:port`, can be
    reached from other hosts by a peer without a client certificate (`risk`: what such a peer
    can do); None when it cannot. `client_ca_flag`: the setting that would require one."""
    if is_loopback(host) or (tls is not None and tls.authenticates_clients):
        return None
    remedy = "bind 127.0.0.1" + (f" or set {client_ca_flag} (mTLS)" if client_ca_flag else "")
    return (
        f"{port_name} listens on {host}:{port}, which other hosts can reach, and authenticates "
        f"no peer: anyone who reaches it can {risk}. Unless the network lets only Envoy in, "
        f"{remedy}."
    )


def describe(tls: ServerTls | None) -> str:
    """What a start-up log line says of a port's TLS: off, tls or mtls."""
    if tls is None:
        return "off"
    return "mtls" if tls.authenticates_clients else "tls"


class _Files:
    """The files' contents, read again when their modification time or size changed."""

    def __init__(self, tls: ServerTls, clock: Callable[[], float] = time.monotonic) -> None:
        self._tls = tls
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int], ...] = self._stat()
        self._checked = clock()

    def _paths(self) -> tuple[Path, ...]:
        return (self._tls.cert, self._tls.key, *filter(None, (self._tls.client_ca,)))

    def _stat(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths():
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def changed(self) -> bool:
        """Whether the files changed since the last call that said so (at most one stat per
        RECHECK_S)."""
        with self._lock:
            now = self._clock()
            if now - self._checked < RECHECK_S:
                return False
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            return True

    def forget(self) -> None:
        """Make the next check after RECHECK_S report a change (a read that failed)."""
        with self._lock:
            self._stamp = ()

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        ca = self._tls.client_ca.read_bytes() if self._tls.client_ca else None
        return self._tls.cert.read_bytes(), self._tls.key.read_bytes(), ca


def grpc_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Server credentials whose certificate, key and client CA are re-read for a new
    connection when the files changed. A change that cannot be read (a half-written file)
    keeps the previous configuration and is tried again on the next handshake."""
    files = _Files(tls)
    cert, key, ca = files.read()

    def configuration(
        cert: bytes, key: bytes, ca: bytes | None
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not files.changed():
            return None
        try:
            return configuration(*files.read())
        except OSError:
            files.forget()
            return None

    return grpc.dynamic_ssl_server_credentials(
        configuration(cert, key, ca), fetch, require_client_authentication=ca is not None
    )


class ReloadingContext:
    """An `ssl.SSLContext` for a server, whose certificate and key are loaded again by
    `refresh()` when the files changed (call it as a connection is accepted, before its
    handshake). A client CA that changed is added to the trusted ones; a CA removed from the
    file stays trusted until the server restarts."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._files = _Files(tls)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load()
        if tls.client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED

    def _load(self) -> None:
        self.context.load_cert_chain(self._tls.cert, self._tls.key)
        if self._tls.client_ca is not None:
            self.context.load_verify_locations(cafile=self._tls.client_ca)

    def refresh(self) -> None:
        if self._files.changed():
            try:
                self._load()
            except (OSError, ssl.SSLError):
                self._files.forget()
