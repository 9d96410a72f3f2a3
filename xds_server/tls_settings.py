"""The listener's HTTPS settings (`--tls-cert`, `--tls-key`, `--tls-client-ca`, `--tls-ciphers`,
`--tls-sds-dir`): flags, and the checks that refuse a file Envoy could not use, naming it."""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from pathlib import Path

from sidecar_shared.errors import SettingsError
from sidecar_shared.flags import add_flag
from xds_server import pem
from xds_server.resources.tls import DEFAULT_CIPHERS, DEFAULT_SDS_DIR, ListenerTls


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    for name, default, help in (
        ("tls-cert", None, "PEM certificate chain: Envoy's listener speaks HTTPS (with --tls-key)"),
        ("tls-key", None, "PEM private key of --tls-cert"),
        (
            "tls-client-ca",
            None,
            "PEM CA bundle: the listener then requires a client certificate it signed",
        ),
        ("tls-ciphers", ",".join(DEFAULT_CIPHERS), "TLS 1.2 cipher suites, comma-separated"),
        (
            "tls-sds-dir",
            DEFAULT_SDS_DIR,
            "directory on Envoy's host where the SDS files naming the PEM files are written",
        ),
    ):
        add_flag(parser, name, default=default, help=help, environ=environ)
    add_flag(
        parser,
        "http-redirect",
        default=0,
        type=int,
        help="also listen for plain HTTP on this port and redirect every request to HTTPS "
        "(with --tls-cert; 0: off)",
        environ=environ,
    )


def _absolute(flag: str, value: str) -> str:
    path = Path(value)
    if not path.is_absolute():
        path = path.absolute()  # Envoy may run from another directory
    return str(path)


def listener_tls(args: argparse.Namespace) -> ListenerTls | None:
    """The listener's TLS, None without --tls-cert/--tls-key. Raises SettingsError when they do
    not go together, or a file is missing, unreadable, not PEM, expired, or the key is not the
    certificate's."""
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if not cert and not key and not ca:
        return None
    if not cert or not key:
        raise SettingsError(
            "--tls-cert and --tls-key go together" + (" (--tls-client-ca needs both)" if ca else "")
        )
    problems = [f"--tls-{which}: {m}" for which, m in pem.pair_problems(Path(cert), Path(key))]
    if ca:
        problems += [f"--tls-client-ca: {m}" for m in pem.ca_problems(Path(ca))]
    if problems:
        raise SettingsError("; ".join(problems))
    ciphers = tuple(c.strip() for c in args.tls_ciphers.split(",") if c.strip())
    if not ciphers:
        raise SettingsError("--tls-ciphers: give at least one cipher suite")
    for cipher in ciphers:
        if not _known_cipher(cipher):
            raise SettingsError(f"--tls-ciphers: {cipher!r} is not a cipher suite name")
    return ListenerTls(
        _absolute("--tls-cert", cert),
        _absolute("--tls-key", key),
        _absolute("--tls-client-ca", ca) if ca else None,
        ciphers,
    )


def _known_cipher(name: str) -> bool:
    """Whether `name` is a TLS 1.2 cipher suite (OpenSSL's names, which Envoy's BoringSSL
    shares for every suite it has). Envoy itself would take the listener and fail only at the
    first certificate load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(name)
    except ssl.SSLError:
        return False
    return name in {c["name"] for c in context.get_ciphers()}


def http_redirect_port(args: argparse.Namespace) -> int:
    port = int(args.http_redirect)
    if not port:
        return 0
    if not args.tls_cert:
        raise SettingsError("--http-redirect redirects to HTTPS: it needs --tls-cert and --tls-key")
    if not 0 < port < 65536 or port == args.listener_port:
        raise SettingsError(f"--http-redirect {port}: a port other than --listener-port")
    return port


def sds_dir(args: argparse.Namespace) -> str:
    return _absolute("--tls-sds-dir", args.tls_sds_dir)
