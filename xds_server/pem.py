"""Checks of the PEM files Envoy is pointed at (the listener's certificate, an upstream's client
certificate and CA): each returns the problems found, every one naming its file, so that a bad
file is refused where it is configured (a setting at start, a catalog field at reload) instead
of when Envoy first reads it. Envoy reads the files itself; these checks only read them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror or err})"


def _certificates(path: Path) -> tuple[list[x509.Certificate], str | None]:
    raw, problem = _read(path)
    if raw is None:
        return [], problem
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        return [], f"{path}: not a PEM certificate"
    return certs, None


def _expiry(path: Path, cert: x509.Certificate, now: datetime.datetime) -> str | None:
    if cert.not_valid_after_utc <= now:
        return f"{path}: the certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return (
            f"{path}: the certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return None


def ca_problems(path: Path, clock: Clock = _now) -> list[str]:
    """A CA bundle: readable, one or more PEM certificates, none expired."""
    certs, problem = _certificates(path)
    if problem:
        return [problem]
    now = clock()
    return [p for p in (_expiry(path, c, now) for c in certs) if p]


def pair_problems(cert: Path, key: Path, clock: Clock = _now) -> list[tuple[str, str]]:
    """A certificate chain and its private key: both readable and PEM, the leaf (the first
    certificate) in its validity period, and the key the one the leaf certifies. Each problem
    as ("cert" or "key": the file it is about, the message)."""
    certs, problem = _certificates(cert)
    problems = [("cert", problem)] if problem else []
    private: PrivateKeyTypes | None = None
    raw, unreadable = _read(key)
    if raw is None:
        problems.append(("key", str(unreadable)))
    else:
        try:
            private = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError):
            problems.append(("key", f"{key}: not an unencrypted PEM private key"))
    if not certs:
        return problems
    expired = _expiry(cert, certs[0], clock())
    if expired:
        problems.append(("cert", expired))
    if private is not None and _public_bytes(private.public_key()) != _public_bytes(
        certs[0].public_key()
    ):
        problems.append(("key", f"{key}: the key does not match the certificate in {cert}"))
    return problems


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
