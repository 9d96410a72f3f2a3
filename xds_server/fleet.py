"""What happens when Envoy rejects a config: the fleet never stays split.

When a proxy NACKs a response:
- if another proxy has ACKed that very content, the fault is the proxy's (its listener port is
  taken, say), not the version's: the NACK shows on that proxy (status, log, metric) and the
  fleet goes on;
- otherwise the snapshot the response came from is marked rejected, and so is the snapshot
  served now if it holds the same rejected content (a later edit that kept it); a rejected
  version is never served again (the reloader refuses it, saying why), so the fleet does not
  churn on it;
- Envoy's message is logged by the stream, counted (`xds_nacks_total`), shown per proxy in
  the status, and here listed under the rejected versions, and the reload that produced the
  version served now is reported "rejected by Envoy";
- with rollback on (the default), when the version served now is rejected, every proxy is moved
  back to the newest kept version that every connected proxy has ACKed, that was not rejected,
  and whose version of the rejected type differs from the one rejected (otherwise rolling back
  would send again what was rejected: a fault of one proxy, not of the catalog). With no such
  version the fleet holds where it is. The next valid edit moves every proxy forward again.

All of it runs on the event loop's thread, like the streams and the cache.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from xds_server import typeurls
from xds_server.cache import SnapshotCache
from xds_server.metrics import XdsMetrics
from xds_server.proxies import ProxyRegistry
from xds_server.status import RejectionReport
from xds_server.stream_state import Nack

KEPT = 64  # rejected versions listed in the status


@dataclass
class Rejection:
    version: str  # the snapshot version rejected
    node_id: str
    type_url: str
    error: str
    at: float
    rollback: bool  # whether rollback was on
    rolled_back_to: str | None = None

    def describe(self) -> str:
        short = typeurls.SHORT_NAMES.get(self.type_url, self.type_url)
        head = (
            f"version {self.version} was rejected by Envoy "
            f"(node {self.node_id or '?'}, {short}): {self.error}"
        )
        if self.rolled_back_to is not None:
            return f"{head}; every proxy was rolled back to {self.rolled_back_to}"
        if not self.rollback:
            return f"{head}; rollback is off"
        return f"{head}; no version every proxy accepted to roll back to"

    def report(self) -> RejectionReport:
        return RejectionReport(
            self.version,
            self.node_id,
            typeurls.SHORT_NAMES.get(self.type_url, self.type_url),
            self.error,
            self.at,
            self.rolled_back_to,
        )


class Fleet:
    def __init__(
        self,
        cache: SnapshotCache,
        proxies: ProxyRegistry,
        metrics: XdsMetrics,
        log: logging.Logger,
        rollback: bool,
        on_rejected: Callable[[Rejection], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._proxies = proxies
        self._metrics = metrics
        self._log = log
        self.rollback = rollback
        self._on_rejected = on_rejected
        self._clock = clock
        self._rejections: OrderedDict[str, Rejection] = OrderedDict()

    def on_nack(self, nack: Nack) -> None:
        if any(nack.version in acked.get(nack.type_url, ()) for acked in self._proxies.acked()):
            self._log.warning(
                "a proxy rejected what others accepted; the version stays",
                extra={"fields": {"node_id": nack.node_id, "version": nack.snapshot_version}},
            )
            return
        current = self._cache.current()
        holding = [nack.snapshot_version]
        if (
            current is not None
            and current.version != nack.snapshot_version
            and current.versions.get(nack.type_url) == nack.version
        ):
            holding.append(current.version)
        fresh = [v for v in holding if v not in self._rejections]
        for version in fresh:
            rejection = Rejection(
                version, nack.node_id, nack.type_url, nack.error, self._clock(), self.rollback
            )
            self._rejections[version] = rejection
            self._cache.reject(version, rejection.describe())
        while len(self._rejections) > KEPT:
            self._rejections.popitem(last=False)
        if current is None or current.version not in fresh:
            return  # not what is served now, or already handled at another proxy's NACK
        rejection = self._rejections[current.version]
        if self.rollback:
            target = self._cache.last_acked_by_all(
                self._proxies.acked(),
                where=lambda s: s.versions.get(nack.type_url) != nack.version,
            )
            if target is not None:
                rejection.rolled_back_to = target.version
                self._cache.set(target)
                self._metrics.rollbacks.inc()
        self._log.error(
            "a version was rejected by Envoy",
            extra={"fields": {**rejection.report().to_json(), "detail": rejection.describe()}},
        )
        self._on_rejected(rejection)

    def report(self) -> tuple[RejectionReport, ...]:
        """The rejected versions still remembered, newest first."""
        return tuple(r.report() for r in reversed(self._rejections.values()))
