"""Unit tests open no network sockets: a test that needs one belongs in tests/integration."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_NETWORK = (socket.AF_INET, socket.AF_INET6)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    def guard(real: Any) -> Any:
        def call(self: socket.socket, *args: Any) -> Any:
            if self.family in _NETWORK:
                raise AssertionError("a unit test opened a network socket: make it integration")
            return real(self, *args)

        return call

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "bind", guard(real_bind))
    yield
