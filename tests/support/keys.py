"""Signing keys for tests, made fresh per session: RSA, EC P-256/P-384, Ed25519, and a JWKS."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private: Any
    public_jwk: dict[str, Any]

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@cache
def rsa_key(kid: str = "rsa-1") -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    return KeyPair(kid, private, {**jwk, "kid": kid, "use": "sig"})


@cache
def ec_key(kid: str = "ec-256", curve: str = "P-256") -> KeyPair:
    private = ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    return KeyPair(kid, private, {**jwk, "kid": kid})


@cache
def ed_key(kid: str = "ed-1") -> KeyPair:
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    return KeyPair(kid, private, {**jwk, "kid": kid})


def write_jwks(path: Path, *pairs: KeyPair) -> Path:
    path.write_text(json.dumps({"keys": [p.public_jwk for p in pairs]}))
    return path
