"""The xDS server's Prometheus metrics, registered on a registry the caller owns."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xds_server.status import State


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected_proxies = Gauge(
            "xds_connected_proxies", "ADS streams open now", registry=registry
        )
        self.responses = Counter(
            "xds_responses_total", "Discovery responses sent", ["type"], registry=registry
        )
        self.acks = Counter(
            "xds_acks_total", "Responses Envoy accepted", ["type"], registry=registry
        )
        self.nacks = Counter(
            "xds_nacks_total", "Responses Envoy rejected", ["type"], registry=registry
        )
        self.refused_streams = Counter(
            "xds_refused_streams_total",
            "ADS streams refused, by reason (a proxy that cannot get config from us)",
            ["reason"],
            registry=registry,
        )
        self.push_ack_seconds = Histogram(
            "xds_push_ack_seconds",
            "From sending a response to Envoy's ACK or NACK of it",
            ["type"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )
        self.snapshot = Info(
            "xds_snapshot", "The snapshot being served (content-hash version)", registry=registry
        )
        self.rollbacks = Counter(
            "xds_rollbacks_total",
            "Times the fleet was moved back to the last version every proxy ACKed",
            registry=registry,
        )
        self.reloads = Counter(
            "xds_catalog_reloads_total",
            "Catalog loads by result (ok, unchanged, invalid, error; rejected: by Envoy)",
            ["result"],
            registry=registry,
        )
        self.health_transitions = Counter(
            "xds_health_transitions_total",
            "Endpoint health transitions Envoy logged (--health-event-log), by the state reached",
            ["service", "endpoint", "to"],
            registry=registry,
        )
        self.snapshot_build_seconds = Histogram(
            "xds_snapshot_build_seconds",
            "Time to validate, translate and check a catalog",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.catalog_services = Gauge(
            "xds_catalog_services", "Services in the catalog being served", registry=registry
        )
        self.catalog_valid = Gauge(
            "xds_catalog_valid",
            "1 when the catalog file on disk is the one being served, 0 after a failed reload",
            registry=registry,
        )
        self.catalog_watched = Gauge(
            "xds_catalog_watched",
            "1 while the catalog's directories are watched, 0 while they cannot be (retried "
            "every second; the file is checked meanwhile)",
            registry=registry,
        )


class ProxyStates(Collector):
    """`xds_proxies{state}`: connected proxies by the worst state of their resource types
    (synced, stale, nacked), computed when Prometheus scrapes."""

    def __init__(self, states: Callable[[], Mapping[State, int]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "xds_proxies", "Connected proxies by sync state", labels=["state"]
        )
        counts = self._states()
        for state in State:
            family.add_metric([state.lower()], counts.get(state, 0))
        yield family
