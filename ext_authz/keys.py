"""Verification keys and their rotation: the HMAC secret (given, or read from a file) and the
JWKS (a file, an https URL, or the `jwks_uri` an issuer's OpenID configuration names).

`KeySource(settings)` only checks that the settings fit together; its `load()` reads every
configured source once at start (raising `KeyConfigError` when a key cannot be used: startup
refuses to continue), and `start()` then keeps them current from a background thread:
the secret file every `refresh_s` when it changes; the JWKS every `refresh_s`, sooner when its
server answers with a shorter `Cache-Control: max-age` (never sooner than `refresh_min_s`), and
soon after a token names an unknown `kid` (at most every `refresh_min_s`). Nothing here ever runs
on a request's thread but `current()` and `unknown_kid()`, which only read an attribute or set an
event: no file read and no network fetch on the request path.

HTTPS fetches trust the system's CA store, or only the bundle in `KeySettings.jwks_ca_file`.
Discovery (`discover_from`) happens once, at start: the configuration must name the same issuer.

Weak keys are refused when a JWKS is loaded (`weakness`): an RSA key under 2048 bits, an EC key
off P-256/P-384/P-521, an OKP key off Ed25519/Ed448. The rest of the JWKS is used; each weak key
is logged once with its `kid` and counted (`ext_authz_jwks_weak_keys_total`), and a token it
would verify names an unknown `kid`. A `kid` is matched as a whole string (`KID.fullmatch`: a
trailing newline is not part of any kid).

A source that fails after start keeps its last good keys; the failure is logged once per outage
and its end once (with how long it lasted and how many fetches failed). Each refetch for an
unknown `kid` is logged. With `KeyMetrics`, JWKS fetches, failures, unknown-kid refetches and the
age of the JWKS in use are exported. Each change of the key set bumps `KeySet.generation`, so a
cache of verified tokens knows to forget them.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from ext_authz.metrics import KeyMetrics
from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap
from sidecar_shared.outage import Outage

KID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # the whole string: use `fullmatch`
MIN_RSA_BITS = 2048
# The curves a JWK may name (RFC 7518, RFC 8037); any other key of that type is refused.
STANDARD_CURVES = {
    "EC": frozenset({"P-256", "P-384", "P-521"}),
    "OKP": frozenset({"Ed25519", "Ed448"}),
}
MIN_SECRET_BYTES = 32
FETCH_TIMEOUT_S = 2.0
MAX_DOCUMENT_BYTES = 1 << 20


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
    jwks_ca_file: Path | None = None  # trusted instead of the system store for https fetches
    discover_from: str | None = None  # an issuer whose OpenID configuration names the JWKS


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


def is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """The context for https fetches: None (the system store) or one trusting only `ca_file`."""
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        raise KeyConfigError(
            f"SIDECAR_JWKS_CA_FILE={ca_file}: not a readable PEM bundle of CA certificates: {err}"
        ) from None


def max_age(cache_control: str | None) -> float | None:
    """Seconds a `Cache-Control` header lets us keep the answer: `max-age`, 0 for `no-cache` or
    `no-store`, None when it says neither."""
    found: float | None = None
    for directive in (cache_control or "").split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age":
            try:
                found = float(max(0, int(value.strip().strip('"'))))
            except ValueError:
                continue
    return found


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from https to anything else (keys must not come in clear)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if req.full_url.startswith("https://") and not newurl.startswith("https://"):
            raise urllib.error.URLError(f"refused a redirect from https to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _get_json(url: str, tls: ssl.SSLContext | None, what: str) -> tuple[Any, str | None]:
    """The JSON document at `url` and its `Cache-Control`; raises KeyConfigError."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), _NoDowngrade)
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT_S) as resp:
            body = resp.read(MAX_DOCUMENT_BYTES + 1)
            cache_control = resp.headers.get("Cache-Control")
    except urllib.error.URLError as err:
        reason = err.reason
        hint = ""
        if isinstance(reason, ssl.SSLCertVerificationError) and tls is None:
            hint = " (a private CA? set SIDECAR_JWKS_CA_FILE to its PEM bundle)"
        raise KeyConfigError(f"{url}: cannot load {what}: {reason}{hint}") from None
    except (OSError, http.client.HTTPException) as err:
        raise KeyConfigError(f"{url}: cannot load {what}: {err!r}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise KeyConfigError(f"{url}: {what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body), cache_control
    except ValueError as err:
        raise KeyConfigError(f"{url}: {what} is not JSON: {err}") from None


@dataclass(frozen=True)
class Fetched:
    keys: dict[str, Jwk]
    max_age_s: float | None = None  # from the server's Cache-Control
    weak: Mapping[str, str] = field(default_factory=dict)  # refused keys: kid → why


def fetch_jwks(source: str, tls: ssl.SSLContext | None = None) -> Fetched:
    """Load and parse a JWKS file or URL; raises KeyConfigError saying what is wrong."""
    cache_control = None
    if is_url(source):
        data, cache_control = _get_json(source, tls, "JWKS")
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise KeyConfigError(f"{source}: cannot load JWKS: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyConfigError(f"{source}: not a JWKS (an object with a 'keys' list)")
    weak: dict[str, str] = {}
    return Fetched(parse_jwks(data, source, weak), max_age(cache_control), weak)


def discover_jwks_uri(issuer: str, tls: ssl.SSLContext | None = None) -> str:
    """The `jwks_uri` of `issuer`'s `/.well-known/openid-configuration`; raises KeyConfigError."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc, _ = _get_json(url, tls, "the OpenID configuration")
    if not isinstance(doc, dict):
        raise KeyConfigError(f"{url}: the OpenID configuration is not a JSON object")
    if doc.get("issuer") != issuer:
        raise KeyConfigError(
            f"{url}: the OpenID configuration names issuer {doc.get('issuer')!r}, "
            f"not SIDECAR_JWT_ISSUER={issuer!r}; set SIDECAR_JWT_ISSUER to what tokens carry"
        )
    uri = doc.get("jwks_uri")
    scheme = "https://" if issuer.startswith("https://") else "http://"
    if not isinstance(uri, str) or not uri.startswith(("https://", scheme)):
        raise KeyConfigError(f"{url}: the OpenID configuration has no usable 'jwks_uri'")
    return uri


def weakness(jwk: Mapping[str, Any], key: Any) -> str | None:
    """Why a parsed JWK is too weak to verify with (None: it is not): an RSA modulus under
    `MIN_RSA_BITS`, or an EC or OKP key on a curve outside `STANDARD_CURVES`."""
    kty = jwk.get("kty")
    if kty == "RSA":
        bits = int(getattr(key, "key_size", 0))
        return None if bits >= MIN_RSA_BITS else f"an RSA key of {bits} bits (under {MIN_RSA_BITS})"
    curves = STANDARD_CURVES.get(str(kty))
    if curves is not None and jwk.get("crv") not in curves:
        return f"an {kty} key on the curve {str(jwk.get('crv'))[:32]!r}"
    return None


def parse_jwks(
    data: Mapping[str, Any], source: str = "JWKS", weak: dict[str, str] | None = None
) -> dict[str, Jwk]:
    """The usable signing keys of a JWKS by kid; raises KeyConfigError for a key that is not
    one. A weak key (`weakness`) is left out, and noted in `weak` (kid → why)."""
    keys: dict[str, Jwk] = {}
    for i, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, dict):
            raise KeyConfigError(f"{source}: keys[{i}] is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not KID.fullmatch(kid):
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
        why = weakness(jwk, parsed.key)
        if why is not None:
            if weak is not None:
                weak[kid] = why
            continue
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
        metrics: KeyMetrics | None = None,
    ) -> None:
        """A source of the configured keys, holding none yet (`load` reads them; nothing here
        reads a file or the network). Raises KeyConfigError when the settings cannot work
        together."""
        if (
            settings.secret is None
            and settings.secret_file is None
            and settings.jwks is None
            and settings.discover_from is None
        ):
            raise KeyConfigError(
                "no key configured: set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE "
                "(HS256/384/512), SIDECAR_JWKS (a JWKS file or https URL), or only "
                "SIDECAR_JWT_ISSUER (an https issuer whose OpenID configuration names the JWKS)"
            )
        if settings.secret is not None and settings.secret_file is not None:
            raise KeyConfigError("set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE, not both")
        if settings.jwks_ca_file is not None and not (
            settings.discover_from is not None
            or (settings.jwks is not None and is_url(settings.jwks))
        ):
            raise KeyConfigError(
                "SIDECAR_JWKS_CA_FILE is set but nothing is fetched over https: it applies to "
                "a SIDECAR_JWKS URL or to discovery from SIDECAR_JWT_ISSUER"
            )
        self._settings = settings
        self._log = log or logging.getLogger(__name__)
        self._clock = clock
        self._metrics = metrics
        self._tls: ssl.SSLContext | None = None
        self._secret_mtime: int | None = None
        self._jwks_source = settings.jwks
        self._jwks_interval = settings.refresh_s
        self._last_jwks_load = self._last_jwks_ok = 0.0
        self._next_jwks = math.inf
        self._keys = KeySet(None)
        self._loaded = False
        self._outages: dict[str, Outage] = {}  # by source
        self._asked_kid: str | None = None
        self._weak_seen: BoundedMap[str, str] = BoundedMap(1024)  # logged: kid → why
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> KeySet:
        """Read every configured key now (the secret file, the OpenID configuration when the
        JWKS is to be discovered, the JWKS) and return them; raises KeyConfigError when one
        cannot be used. Called once, before `start`."""
        settings = self._settings
        self._tls = tls_context(settings.jwks_ca_file)
        secret = settings.secret
        if secret is not None:
            _check_secret(secret)
        if settings.secret_file is not None:
            self._secret_mtime = self._mtime(settings.secret_file)
            secret = read_secret(settings.secret_file)
        if self._jwks_source is None and settings.discover_from is not None:
            self._jwks_source = discover_jwks_uri(settings.discover_from, self._tls)
            self._log.info(
                "JWKS discovered",
                extra={"fields": {"issuer": settings.discover_from, "jwks": self._jwks_source}},
            )
        self._last_jwks_load = self._clock()
        self._last_jwks_ok = self._last_jwks_load
        jwks: Mapping[str, Jwk] = {}
        if self._jwks_source is not None:
            self._count_fetch()
            try:
                jwks = self._fetched(fetch_jwks(self._jwks_source, self._tls))
            except KeyConfigError:
                self._count_failure()
                raise
        self._keys = KeySet(secret, jwks)
        self._loaded = True
        if self._metrics is not None and self._jwks_source is not None:
            self._metrics.jwks_age.set_function(self.jwks_age_s)
        return self._keys

    def current(self) -> KeySet:
        """The keys in force: none until `load`."""
        return self._keys

    def jwks_age_s(self) -> float:
        """Seconds since the JWKS in use was last fetched successfully."""
        return max(0.0, self._clock() - self._last_jwks_ok)

    def unknown_kid(self, kid: str | None = None) -> None:
        """A token named a kid we do not have: ask for a JWKS refetch soon (never waits)."""
        if self._jwks_source is not None:
            self._asked_kid = kid
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
        source = self._jwks_source
        if jwks and source is not None:
            self._count_fetch()
            fetched = self._attempt(source, lambda: fetch_jwks(source, self._tls))
            if fetched is None:
                self._count_failure()
            else:
                keys = self._fetched(fetched)
                if not _same_jwks(keys, current.jwks):
                    new_jwks = keys
            self._next_jwks = self._last_jwks_load + self._jwks_interval
        if new_secret == current.secret and new_jwks is current.jwks:
            return False
        self._keys = KeySet(new_secret, new_jwks, current.generation + 1)
        self._log.info(
            "verification keys reloaded",
            extra={"fields": {"generation": self._keys.generation, "kids": sorted(new_jwks)}},
        )
        return True

    def _fetched(self, fetched: Fetched) -> dict[str, Jwk]:
        """Note a good JWKS fetch: its time, when to fetch again (`max-age`, in bounds), and
        the weak keys it held (each logged and counted once per kid and reason)."""
        s = self._settings
        self._last_jwks_ok = self._clock()
        for kid, why in fetched.weak.items():
            if self._weak_seen.get(kid) == why:
                continue
            self._weak_seen[kid] = why
            if self._metrics is not None:
                self._metrics.jwks_weak_keys.inc()
            self._log.warning(
                "a weak key in the JWKS is refused; tokens it signs are not accepted",
                extra={"fields": {"kid": kid, "key": why}},
            )
        if fetched.max_age_s is None:
            self._jwks_interval = s.refresh_s
        else:
            self._jwks_interval = min(max(fetched.max_age_s, s.refresh_min_s), s.refresh_s)
        return fetched.keys

    def _count_fetch(self) -> None:
        self._last_jwks_load = self._clock()
        if self._metrics is not None:
            self._metrics.jwks_fetches.inc()

    def _count_failure(self) -> None:
        if self._metrics is not None:
            self._metrics.jwks_fetch_failures.inc()

    def _attempt(self, source: str, load: Callable[[], Any]) -> Any:
        try:
            value = load()
        except KeyConfigError as err:
            outage = self._outages.get(source)
            if outage is None:
                outage = self._outages[source] = Outage(self._clock)
            if outage.failed():
                self._log.error(
                    "cannot reload verification keys; the last good ones stay in use",
                    extra={"fields": {"source": source, "error": str(err)}},
                )
            return None
        outage = self._outages.get(source)
        ended = outage.succeeded() if outage is not None else None
        if ended is not None:
            self._log.warning(
                "verification keys readable again",
                extra={
                    "fields": {
                        "source": source,
                        "failures": ended.failures,
                        "outage_s": round(ended.duration_s, 3),
                    }
                },
            )
        return value

    @staticmethod
    def _mtime(path: Path) -> int | None:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None

    def start(self) -> None:
        """Keep the keys current from a daemon thread until `stop`. Requires `load`."""
        if not self._loaded:
            raise RuntimeError("KeySource.start() before load()")
        if self._jwks_source is not None:  # else never: nothing to fetch
            self._next_jwks = self._last_jwks_load + self._jwks_interval
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

    def refetch_for_unknown_kid(self) -> None:
        """Refetch the JWKS now because a token named a kid we lack, and log the outcome."""
        kid = self._asked_kid
        changed = self.refresh(secret=False)
        if self._metrics is not None:
            self._metrics.jwks_unknown_kid_refetches.inc()
        found = kid is not None and kid in self._keys.jwks
        fields = {"kid": kid, "found": found, "keys_changed": changed}
        if found:
            self._log.info("JWKS refetched for an unknown key id", extra={"fields": fields})
        else:
            self._log.warning(
                "JWKS refetched for an unknown key id; the JWKS does not have it",
                extra={"fields": fields},
            )

    def _run(self) -> None:
        refresh_s = self._settings.refresh_s
        next_secret = self._clock() + refresh_s
        while not self._stopped.is_set():
            woken = self._wake.wait(
                timeout=max(0.0, min(next_secret, self._next_jwks) - self._clock())
            )
            if self._stopped.is_set():
                return
            try:
                if woken:
                    wait = self.kid_refetch_wait()
                    if wait > 0 and self._stopped.wait(wait):
                        return
                    self._wake.clear()
                    self.refetch_for_unknown_kid()
                    continue
                now = self._clock()
                check_secret = now >= next_secret
                if check_secret:
                    next_secret = now + refresh_s
                self.refresh(secret=check_secret, jwks=now >= self._next_jwks)
            except Exception:  # a bug here must not end key rotation
                self._log.exception("key refresh failed")
                if self._stopped.wait(self._settings.refresh_min_s):
                    return
