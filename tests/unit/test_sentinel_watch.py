"""How a Sentinel watch reads Sentinel's announcements (no sockets: a pool that records)."""

from __future__ import annotations

from typing import Any

import pytest

from ext_authz.ratelimit.sentinel_watch import MasterWatch

pytestmark = pytest.mark.unit


class RecordingPool:
    service_name = "mymaster"

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def follow(self, address: tuple[str, int]) -> None:
        self.calls.append(("follow", address))

    def settle(self) -> None:
        self.calls.append("settle")


def watch(pool: RecordingPool) -> MasterWatch:
    return MasterWatch(pool, [("127.0.0.1", 26379)], {})  # type: ignore[arg-type]


def test_a_promotion_of_our_service_points_the_pool_at_the_replica() -> None:
    pool = RecordingPool()
    watch(pool).on_event(
        "+failover-state-send-slaveof-noone",
        "slave 10.0.0.2:6380 10.0.0.2 6380 @ mymaster 10.0.0.1 6379",
    )
    assert pool.calls == [("follow", ("10.0.0.2", 6380))]


@pytest.mark.parametrize(
    ("channel", "data"),
    [
        ("+failover-state-send-slaveof-noone", "slave a:1 a 1 @ other 10.0.0.1 6379"),
        ("+failover-state-send-slaveof-noone", "slave a:1 a notaport @ mymaster b 2"),
        ("+failover-state-send-slaveof-noone", "garbage"),
        ("+switch-master", "other 10.0.0.1 6379 10.0.0.2 6380"),
        ("-failover-abort-no-good-slave", "master other 10.0.0.1 6379"),
        ("+sdown", "master mymaster 10.0.0.1 6379"),
        ("+switch-master", ""),
    ],
)
def test_announcements_about_other_services_or_malformed_change_nothing(
    channel: str, data: str
) -> None:
    pool = RecordingPool()
    watch(pool).on_event(channel, data)
    assert pool.calls == []


@pytest.mark.parametrize(
    ("channel", "data"),
    [
        ("+switch-master", "mymaster 10.0.0.1 6379 10.0.0.2 6380"),
        ("-failover-abort-not-elected", "master mymaster 10.0.0.1 6379"),
        ("+failover-end-for-timeout", "master mymaster 10.0.0.1 6379"),
    ],
)
def test_a_switch_or_an_abort_hands_the_choice_back_to_the_sentinels(
    channel: str, data: str
) -> None:
    pool = RecordingPool()
    watch(pool).on_event(channel, data)
    assert pool.calls == ["settle"]
