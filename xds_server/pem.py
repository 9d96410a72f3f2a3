"""Checks of the PEM files Envoy is pointed at (the listener's certificate, an upstream's client
certificate and CA): each returns the problems found, every one naming its file, so that a bad
file is refused where it is configured (a setting at start, a catalog field at every load)
instead of when Envoy first reads it. Envoy reads the files itself; these checks only read them.

A file's parse is remembered while its identity, modification time and size stay the same (a
catalog names the same few files in many services, and is checked at every reload); validity
periods are judged against the clock at every check.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

Clock = Callable[[], datetime.datetime]
Stamp = tuple[int, int, int, int]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class _Cert:
    not_before: datetime.datetime
    not_after: datetime.datetime
    public_key: bytes  # DER SubjectPublicKeyInfo


def _stamp(path: Path) -> tuple[Stamp | None, str | None]:
    try:
        st = path.stat()
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror or err})"
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), None


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.lru_cache(maxsize=1024)
def _parse_certs(path: Path, stamp: Stamp) -> tuple[tuple[_Cert, ...], str | None]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        return (), f"{path}: cannot be read ({err.strerror or err})"
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        return (), f"{path}: not a PEM certificate"
    return tuple(
        _Cert(c.not_valid_before_utc, c.not_valid_after_utc, _spki(c.public_key())) for c in certs
    ), None


@functools.lru_cache(maxsize=1024)
def _parse_key(path: Path, stamp: Stamp) -> tuple[bytes | None, str | None]:
    """The public half of the private key in `path` (DER)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror or err})"
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        return None, f"{path}: not an unencrypted PEM private key"
    return _spki(key.public_key()), None


def _certificates(path: Path) -> tuple[tuple[_Cert, ...], str | None]:
    stamp, problem = _stamp(path)
    return ((), problem) if stamp is None else _parse_certs(path, stamp)


def _public_key(path: Path) -> tuple[bytes | None, str | None]:
    stamp, problem = _stamp(path)
    return (None, problem) if stamp is None else _parse_key(path, stamp)


def _expiry(path: Path, cert: _Cert, now: datetime.datetime) -> str | None:
    if cert.not_after <= now:
        return f"{path}: the certificate expired at {cert.not_after:%Y-%m-%d %H:%M} UTC"
    if cert.not_before > now:
        return f"{path}: the certificate is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC"
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
    public, problem = _public_key(key)
    if problem:
        problems.append(("key", problem))
    if not certs:
        return problems
    expired = _expiry(cert, certs[0], clock())
    if expired:
        problems.append(("cert", expired))
    if public is not None and public != certs[0].public_key:
        problems.append(("key", f"{key}: the key does not match the certificate in {cert}"))
    return problems
