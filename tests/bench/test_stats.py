"""Latency statistics against known inputs."""

from __future__ import annotations

import pytest

from bench.stats import Latencies, exact_percentile


def uniform_ms(n: int) -> Latencies:
    lat = Latencies()
    for ms in range(1, n + 1):
        lat.record(ms / 1000)
    return lat


def test_percentiles_of_a_known_distribution():
    summary = uniform_ms(1000).summary()
    assert summary is not None
    # HDR keeps 3 significant digits: values are exact to within 0.1 %.
    assert summary["count"] == 1000
    assert summary["min"] == pytest.approx(1.0, rel=1e-3)
    assert summary["p50"] == pytest.approx(500.0, rel=1e-3)
    assert summary["p90"] == pytest.approx(900.0, rel=1e-3)
    assert summary["p99"] == pytest.approx(990.0, rel=1e-3)
    assert summary["p99.9"] == pytest.approx(999.0, rel=1e-3)
    assert summary["max"] == pytest.approx(1000.0, rel=1e-3)
    assert summary["mean"] == pytest.approx(500.5, rel=1e-3)


def test_merge_equals_recording_everything_in_one():
    a, b, both = Latencies(), Latencies(), Latencies()
    for ms in range(1, 501):
        a.record(ms / 1000)
        both.record(ms / 1000)
    for ms in range(2000, 2100):
        b.record(ms / 1000)
        both.record(ms / 1000)
    merged = Latencies.merged([a, b])
    assert merged.summary() == both.summary()
    assert merged.count == 600
    assert merged.percentile_ms(99) == pytest.approx(2094.0, rel=1e-3)


def test_encoded_histogram_round_trips():
    lat = uniform_ms(250)
    again = Latencies.decode(lat.encode())
    assert again.summary() == lat.summary()


def test_curve_is_monotonic_and_ends_at_the_max():
    curve = uniform_ms(1000).curve()
    percentiles = [p for p, _ in curve]
    values = [v for _, v in curve]
    assert percentiles == sorted(percentiles) and percentiles[0] == 0.0
    assert percentiles[-1] == 100.0
    assert values == sorted(values)
    assert values[-1] == pytest.approx(1000.0, rel=1e-3)
    assert any(99.0 <= p < 100.0 for p in percentiles)  # the tail is sampled


def test_empty_histogram_has_no_summary():
    assert Latencies().summary() is None
    assert Latencies().curve() == []


def test_out_of_range_values_are_clamped_not_lost():
    lat = Latencies()
    lat.record(0.0)
    lat.record(10_000.0)  # beyond the one-hour ceiling
    assert lat.count == 2


def test_exact_percentile_nearest_rank():
    assert exact_percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert exact_percentile([5.0, 1.0, 3.0, 2.0, 4.0], 99) == 5.0
    assert exact_percentile([], 99) == 0.0
