"""Verification keys and their rotation: the HMAC secret (given, or read from a file) and the
JWKS (a file, or an https URL).

`KeySource` loads every configured source once at start (raising `KeyConfigError` when a key
cannot be used: startup refuses to continue), then keeps them current from a background thread:
the secret file when it changes, the JWKS every `refresh_s` and soon after a token names an
unknown `kid` (at most every `refresh_min_s`). Nothing here ever runs on a request's thread but
`current()` and `unknown_kid()`, which only read an attribute or set an event: no file read and
no network fetch on the request path.

A source that fails after start keeps its last good keys; the failure is logged once per outage
(and its end once). Each change of the key set bumps `KeySet.generation`, so a cache of verified
tokens knows to forget them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from sidecar_shared import defaults

KID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MIN_SECRET_BYTES = 32


class KeyConfigError(Exception):
    """The configured keys cannot be used (startup refuses to continue)."""


@dataclass(frozen=True)
class Jwk:
    """One verification key from a JWKS."""

    key: Any  # the cryptography public key PyJWT verifies with
    kty: str
    alg: str | None
    crv: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class KeySet:
    """The keys in force: immutable, swapped whole."""

    secret: bytes | None
    jwks: Mapping[str, Jwk] = field(default_factory=dict)
    generation: int = 0


@dataclass(frozen=True)
class KeySettings:
    secret: bytes | None = None
    secret_file: Path | None = None
    jwks: str | None = None  # a file path or an https URL
    refresh_s: float = defaults.KEY_REFRESH_S
    refresh_min_s: float = defaults.JWKS_REFRESH_MIN_S


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise KeyConfigError(f"cannot read the JWT secret file {path}: {err.strerror}") from None
    _check_secret(secret)
    return secret


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")


def read_jwks(source: str) -> dict[str, Jwk]:
    """Fetch and parse a JWKS; raises KeyConfigError saying what is wrong."""
    try:
        if source.startswith(("https://", "http://")):
            with urllib.request.urlopen(source, timeout=2) as resp:  # noqa: S310 (configured URL)
                data = json.load(resp)
        else:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise KeyConfigError(f"{source}: cannot load JWKS: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyConfigError(f"{source}: not a JWKS (an object with a 'keys' list)")
    return parse_jwks(data, source)


def parse_jwks(data: Mapping[str, Any], source: str = "JWKS") -> dict[str, Jwk]:
    keys: dict[str, Jwk] = {}
    for i, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, dict):
            raise KeyConfigError(f"{source}: keys[{i}] is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not KID.match(kid):
            raise KeyConfigError(f"{source}: keys[{i}] needs a 'kid' of [A-Za-z0-9._-]{{1,128}}")
        if jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk or "k" in jwk:
            raise KeyConfigError(
                f"{source}: keys[{i}] ({kid}) holds private or symmetric material; "
                "a JWKS for verification lists public keys only"
            )
        try:
            parsed = jwt.PyJWK(jwk)
        except jwt.PyJWTError as err:
            raise KeyConfigError(f"{source}: keys[{i}] ({kid}): {err}") from None
        keys[kid] = Jwk(parsed.key, str(jwk.get("kty")), jwk.get("alg"), jwk.get("crv"), jwk)
    return keys


def _same_jwks(a: Mapping[str, Jwk], b: Mapping[str, Jwk]) -> bool:
    return {k: v.raw for k, v in a.items()} == {k: v.raw for k, v in b.items()}


class KeySource:
    def __init__(
        self,
        settings: KeySettings,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load every configured key now; raises KeyConfigError when one cannot be used."""
        if settings.secret is None and settings.secret_file is None and settings.jwks is None:
            raise KeyConfigError(
                "no key configured: set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE "
                "(HS256/384/512) or SIDECAR_JWKS (a JWKS file or https URL)"
            )
        if settings.secret is not None and settings.secret_file is not None:
            raise KeyConfigError("set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE, not both")
        self._settings = settings
        self._log = log or logging.getLogger(__name__)
        self._clock = clock
        secret = settings.secret
        if secret is not None:
            _check_secret(secret)
        self._secret_mtime: int | None = None
        if settings.secret_file is not None:
            self._secret_mtime = self._mtime(settings.secret_file)
            secret = read_secret(settings.secret_file)
        jwks = read_jwks(settings.jwks) if settings.jwks is not None else {}
        self._keys = KeySet(secret, jwks)
        self._last_jwks_load = clock()
        self._failing: set[str] = set()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> KeySet:
        return self._keys

    def unknown_kid(self) -> None:
        """A token named a kid we do not have: ask for a JWKS refetch soon (never waits)."""
        if self._settings.jwks is not None:
            self._wake.set()

    def refresh(self, *, secret: bool = True, jwks: bool = True) -> bool:
        """Re-read the sources now; True when the key set changed. Never raises: a source that
        cannot be read keeps its last good keys."""
        current = self._keys
        new_secret, new_jwks = current.secret, current.jwks
        path = self._settings.secret_file
        if secret and path is not None:
            mtime = self._mtime(path)
            if mtime != self._secret_mtime:
                loaded = self._attempt(str(path), lambda: read_secret(path))
                if loaded is not None:
                    new_secret, self._secret_mtime = loaded, mtime
        source = self._settings.jwks
        if jwks and source is not None:
            self._last_jwks_load = self._clock()
            fetched = self._attempt(source, lambda: read_jwks(source))
            if fetched is not None and not _same_jwks(fetched, current.jwks):
                new_jwks = fetched
        if new_secret == current.secret and new_jwks is current.jwks:
            return False
        self._keys = KeySet(new_secret, new_jwks, current.generation + 1)
        self._log.info(
            "verification keys reloaded",
            extra={"fields": {"generation": self._keys.generation, "kids": sorted(new_jwks)}},
        )
        return True

    def _attempt(self, source: str, load: Callable[[], Any]) -> Any:
        try:
            value = load()
        except KeyConfigError as err:
            if source not in self._failing:
                self._failing.add(source)
                self._log.error(
                    "cannot reload verification keys; the last good ones stay in use",
                    extra={"fields": {"source": source, "error": str(err)}},
                )
            return None
        if source in self._failing:
            self._failing.discard(source)
            self._log.warning(
                "verification keys readable again", extra={"fields": {"source": source}}
            )
        return value

    @staticmethod
    def _mtime(path: Path) -> int | None:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None

    def start(self) -> None:
        """Keep the keys current from a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="key-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def kid_refetch_wait(self) -> float:
        """Seconds until a refetch for an unknown kid may run: JWKS fetches are at least
        `refresh_min_s` apart, so a flood of made-up kids cannot hammer the JWKS server."""
        return max(0.0, self._last_jwks_load + self._settings.refresh_min_s - self._clock())

    def _run(self) -> None:
        while not self._stopped.is_set():
            woken = self._wake.wait(timeout=self._settings.refresh_s)
            if self._stopped.is_set():
                return
            if not woken:
                self.refresh()
                continue
            wait = self.kid_refetch_wait()
            if wait > 0 and self._stopped.wait(wait):
                return
            self._wake.clear()
            self.refresh(secret=False)
