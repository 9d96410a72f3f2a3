"""Reading Prometheus metrics in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (other labels summed over)."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and _has(sample.labels, labels)
    )


def scraped(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples, in a /metrics page's `text`, whose labels include `labels`
    (0 when there is none: a labelled counter appears only once it has counted)."""
    return sum(s.value for s in scraped_samples(text, name) if _has(s.labels, labels))


def scraped_samples(text: str, name: str) -> list[Sample]:
    """`name`'s samples in a /metrics page's `text`."""
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _has(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())
