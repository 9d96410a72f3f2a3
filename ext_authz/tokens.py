"""JWT verification: keys, algorithms, claims, and a cache of verified tokens.

`TokenVerifier.verify(token)` returns an `Identity` or raises `TokenError` whose `reason` is a
short code safe to show a client and to log. Nothing here logs or returns the token.

Keys and algorithms:
- HS256/384/512 use the shared secret, and nothing else: an RSA public key is never used as an
  HMAC secret (algorithm confusion), and PyJWT refuses PEM-looking secrets as well.
- RS256/384/512, PS256, ES256/384 and EdDSA use the JWKS key named by `kid`; the key's type
  (and its `alg`, when the JWK states one) must fit the token's algorithm. A `kid` is a short
  token of letters, digits, `.`, `_`, `-`; anything else is refused before any lookup. An
  unknown `kid` is refused at once and asks the `KeySource` to refetch the JWKS in the
  background: a verification never waits for a fetch.
- `alg: none` and every algorithm not listed are refused.

Shape first, signature last: a token must be the strict compact serialization (three
base64url parts, no padding, no whitespace: `COMPACT`) and within `max_token_bytes`; its header
must decode, name an accepted `alg` and a well-formed `kid` (the whole string: `KID.fullmatch`)
that fits a key; only then is the signature checked, and only a token whose signature holds has
its payload read. Garbage costs a regex, never a signature.

One reading only (`strict_json_object`, for the header and the payload): what two JSON readers
could read differently, or what would cost more than it is worth, is refused as `malformed`
before any other work on it: a name twice in one object (`{"sub":"alice","sub":"admin"}`:
first-wins and last-wins readers would see different users), objects and arrays nested deeper
than `MAX_DEPTH`, bytes that are not UTF-8, a byte order mark, an unpaired UTF-16 surrogate.
Like every refusal but the curable ones, these are remembered (`NegativeCache`).

Where the user, roles and tenant are found (nested paths, several role sources, scope strings)
is `ext_authz.claims`.

Claims (`validate_times`, `validate_identity`, kept apart from how claims are extracted):
`exp` is required; `exp`, `nbf`, `iat` must be finite numbers between 0 and `MAX_TIME` (NaN,
Infinity, 1e999 or 10**400 are refused, never a 500); `nbf` and `iat` must not be in the future
beyond the leeway. The user, tenant and role names become request headers, so they must be
header-safe: no control characters, no leading or trailing whitespace, bounded length
(`MAX_NAME_CHARS`), at most `MAX_ROLES` roles, none empty. Any other character is fine: each
header value is encoded by one rule (`encode_identity`: a comma, a C1 control, a `%`, any
non-ASCII travel percent-encoded). Issuer and audience are enforced when configured.

Caches: verified tokens are kept in a bounded LRU keyed by the token; an entry is never used
after its `exp` (plus leeway). Refused tokens are remembered in a bounded LRU keyed by the
token's hash (`NegativeCache`), so a replayed bad token costs a lookup; refusals that time or a
key refresh can cure (`unknown_kid`, `not_yet_valid`) are not remembered. Every key change
empties both.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt

from ext_authz.claims import ClaimError, ClaimExtractor, ClaimMapping, set_claim
from ext_authz.keys import KID, Jwk, KeySet, KeySource
from sidecar_shared import defaults
from sidecar_shared.bounded import BoundedMap
from sidecar_shared.contract import encode_identity, encode_roles

Clock = Callable[[], float]

HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})
_KEY_TYPE_FOR_ALG = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "EdDSA": "OKP",
}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384"}
_ASYMMETRIC = {alg: jwt.get_algorithm_by_name(alg) for alg in ASYMMETRIC_ALGS}

COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_HEADER_CHARS = 1024  # a JOSE header longer than this is not one we could accept
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: any later time is nonsense
MAX_NAME_CHARS = 256  # a user, tenant or role name (each becomes a header value)
MAX_ROLES = 64
MAX_DEPTH = 16  # objects and arrays nested deeper than this in a header or payload: refused
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# A costly signature check the caller's gate refused: nothing was learnt about the token.
DEFERRED = "verification_deferred"
# Refusals that a key refresh or the clock can cure: never remembered as bad.
_CURABLE = frozenset({"unknown_kid", "not_yet_valid", DEFERRED})


class TokenError(Exception):
    """The token cannot be trusted. `reason` is a short code; `detail` a human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Identity:
    user: str
    roles: tuple[str, ...]
    tenant: str | None
    expires_at: float

    @cached_property
    def roles_header(self) -> str:
        """The `x-user-roles` value, encoded once per verified token."""
        return encode_roles(self.roles)

    @cached_property
    def user_header(self) -> str:
        """The `x-user-id` value (`encode_identity`), encoded once per verified token."""
        return encode_identity(self.user)

    @cached_property
    def tenant_header(self) -> str | None:
        """The `x-tenant-id` value (`encode_identity`), encoded once per verified token."""
        return None if self.tenant is None else encode_identity(self.tenant)


@dataclass(frozen=True)
class ClaimNames:
    """Claim paths (syntax in `ext_authz.claims`); `role` is read only when no `roles` path
    is in the token (None: never)."""

    user: str = "sub"
    roles: str = "roles"
    role: str | None = "role"
    tenant: str = "tenant_id"

    def mapping(self) -> ClaimMapping:
        """Raises ValueError naming the setting that is wrong."""
        return ClaimMapping.parse(
            user=self.user, roles=self.roles, tenant=self.tenant, role_fallback=self.role
        )


@dataclass(frozen=True)
class VerifierSettings:
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = defaults.JWT_LEEWAY_S
    claims: ClaimNames = ClaimNames()
    max_token_bytes: int = 8192
    cache_size: int = defaults.TOKEN_CACHE_SIZE
    negative_cache_size: int = defaults.NEGATIVE_CACHE_SIZE


def _fits(alg: str, key: Jwk) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if key.kty != _KEY_TYPE_FOR_ALG[alg]:
        return False
    curve = _CURVE_FOR_ALG.get(alg)
    return curve is None or key.crv == curve


_HMAC_HASH = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


class _Duplicate(ValueError):
    """A JSON object names one member twice."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are all distinct (RFC 7519 §4: a token with duplicate claim
    names may be refused, and is: readers that keep the first or the last would disagree)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object)
# A JSON string (skipped) or a bracket: what the depth scan looks at.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
# An escaped UTF-16 surrogate: the only way a JSON text can hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(text: str) -> bool:
    """Whether objects and arrays nest deeper than `MAX_DEPTH` in `text` (a JSON text). Costs
    two counts unless the text has more than `MAX_DEPTH` brackets; then a scan that stops at
    the first bracket too deep."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = match.group()
        if char in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "}]":
            depth -= 1
    return False


def strict_json_object(data: bytes) -> dict[str, Any]:
    """The JSON object in `data`, read one way only; raises ValueError for anything a reader
    could take another way or choke on: bytes that are not UTF-8, a byte order mark, nesting
    deeper than `MAX_DEPTH`, a duplicate name, an unpaired surrogate (`\\ud800`), or a JSON
    value that is not an object."""
    text = data.decode("utf-8")  # strict: refuses invalid UTF-8, encoded surrogates too
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark")
    if _too_deep(text):
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    value = _DECODER.decode(text)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    if _SURROGATE_ESCAPE.search(text):  # rare: check that every escaped surrogate is paired
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    return value


def _json_part(part: str, what: str) -> dict[str, Any]:
    """One base64url JSON object of a compact token (its header or payload), read strictly
    (`strict_json_object`)."""
    try:
        return strict_json_object(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except _Duplicate:
        raise TokenError("malformed", f"the token's {what} names a member twice") from None
    except ValueError:  # bad base64, bad UTF-8, bad JSON, too deep, a BOM, a lone surrogate
        raise TokenError("malformed", f"the token's {what} is not valid") from None


def _signature(token: str) -> tuple[bytes, bytes]:
    """The signing input and the decoded signature of a compact token (checked by `COMPACT`)."""
    signing_input, _, signature = token.rpartition(".")
    try:
        return signing_input.encode(), base64.urlsafe_b64decode(
            signature + "=" * (-len(signature) % 4)
        )
    except ValueError:
        raise TokenError("malformed", "the token's signature is not base64url") from None


def _check_hmac(token: str, secret: bytes, alg: str) -> None:
    """Raise TokenError unless `token`'s HMAC signature is right (a compact token, checked)."""
    signing_input, given = _signature(token)
    expected = hmac.new(secret, signing_input, _HMAC_HASH[alg]).digest()
    if not hmac.compare_digest(expected, given):
        raise TokenError("bad_signature", "the token's signature is not valid")


def _check_asymmetric(token: str, key: Any, alg: str) -> None:
    """Raise TokenError unless `token`'s signature is right for `key` (a compact token)."""
    signing_input, given = _signature(token)
    try:
        valid = _ASYMMETRIC[alg].verify(signing_input, key, given)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenError("bad_signature", "the token's key cannot be used") from None
    if not valid:
        raise TokenError("bad_signature", "the token's signature is not valid")


def validate_times(claims: Mapping[str, Any], now: float, leeway: float) -> float:
    """Check `exp` (required), `nbf` and `iat`; return `exp`. Raises TokenError."""
    times: dict[str, float] = {}
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TokenError("malformed", f"the token's '{name}' is not a number")
        # Compare before converting: float(10**400) raises; NaN and Infinity fail the range.
        if not 0 <= value <= MAX_TIME:
            raise TokenError(
                "bad_time", f"the token's '{name}' is not a time between 1970 and 9999"
            )
        times[name] = float(value)
    if "exp" not in times:
        raise TokenError("missing_claim", "the token has no 'exp' claim")
    if times["exp"] <= now - leeway:
        raise TokenError("expired", "the token has expired")
    if times.get("nbf", now) > now + leeway or times.get("iat", now) > now + leeway:
        raise TokenError("not_yet_valid", "the token is not valid yet")
    return times["exp"]


def _header_safe(value: str, what: str) -> None:
    if len(value) > MAX_NAME_CHARS:
        raise TokenError("bad_claim", f"the token's {what} is longer than {MAX_NAME_CHARS}")
    if _UNSAFE.search(value) or value != value.strip():
        raise TokenError(
            "bad_claim", f"the token's {what} has control characters or surrounding spaces"
        )


def validate_identity(identity: Identity) -> Identity:
    """Every name that becomes a header must be header-safe and unambiguous; returns
    `identity`. Raises TokenError."""
    _header_safe(identity.user, "user")
    if identity.tenant is not None:
        _header_safe(identity.tenant, "tenant")
    if len(identity.roles) > MAX_ROLES:
        raise TokenError("bad_claim", f"the token has more than {MAX_ROLES} roles")
    for role in identity.roles:
        # A comma is fine: each role is encoded in x-user-roles (`encode_identity`).
        if not role:
            raise TokenError("bad_claim", "the token has an empty role")
        _header_safe(role, "role")
    return identity


class NegativeCache:
    """Recently refused tokens (by hash) and why, at most `size` (the least recently stored
    goes first). It keeps the reason and sentence, never the exception (whose traceback would
    hold the token). Thread-safe."""

    def __init__(self, size: int) -> None:
        self._items: BoundedMap[int, tuple[str, str]] = BoundedMap(size)
        self._lock = threading.Lock()

    def get(self, token: str) -> TokenError | None:
        found = self._items.get(hash(token))
        return None if found is None else TokenError(*found)

    def put(self, token: str, error: TokenError) -> None:
        if error.reason not in _CURABLE:
            with self._lock:
                self._items[hash(token)] = (error.reason, error.detail)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class TokenCache:
    """Verified identities keyed by token, each used until its `expires_at`; at most `size`
    (the least recently stored or found goes first). Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: BoundedMap[str, Identity] = BoundedMap(size)
        self._lock = threading.Lock()
        self.hits = 0  # lookups, counted under the lock (read by metrics at scrape time)
        self.misses = 0

    def get(self, token: str, now: float) -> Identity | None:
        with self._lock:
            found = self._items.touch(token)
            if found is not None and found.expires_at <= now:
                del self._items[token]
                found = None
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            return found

    def put(self, token: str, identity: Identity) -> None:
        with self._lock:
            self._items[token] = identity

    def holds(self, token: str) -> bool:
        """Whether `token` is held (no lock: a lookup of the moment; counts nothing)."""
        return token in self._items

    def hit(self, token: str) -> None:
        """A lookup of `token` found elsewhere (the decision core's prepared answers, used
        only while their token is held here): counted, and `token` made the most recently
        used, as `get` would."""
        with self._lock:
            if token in self._items:
                self._items.move_to_end(token)
            self.hits += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class TokenVerifier:
    def __init__(
        self,
        settings: VerifierSettings,
        keys: KeySource,
        clock: Clock = time.time,
        log: logging.Logger | None = None,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._claims = ClaimExtractor(settings.claims.mapping(), log or logging.getLogger(__name__))
        self._cache = TokenCache(settings.cache_size)
        self._refused = NegativeCache(settings.negative_cache_size)
        self._generation = keys.current().generation

    @property
    def cache(self) -> TokenCache:
        return self._cache

    @property
    def refused(self) -> NegativeCache:
        return self._refused

    def key_generation(self) -> int:
        """The generation of the keys in force (`KeySet.generation`): what is remembered about
        tokens holds only while it stays the same."""
        return self._keys.current().generation

    def now(self) -> float:
        """The verifier's clock: an identity is used while `expires_at` is after it."""
        return self._clock()

    def cached(self, token: str) -> bool:
        """Whether `token` would be answered from the cache of verified tokens (no CPU spent
        on it): a caller over its failure budget may still use a token it proved before."""
        return self._cache.get(token, self._clock()) is not None

    def _key_for(self, keys: KeySet, alg: str, kid: str | None) -> Any:
        if alg in HMAC_ALGS:
            if keys.secret is None:
                raise TokenError("unsupported_alg", f"{alg} tokens are not accepted here")
            return keys.secret
        if kid is None:
            fitting = [k for k in keys.jwks.values() if _fits(alg, k)]
            if len(fitting) != 1:
                raise TokenError("unknown_kid", "the token names no key (kid)")
            return fitting[0].key
        key = keys.jwks.get(kid)
        if key is None:
            self._keys.unknown_kid(kid)
            raise TokenError("unknown_kid", "the token's key (kid) is not known")
        if not _fits(alg, key):
            raise TokenError("bad_signature", "the token's algorithm does not fit its key")
        return key.key

    def verify(self, token: str, costly: Callable[[], bool] | None = None) -> Identity:
        """`costly`, when given, is asked just before an asymmetric signature check (the only
        costly step); when it answers False the check does not run and TokenError with reason
        `DEFERRED` is raised (not remembered as refused)."""
        now = self._clock()
        keys = self._keys.current()
        if keys.generation != self._generation:  # rotated: forget what the old keys decided
            self._cache.clear()
            self._refused.clear()
            self._generation = keys.generation
        cached = self._cache.get(token, now)
        if cached is not None:
            return cached
        refused = self._refused.get(token)
        if refused is not None:
            raise refused
        try:
            identity = self._verify_uncached(token, now, keys, costly)
        except TokenError as err:
            self._refused.put(token, err)
            raise
        self._cache.put(token, identity)
        return identity

    def _verify_uncached(
        self, token: str, now: float, keys: KeySet, costly: Callable[[], bool] | None = None
    ) -> Identity:
        s = self._settings
        if len(token) > s.max_token_bytes:
            raise TokenError("malformed", f"the token is longer than {s.max_token_bytes} bytes")
        if not COMPACT.fullmatch(token):
            raise TokenError(
                "malformed", "the token is not three base64url parts (no padding, no spaces)"
            )
        if token.index(".") > MAX_HEADER_CHARS:
            raise TokenError("malformed", "the token's header is too long")
        header_part, payload_part, _ = token.split(".")
        header = _json_part(header_part, "header")
        if "crit" in header or "b64" in header:  # no JWS extension is supported here
            raise TokenError("malformed", "the token's header is not valid")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in HMAC_ALGS | ASYMMETRIC_ALGS:
            raise TokenError("unsupported_alg", "the token's algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not KID.fullmatch(kid)):
            raise TokenError("unknown_kid", "the token's key id (kid) is not valid")
        key = self._key_for(keys, alg, kid)
        if alg in HMAC_ALGS:
            _check_hmac(token, key, alg)  # a forged HMAC costs one digest, not a decode
        else:
            if costly is not None and not costly():
                raise TokenError(DEFERRED, "too many failed verifications from this address")
            _check_asymmetric(token, key, alg)
        # The signature is proven: the payload is read once, strictly, here.
        claims = self._registered_claims(_json_part(payload_part, "payload"))
        exp = validate_times(claims, now, self._settings.leeway_s)
        return validate_identity(self._identity(claims, exp))

    def _registered_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The registered claims PyJWT's decode would check (times are `validate_times`'s):
        `exp` present, `iss` and `aud` when configured, `sub` and `jti` strings."""
        s = self._settings
        if "exp" not in claims:
            raise TokenError("missing_claim", "the token has no 'exp' claim")
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise TokenError("malformed", "the token is not valid")
        if s.issuer is not None:
            if "iss" not in claims:
                raise TokenError("missing_claim", "the token has no 'iss' claim")
            if claims["iss"] != s.issuer:
                raise TokenError("wrong_issuer", "the token's issuer is not accepted")
        if s.audience is not None:
            if "aud" not in claims:
                raise TokenError("missing_claim", "the token has no 'aud' claim")
            aud = claims["aud"]
            audiences = [aud] if isinstance(aud, str) else aud
            if (
                not isinstance(audiences, list)
                or not all(isinstance(a, str) for a in audiences)
                or s.audience not in audiences
            ):
                raise TokenError("wrong_audience", "the token's audience is not accepted")
        return claims

    def _identity(self, claims: Mapping[str, Any], exp: float) -> Identity:
        try:
            user, roles, tenant = self._claims.extract(claims)
        except ClaimError as err:
            raise TokenError(err.reason, err.detail) from None
        return Identity(
            user=user, roles=roles, tenant=tenant, expires_at=exp + self._settings.leeway_s
        )


def mint(
    secret: bytes,
    *,
    sub: str,
    roles: list[str],
    tenant: str | None = None,
    ttl_s: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    claims: ClaimNames = ClaimNames(),
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token for trying things out (`sidecar token`): `extra` claims (an identity
    provider's usual ones), then user, roles and tenant at the first path of each setting."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {**copy.deepcopy(dict(extra or {})), "iat": issued}
    payload["exp"] = issued + ttl_s
    set_claim(payload, claims.user, sub)
    if claims.roles:
        set_claim(payload, claims.roles, roles)
    if tenant is not None:
        set_claim(payload, claims.tenant, tenant)
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    return jwt.encode(payload, secret, algorithm="HS256")
