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
must decode, name an accepted `alg` and a well-formed `kid` that fits a key; only then is the
signature checked. Garbage costs a regex, never a signature.

Where the user, roles and tenant are found (nested paths, several role sources, scope strings)
is `ext_authz.claims`.

Claims (`validate_times`, `validate_identity`, kept apart from how claims are extracted):
`exp` is required; `exp`, `nbf`, `iat` must be finite numbers between 0 and `MAX_TIME` (NaN,
Infinity, 1e999 or 10**400 are refused, never a 500); `nbf` and `iat` must not be in the future
beyond the leeway. The user, tenant and role names become request headers, so they must be
header-safe: no control characters, no leading or trailing whitespace, bounded length
(`MAX_NAME_CHARS`), at most `MAX_ROLES` roles, none empty (a role may hold a comma or spaces:
`x-user-roles` percent-encodes each role). Issuer and audience are enforced when configured.

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
from sidecar_shared.contract import encode_roles

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

COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_HEADER_CHARS = 1024  # a JOSE header longer than this is not one we could accept
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: any later time is nonsense
MAX_NAME_CHARS = 256  # a user, tenant or role name (each becomes a header value)
MAX_ROLES = 64
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# Refusals that a key refresh or the clock can cure: never remembered as bad.
_CURABLE = frozenset({"unknown_kid", "not_yet_valid"})


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


def _json_part(part: str, what: str) -> dict[str, Any]:
    """One base64url JSON object of a compact token (its header or payload)."""
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON all are
        raise TokenError("malformed", f"the token's {what} is not valid") from None
    if not isinstance(value, dict):
        raise TokenError("malformed", f"the token's {what} is not valid")
    return value


def _check_hmac(token: str, secret: bytes, alg: str) -> None:
    """Raise TokenError unless `token`'s HMAC signature is right (a compact token, checked)."""
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(secret, signing_input.encode(), _HMAC_HASH[alg]).digest()
    try:
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:
        raise TokenError("malformed", "the token's signature is not base64url") from None
    if not hmac.compare_digest(expected, given):
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
        # A comma is fine: x-user-roles percent-encodes each role (`encode_roles`).
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

    def verify(self, token: str) -> Identity:
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
            identity = self._verify_uncached(token, now, keys)
        except TokenError as err:
            self._refused.put(token, err)
            raise
        self._cache.put(token, identity)
        return identity

    def _verify_uncached(self, token: str, now: float, keys: KeySet) -> Identity:
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
        if kid is not None and (not isinstance(kid, str) or not KID.match(kid)):
            raise TokenError("unknown_kid", "the token's key id (kid) is not valid")
        key = self._key_for(keys, alg, kid)
        if alg in HMAC_ALGS:
            _check_hmac(token, key, alg)  # a forged HMAC costs one digest, not a decode
            # The signature is proven: read the claims without PyJWT verifying it again.
            claims = self._registered_claims(_json_part(payload_part, "payload"))
        else:
            claims = self._decode_asymmetric(token, key, alg)
        exp = validate_times(claims, now, self._settings.leeway_s)
        return validate_identity(self._identity(claims, exp))

    def _registered_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        """What PyJWT's decode checks of the claims (with times left to `validate_times`):
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

    def _decode_asymmetric(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={
                    "require": ["exp"],
                    "verify_aud": s.audience is not None,
                    # Times are checked below, against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidIssuerError:
            raise TokenError("wrong_issuer", "the token's issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong_audience", "the token's audience is not accepted") from None
        except jwt.MissingRequiredClaimError as err:
            raise TokenError("missing_claim", f"the token has no '{err.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature", "the token's signature is not valid") from None
        except jwt.InvalidKeyError:
            raise TokenError("bad_signature", "the token's key cannot be used") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenError("malformed", "the token is not valid") from None
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
