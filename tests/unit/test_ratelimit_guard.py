"""The guard answers by policy when the backend cannot decide, and reports outages once."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest

from ext_authz.ratelimit import GuardedLimiter, Limit, LimitDecision, LimiterUnavailable

LIMIT = Limit(limit=10, window_s=60, burst=5)
BACKEND_DECISION = LimitDecision(allowed=True, limit=10, remaining=7, reset_s=42, retry_after_s=0)


class FlakyBackend:
    """Fails while ``down`` is set, otherwise returns a fixed decision."""

    def __init__(self, down: bool = False) -> None:
        self.down = down

    def hit(self, key: str, limit: Limit) -> LimitDecision:
        if self.down:
            raise LimiterUnavailable("redis rate limit check failed: ConnectionError")
        return BACKEND_DECISION


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def records() -> Records:
    return Records()


def guarded(
    backend: FlakyBackend, records: Records, *, fail_open: bool, calls: list[str] | None = None
) -> GuardedLimiter:
    log = logging.getLogger(f"test.ratelimit.guard.{uuid4().hex}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(records)
    seen = calls if calls is not None else []
    return GuardedLimiter(
        backend,
        fail_open=fail_open,
        log=log,
        on_outage=lambda: seen.append("outage"),
        on_error=lambda: seen.append("error"),
    )


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_working_backend_decides(records: Records, fail_open: bool) -> None:
    limiter = guarded(FlakyBackend(), records, fail_open=fail_open)
    assert limiter.hit("k", LIMIT) == BACKEND_DECISION
    assert records.records == []


def test_failing_open_allows_with_the_full_advertised_limit(records: Records) -> None:
    limiter = guarded(FlakyBackend(down=True), records, fail_open=True)
    assert limiter.hit("k", LIMIT) == LimitDecision(
        allowed=True, limit=10, remaining=10, reset_s=0, retry_after_s=0
    )


def test_failing_closed_denies_with_a_one_second_retry(records: Records) -> None:
    decision = guarded(FlakyBackend(down=True), records, fail_open=False).hit("k", LIMIT)
    assert not decision.allowed
    assert decision.limit == 10
    assert decision.remaining == 0
    assert decision.retry_after_s == 1


def test_an_outage_is_logged_and_announced_once_but_every_error_is_counted(
    records: Records,
) -> None:
    calls: list[str] = []
    limiter = guarded(FlakyBackend(down=True), records, fail_open=True, calls=calls)
    for _ in range(5):
        limiter.hit("k", LIMIT)
    assert calls.count("error") == 5
    assert calls.count("outage") == 1
    assert len(records.records) == 1
    (record,) = records.records
    assert record.levelno == logging.WARNING
    assert "unavailable" in record.getMessage()
    fields = record.__dict__["fields"]
    assert fields["event"] == "ratelimit_unavailable"
    assert "ConnectionError" in fields["error"]


def test_recovery_is_logged_once_and_a_new_outage_is_logged_again(records: Records) -> None:
    calls: list[str] = []
    backend = FlakyBackend(down=True)
    limiter = guarded(backend, records, fail_open=False, calls=calls)
    limiter.hit("k", LIMIT)
    limiter.hit("k", LIMIT)
    backend.down = False
    assert limiter.hit("k", LIMIT) == BACKEND_DECISION
    assert limiter.hit("k", LIMIT) == BACKEND_DECISION
    backend.down = True
    limiter.hit("k", LIMIT)
    limiter.hit("k", LIMIT)
    messages = records.messages()
    assert len(messages) == 3
    assert "unavailable" in messages[0]
    assert "recovered" in messages[1]
    assert "unavailable" in messages[2]
    assert records.records[1].__dict__["fields"]["event"] == "ratelimit_recovered"
    assert calls.count("outage") == 2
    assert calls.count("error") == 4


def test_successes_before_any_outage_log_nothing(records: Records) -> None:
    backend = FlakyBackend()
    limiter = guarded(backend, records, fail_open=True)
    limiter.hit("k", LIMIT)
    backend.down = True
    limiter.hit("k", LIMIT)
    assert len(records.records) == 1
    assert "unavailable" in records.messages()[0]


def test_a_bug_in_the_backend_is_not_mistaken_for_an_outage(records: Records) -> None:
    class Broken:
        def hit(self, key: str, limit: Limit) -> LimitDecision:
            raise ZeroDivisionError

    log = logging.getLogger(f"test.ratelimit.guard.{uuid4().hex}")
    log.propagate = False
    log.addHandler(records)
    limiter = GuardedLimiter(Broken(), fail_open=True, log=log)
    with pytest.raises(ZeroDivisionError):
        limiter.hit("k", LIMIT)
    assert records.records == []
