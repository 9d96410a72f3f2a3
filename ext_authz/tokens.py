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

Claims: `exp` and the user claim are required; `nbf` and `iat` must not be in the future beyond
the leeway; issuer and audience are enforced when configured. Where the user, roles and tenant
are found (nested paths, several role sources, scope strings) is `ext_authz.claims`.

Cache: verified tokens are kept in a bounded LRU keyed by the token. An entry is never used
after its `exp` (plus leeway), and every key change empties the cache.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt

from ext_authz.claims import ClaimError, ClaimExtractor, ClaimMapping, set_claim
from ext_authz.keys import KID, Jwk, KeySet, KeySource
from sidecar_shared import defaults
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


def _fits(alg: str, key: Jwk) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if key.kty != _KEY_TYPE_FOR_ALG[alg]:
        return False
    curve = _CURVE_FOR_ALG.get(alg)
    return curve is None or key.crv == curve


class TokenCache:
    """A thread-safe LRU of verified identities keyed by token."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Identity] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> Identity | None:
        with self._lock:
            found = self._items.get(token)
            if found is None:
                return None
            if found.expires_at <= now:
                del self._items[token]
                return None
            self._items.move_to_end(token)
            return found

    def put(self, token: str, identity: Identity) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[token] = identity
            self._items.move_to_end(token)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

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
        self._generation = keys.current().generation

    @property
    def cache(self) -> TokenCache:
        return self._cache

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
        if keys.generation != self._generation:  # rotated: forget what the old keys verified
            self._cache.clear()
            self._generation = keys.generation
        cached = self._cache.get(token, now)
        if cached is not None:
            return cached
        identity = self._verify_uncached(token, now, keys)
        self._cache.put(token, identity)
        return identity

    def _verify_uncached(self, token: str, now: float, keys: KeySet) -> Identity:
        s = self._settings
        if len(token) > s.max_token_bytes:
            raise TokenError("malformed", f"the token is longer than {s.max_token_bytes} bytes")
        if token.count(".") != 2:
            raise TokenError("malformed", "the token is not three dot-separated parts")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "the token's header is not valid") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in HMAC_ALGS | ASYMMETRIC_ALGS:
            raise TokenError("unsupported_alg", "the token's algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not KID.match(kid)):
            raise TokenError("unknown_kid", "the token's key id (kid) is not valid")
        key = self._key_for(keys, alg, kid)
        try:
            claims = jwt.decode(
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
        self._check_times(claims, now)
        return self._identity(claims, now)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        leeway = self._settings.leeway_s
        times = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenError("malformed", f"the token's '{name}' is not a number")
            times[name] = float(value)
        if times["exp"] <= now - leeway:
            raise TokenError("expired", "the token has expired")
        if times.get("nbf", now) > now + leeway or times.get("iat", now) > now + leeway:
            raise TokenError("not_yet_valid", "the token is not valid yet")

    def _identity(self, claims: Mapping[str, Any], now: float) -> Identity:
        try:
            user, roles, tenant = self._claims.extract(claims)
        except ClaimError as err:
            raise TokenError(err.reason, err.detail) from None
        exp = float(claims["exp"]) + self._settings.leeway_s
        return Identity(user=user, roles=roles, tenant=tenant, expires_at=exp)


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
