"""Small fakes shared by unit tests."""

from __future__ import annotations


class FakeClock:
    """A settable clock, in seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
