"""JWT verification: keys, algorithms, claims, and a cache of verified tokens.

`TokenVerifier.verify(token)` returns an `Identity` or raises `TokenError` whose `reason` is a
short code safe to show a client and to log. Nothing here logs or returns the token.

Keys and algorithms:
- HS256/384/512 use the shared secret, and nothing else: an RSA public key is never used as an
  HMAC secret (algorithm confusion), and PyJWT refuses PEM-looking secrets as well.
- RS256/384/512, PS256, ES256/384 and EdDSA use the JWKS key named by `kid`; the key's type
  (and its `alg`, when the JWK states one) must fit the token's algorithm. A `kid` is a short
  token of letters, digits, `.`, `_`, `-`; anything else is refused before any lookup.
- `alg: none` and every algorithm not listed are refused.

Claims: `exp` and the user claim are required; `nbf` and `iat` must not be in the future beyond
the leeway; issuer and audience are enforced when configured.

Cache: verified tokens are kept in a bounded LRU keyed by the token. An entry is never used
after its `exp` (plus leeway), and every key change empties the cache.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

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
_KID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class TokenError(Exception):
    """The token cannot be trusted. `reason` is a short code; `detail` a human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class KeyConfigError(Exception):
    """The configured keys cannot be used (startup refuses to continue)."""


@dataclass(frozen=True)
class Identity:
    user: str
    roles: tuple[str, ...]
    tenant: str | None
    expires_at: float


@dataclass(frozen=True)
class ClaimNames:
    user: str = "sub"
    roles: str = "roles"
    role: str = "role"
    tenant: str = "tenant_id"


@dataclass(frozen=True)
class VerifierSettings:
    secret: bytes | None = None
    jwks: str | None = None  # a file path or an https URL
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0
    claims: ClaimNames = ClaimNames()
    max_token_bytes: int = 8192
    cache_size: int = 10_000
    jwks_refresh_min_s: float = 5.0


@dataclass(frozen=True)
class Jwk:
    """One verification key from a JWKS."""

    key: Any  # the cryptography public key PyJWT verifies with
    kty: str
    alg: str | None
    crv: str | None
    raw: Mapping[str, Any]


class _Keys:
    """An immutable key set: the secret and the JWKS keys by kid."""

    def __init__(self, secret: bytes | None, jwks: Mapping[str, Jwk]) -> None:
        self.secret = secret
        self.jwks = dict(jwks)


def _read_jwks_source(source: str) -> dict[str, Any]:
    if source.startswith("https://") or source.startswith("http://"):
        with urllib.request.urlopen(source, timeout=2) as resp:  # noqa: S310 (configured URL)
            data = json.load(resp)
    else:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyConfigError(f"{source}: not a JWKS (an object with a 'keys' list)")
    return data


def parse_jwks(data: Mapping[str, Any], source: str = "JWKS") -> dict[str, Jwk]:
    keys: dict[str, Jwk] = {}
    for i, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, dict):
            raise KeyConfigError(f"{source}: keys[{i}] is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
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
    def __init__(self, settings: VerifierSettings, clock: Clock = time.time) -> None:
        if settings.secret is None and settings.jwks is None:
            raise KeyConfigError(
                "no key configured: set SIDECAR_JWT_SECRET or SIDECAR_JWT_SECRET_FILE "
                "(HS256/384/512) or SIDECAR_JWKS (a JWKS file or https URL)"
            )
        if settings.secret is not None and len(settings.secret) < 32:
            raise KeyConfigError("the JWT secret must be at least 32 bytes")
        self._settings = settings
        self._clock = clock
        self._cache = TokenCache(settings.cache_size)
        self._refresh_lock = threading.Lock()
        self._last_refresh = clock()
        self._keys = _Keys(settings.secret, self._load_jwks() if settings.jwks else {})

    @property
    def cache(self) -> TokenCache:
        return self._cache

    def _load_jwks(self) -> dict[str, Jwk]:
        assert self._settings.jwks is not None
        try:
            return parse_jwks(_read_jwks_source(self._settings.jwks), self._settings.jwks)
        except (OSError, ValueError) as err:
            raise KeyConfigError(f"{self._settings.jwks}: cannot load JWKS: {err}") from None

    def set_secret(self, secret: bytes | None) -> None:
        """Replace the HMAC secret (rotation); cached tokens are forgotten."""
        self._keys = _Keys(secret, self._keys.jwks)
        self._cache.clear()

    def refresh_jwks(self) -> bool:
        """Reload the JWKS now; True if it changed. Cached tokens are forgotten on change."""
        if self._settings.jwks is None:
            return False
        with self._refresh_lock:
            self._last_refresh = self._clock()
            try:
                fresh = self._load_jwks()
            except KeyConfigError:
                return False
            if {k: v.raw for k, v in fresh.items()} == {
                k: v.raw for k, v in self._keys.jwks.items()
            }:
                return False
            self._keys = _Keys(self._keys.secret, fresh)
            self._cache.clear()
            return True

    def _key_for(self, alg: str, kid: str | None) -> Any:
        keys = self._keys
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
        if key is None and self._may_refresh():
            self.refresh_jwks()
            key = self._keys.jwks.get(kid)
        if key is None:
            raise TokenError("unknown_kid", "the token's key (kid) is not known")
        if not _fits(alg, key):
            raise TokenError("bad_signature", "the token's algorithm does not fit its key")
        return key.key

    def _may_refresh(self) -> bool:
        return (
            self._settings.jwks is not None
            and self._clock() - self._last_refresh >= self._settings.jwks_refresh_min_s
        )

    def verify(self, token: str) -> Identity:
        now = self._clock()
        cached = self._cache.get(token, now)
        if cached is not None:
            return cached
        identity = self._verify_uncached(token, now)
        self._cache.put(token, identity)
        return identity

    def _verify_uncached(self, token: str, now: float) -> Identity:
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
        if kid is not None and (not isinstance(kid, str) or not _KID.match(kid)):
            raise TokenError("unknown_kid", "the token's key id (kid) is not valid")
        key = self._key_for(alg, kid)
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
        names = self._settings.claims
        user = claims.get(names.user)
        if not isinstance(user, str) or not user:
            raise TokenError("missing_claim", f"the token has no '{names.user}' claim")
        raw_roles = claims.get(names.roles)
        if raw_roles is None:
            raw_roles = claims.get(names.role)
        if isinstance(raw_roles, str):
            roles: tuple[str, ...] = (raw_roles,)
        elif isinstance(raw_roles, list) and all(isinstance(r, str) for r in raw_roles):
            roles = tuple(raw_roles)
        elif raw_roles is None:
            roles = ()
        else:
            raise TokenError("malformed", f"the '{names.roles}' claim is not a list of strings")
        tenant = claims.get(names.tenant)
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise TokenError("malformed", f"the '{names.tenant}' claim is not a string")
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
) -> str:
    """An HS256 token for trying things out (`sidecar token`)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        claims.user: sub,
        claims.roles: roles,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if tenant is not None:
        payload[claims.tenant] = tenant
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    return jwt.encode(payload, secret, algorithm="HS256")
