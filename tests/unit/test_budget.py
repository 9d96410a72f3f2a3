"""The failed-authentication budget spends itself on work that failed: a well-formed token that
verifies is never refused by it, and forged asymmetric signatures from an address over budget
run only within that address's allowance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from ext_authz import tokens
from ext_authz.budget import FailureBudget
from ext_authz.core import GuardSettings
from ext_authz.decision import CheckInput, Outcome
from ext_authz.tokens import TokenVerifier, VerifierSettings
from sidecar_shared.contract import POLICY_KEY, RoutePolicy
from tests.support.authorizers import Wired, key_source, make_authorizer
from tests.support.fakes import FakeClock
from tests.support.keys import ec_key, write_jwks
from tests.support.policies import encode

SECRET = b"budget-test-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000.0
POLICY = encode(RoutePolicy(service="orders", rbac_required=False))
ADDRESS = "198.51.100.7"


def hs(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(NOW) + 600}, SECRET, "HS256")


def es(sub: str) -> str:
    key = ec_key()
    return jwt.encode({"sub": sub, "exp": int(NOW) + 600}, key.private, "ES256", {"kid": key.kid})


def forged_es(n: int) -> str:
    """A well-formed ES256 token naming a known key, whose signature is not that key's."""
    head, payload, _ = es(f"forger-{n}").split(".")
    other = es(f"other-{n}").split(".")[2]
    return f"{head}.{payload}.{other}"


def wired(tmp_path: Path, clock: FakeClock, **guard: Any) -> Wired:
    jwks = write_jwks(tmp_path / "jwks.json", ec_key())
    keys = key_source(SECRET, jwks=jwks, clock=clock)
    verifier = TokenVerifier(VerifierSettings(), keys, clock)
    return make_authorizer(verifier, clock, guard=GuardSettings(**guard))


def check(w: Wired, token: str | None, ip: str = ADDRESS) -> Outcome:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return w.authorizer.check(CheckInput("GET", "/orders/1", headers, {POLICY_KEY: POLICY}, ip))


def spend(w: Wired, n: int) -> None:
    for i in range(n):
        assert check(w, f"garbage.{i}.x").status in (401, 429)


def test_a_fresh_valid_token_from_an_address_whose_budget_is_spent_is_allowed(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    w = wired(tmp_path, clock, failure_budget=5, failure_window_s=10)
    spend(w, 50)
    assert check(w, "garbage.again.x").status == 429
    for n in range(20):  # fresh sessions, each with a token never seen before
        assert check(w, hs(f"user-{n}")).status == 200
        assert check(w, es(f"es-user-{n}")).status == 200
    # What fails is still a 429 with Retry-After, and counts.
    refused = check(w, hs("x")[:-3] + "AAA")
    assert (refused.status, refused.reason) == (429, "auth_failures")
    assert check(w, None).status == 429


def test_forged_asymmetric_signatures_from_an_address_over_budget_run_within_its_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(NOW)
    w = wired(tmp_path, clock, failure_budget=1, failure_window_s=10, costly_per_s=3)
    checked: list[str] = []
    real = tokens._check_asymmetric

    def counting(token: str, key: Any, alg: str) -> None:
        checked.append(token)
        real(token, key, alg)

    monkeypatch.setattr(tokens, "_check_asymmetric", counting)
    spend(w, 1)
    # A valid token's check gives its slot back: it never spends the allowance.
    valid = [es(f"valid-{n}") for n in range(5)]
    for token in valid:
        assert check(w, token).status == 200
    outs = [check(w, forged_es(n)) for n in range(10)]
    assert [o.status for o in outs] == [429] * 10
    assert len(checked) == 5 + 3  # three forged signatures checked this second, no more
    assert dict(outs[-1].response_headers)["retry-after"] == "1"
    # A fresh valid asymmetric token waits for the next second; HMAC and cached ones do not.
    assert check(w, es("late")).status == 429
    assert check(w, hs("hmac-user")).status == 200
    assert check(w, valid[0]).status == 200
    clock.now += 1
    assert check(w, es("late")).status == 200
    # Another address has an allowance (and a budget) of its own.
    assert check(w, forged_es(99), ip="203.0.113.9").status == 401


def test_a_deferred_token_is_not_remembered_as_refused(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    w = wired(tmp_path, clock, failure_budget=1, failure_window_s=60, costly_per_s=0)
    spend(w, 1)
    token = es("patient")
    assert check(w, token).status == 429
    assert check(w, token, ip="203.0.113.9").status == 200


def test_the_allowance_counts_failed_checks_per_address_and_second() -> None:
    clock = FakeClock(NOW)
    budget = FailureBudget(1, 10, clock, costly_per_s=2)
    gates = [budget.allowance("a") for _ in range(3)]
    assert [g() for g in gates] == [True, True, False]
    gates[0].succeeded()  # a check that succeeded gives its slot back
    assert budget.allowance("a")()
    assert not budget.allowance("a")()
    assert budget.allowance("b")()
    clock.now += 1
    assert budget.allowance("a")()
