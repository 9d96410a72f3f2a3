"""`BoundedMap`: the one bounded mapping of the project (caches, histories, per-key state).

A plain `OrderedDict` that never holds more than `size` entries: storing a key makes it the
newest, and storing past `size` drops the oldest. `touch` finds a key and makes it the newest,
so a map read through `touch` is a least-recently-used cache; one read by `[]`/`get` keeps the
order things were stored in. A `size` of 0 or less keeps nothing.

Not thread-safe, like `OrderedDict`: an owner shared by threads holds its own lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(OrderedDict[K, V]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def touch(self, key: K) -> V | None:
        """The value of `key`, now the newest entry; None when absent."""
        found = self.get(key)
        if found is not None:
            self.move_to_end(key)
        return found

    def oldest(self) -> K | None:
        """The key that the next store past `size` would drop; None when empty."""
        return next(iter(self), None)
