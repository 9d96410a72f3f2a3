"""Route policies as our xDS server sends them: signed with the tests' policy key, which every
ext_authz a test starts is given (`POLICY_KEY_FILE`)."""

from __future__ import annotations

from pathlib import Path

from sidecar_shared import contract
from sidecar_shared.contract import RoutePolicy, read_policy_keys, sign

POLICY_KEY_FILE = Path(__file__).with_name("policy.key")
POLICY_KEY = read_policy_keys(POLICY_KEY_FILE)[0]
POLICY_KEY_ENV = {"SIDECAR_POLICY_KEY_FILE": str(POLICY_KEY_FILE)}


def encode(policy: RoutePolicy) -> str:
    """`policy` encoded and signed, as a route carries it."""
    return sign(contract.encode(policy), POLICY_KEY)
