"""`ProxyHint`: one log line when most checks come from one address and no proxy is trusted."""

from __future__ import annotations

import logging

import pytest

from ext_authz.decision import CheckInput, Decision, Outcome
from ext_authz.observers import ProxyHint


def decision(client: str) -> Decision:
    request = CheckInput("GET", "/", {}, {}, client)
    return Decision(request, Outcome(200, "ok", "ok", "r"), None, "svc", 0.0, 1, client)


def hints(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "trusted-proxy-hops" in r.getMessage()]


def test_most_checks_from_one_address_with_no_trusted_hop_say_which_setting_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hint = ProxyHint(0, logging.getLogger("test"), checks=100)
    for n in range(300):
        hint.observe(decision("10.0.0.1" if n % 20 else f"192.0.2.{n}"))
    (record,) = hints(caplog)
    assert record.levelno == logging.WARNING
    assert record.fields == {"address": "10.0.0.1", "checks": 100, "from_address": 95}  # type: ignore[attr-defined]


def test_no_hint_with_a_trusted_hop_or_spread_traffic(caplog: pytest.LogCaptureFixture) -> None:
    trusted = ProxyHint(1, logging.getLogger("test"), checks=10)
    spread = ProxyHint(0, logging.getLogger("test"), checks=10)
    for n in range(100):
        trusted.observe(decision("10.0.0.1"))
        spread.observe(decision(f"192.0.2.{n % 3}"))
    assert hints(caplog) == []
