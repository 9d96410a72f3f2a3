"""The JWKS source tells the operator what it does: fetches, failures and recoveries are logged
once per outage and counted, the key set's age is exported, unknown-kid refetches are logged,
and `Cache-Control: max-age` paces refreshes within bounds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ext_authz.keys import KeyConfigError, KeySettings, KeySource, max_age
from ext_authz.metrics import KeyMetrics
from tests.support.fakes import FakeClock
from tests.support.keys import ec_key, rsa_key, write_jwks
from tests.support.wait import wait_until

LOG = "test-keys"


def source(
    jwks: Path, clock: FakeClock, registry: CollectorRegistry | None = None, **kw: object
) -> KeySource:
    settings = KeySettings(jwks=str(jwks), **kw)  # type: ignore[arg-type]
    metrics = KeyMetrics(registry) if registry is not None else None
    keys = KeySource(settings, logging.getLogger(LOG), clock, metrics)
    keys.load()
    return keys


def value(registry: CollectorRegistry, name: str) -> float:
    found = registry.get_sample_value(name)
    assert found is not None, name
    return found


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("public, max-age=120", 120.0),
        ('max-age="60", must-revalidate', 60.0),
        ("MAX-AGE=10", 10.0),
        ("max-age=-5", 0.0),
        ("max-age=soon", None),
        ("no-cache", 0.0),
        ("private, no-store, max-age=600", 0.0),
    ],
)
def test_max_age_is_read_from_cache_control(header: str | None, seconds: float | None) -> None:
    assert max_age(header) == seconds


def test_an_outage_is_logged_once_counted_and_its_end_logged_with_its_length(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key())
    clock = FakeClock(100.0)
    registry = CollectorRegistry()
    keys = source(path, clock, registry)
    assert value(registry, "ext_authz_jwks_fetches_total") == 1
    path.write_text("{not json")
    with caplog.at_level(logging.INFO, logger=LOG):
        for _ in range(3):
            clock.now += 30
            assert keys.refresh() is False
        assert value(registry, "ext_authz_jwks_fetch_failures_total") == 3
        assert value(registry, "ext_authz_jwks_age_seconds") == 90
        assert keys.current().jwks.keys() == {"rsa-1"}  # the last good keys stay
        write_jwks(path, rsa_key())
        clock.now += 30
        keys.refresh()
    assert value(registry, "ext_authz_jwks_fetches_total") == 5
    assert value(registry, "ext_authz_jwks_age_seconds") == 0
    assert messages(caplog) == [
        "cannot reload verification keys; the last good ones stay in use",
        "verification keys readable again",
    ]
    recovered = caplog.records[-1].__dict__["fields"]
    assert recovered["failures"] == 3
    assert recovered["outage_s"] == 90.0  # from the first failure to the recovery


def test_a_refetch_for_an_unknown_kid_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key())
    registry = CollectorRegistry()
    keys = source(path, FakeClock(0.0), registry)
    with caplog.at_level(logging.INFO, logger=LOG):
        keys.unknown_kid("made-up")
        keys.refetch_for_unknown_kid()
        write_jwks(path, rsa_key(), ec_key("ec-new"))
        keys.unknown_kid("ec-new")
        keys.refetch_for_unknown_kid()
    assert value(registry, "ext_authz_jwks_unknown_kid_refetches_total") == 2
    logged = [
        (r.getMessage(), r.__dict__["fields"]["kid"], r.__dict__["fields"]["found"])
        for r in caplog.records
        if "unknown key id" in r.getMessage()
    ]
    assert logged == [
        ("JWKS refetched for an unknown key id; the JWKS does not have it", "made-up", False),
        ("JWKS refetched for an unknown key id", "ec-new", True),
    ]


def test_a_ca_file_without_an_https_source_is_refused(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key())
    with pytest.raises(KeyConfigError, match="SIDECAR_JWKS_CA_FILE is set but"):
        source(path, FakeClock(0.0), jwks_ca_file=tmp_path / "ca.pem")


def test_a_ca_file_that_is_not_a_pem_bundle_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(KeyConfigError, match=r"SIDECAR_JWKS_CA_FILE=.*ca\.pem: not a readable"):
        KeySource(KeySettings(jwks="https://idp.invalid/jwks", jwks_ca_file=bad)).load()


@pytest.mark.parametrize("with_jwks", [False, True])
def test_the_refresher_wakes_about_once_per_interval_and_never_spins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_jwks: bool
) -> None:
    # A busy refresher thread takes the GIL from every check: ext_authz slowed tenfold once
    # a secret-only setup passed its first refresh interval.
    jwks = str(write_jwks(tmp_path / "jwks.json", rsa_key())) if with_jwks else None
    settings = KeySettings(secret=b"s" * 40, jwks=jwks, refresh_s=0.05, refresh_min_s=0.05)
    keys = KeySource(settings, logging.getLogger("test"))
    keys.load()
    calls: list[float] = []
    real = keys.refresh

    def counted(**kw: bool) -> bool:
        calls.append(time.monotonic())
        return real(**kw)

    monkeypatch.setattr(keys, "refresh", counted)
    keys.start()
    try:
        wait_until(lambda: len(calls) >= 4, timeout=10, what="four refreshes")
    finally:
        keys.stop()
    # Four refreshes (the secret and the JWKS may fall due apart) took at least an interval:
    # the loop waited between them. A spinning loop makes them microseconds apart.
    assert calls[3] - calls[0] >= 0.05 * 0.9


def test_a_key_source_reads_nothing_until_it_is_loaded(tmp_path: Path) -> None:
    # Construction only checks the settings; the fetch (and its refusal) is load()'s.
    missing = tmp_path / "not-yet.json"
    keys = KeySource(KeySettings(jwks=str(missing)), logging.getLogger(LOG))
    assert keys.current().jwks == {} and keys.current().secret is None
    with pytest.raises(RuntimeError, match="before load"):
        keys.start()
    with pytest.raises(KeyConfigError, match="cannot load JWKS"):
        keys.load()
    loaded = KeySource(KeySettings(jwks=str(write_jwks(tmp_path / "jwks.json", rsa_key()))))
    assert loaded.load() is loaded.current() and len(loaded.current().jwks) == 1
