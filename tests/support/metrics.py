"""Reading Prometheus metrics in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (other labels summed over)."""
    found = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found
