"""Medians with 95 % intervals: the bootstrap against the spread theory predicts, and the
refusals where the sample cannot support an interval."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.intervals import INTERVAL_METRICS, Sample, intervals, of_result, seconds_of
from tests.bench.synthetic import latencies, lognormal_ms, sample, steady, writer


def test_a_single_runs_throughput_interval_matches_the_standard_error_of_its_seconds():
    rows = steady(40_000, 30, seed=1, spread=0.05)
    found = intervals([sample(rows, [])])["rows_per_s"]
    assert found.method == "bootstrap" and found.n == 1 and found.reason is None
    assert found.median == round(statistics.fmean(rows), 1)
    # The mean of 30 seconds has a standard error of stdev / sqrt(30); a 95 % interval
    # spans about 2 x 1.96 of it. The bootstrap lands within 25 % of that width.
    expected = 2 * 1.96 * statistics.stdev(rows) / math.sqrt(len(rows))
    assert found.low is not None and found.high is not None
    assert 0.75 * expected < found.high - found.low < 1.25 * expected
    assert found.low < 40_000 < found.high


def test_a_percentiles_interval_matches_the_order_statistics_of_its_batches():
    values = lognormal_ms(20.0, 10_000, seed=2)
    found = intervals([sample([1000] * 10, values)])["p50_ms"]
    ordered = sorted(values)
    # Distribution-free 95 % interval of the median: ranks n/2 -+ 1.96 sqrt(n)/2.
    half = 1.96 * math.sqrt(len(values)) / 2
    low, high = ordered[int(5000 - half)], ordered[int(5000 + half)]
    assert found.low is not None and found.high is not None
    assert abs(found.low - low) / low < 0.01 and abs(found.high - high) / high < 0.01


def test_repeats_carry_the_noise_between_runs_that_one_run_does_not_show():
    # Each run is steady within itself, but the runs sit at 36k, 40k and 44k rows/s.
    runs = [steady(rate, 30, seed=i, spread=0.01) for i, rate in enumerate((36e3, 40e3, 44e3))]
    one = intervals([sample(runs[1], [])])["rows_per_s"]
    three = intervals([sample(r, []) for r in runs])["rows_per_s"]
    assert three.method == "repeats" and three.n == 3
    assert three.median == round(statistics.median(statistics.fmean(r) for r in runs), 1)
    assert one.low is not None and three.low is not None
    assert one.high is not None and three.high is not None
    assert three.high - three.low > 10 * (one.high - one.low)
    assert three.low < 37_000 and three.high > 43_000


def test_the_same_measurements_give_the_same_interval():
    rows = steady(1000, 20, seed=3)
    assert intervals([sample(rows, lognormal_ms(5, 500, 3))]) == intervals(
        [sample(rows, lognormal_ms(5, 500, 3))]
    )


def test_refusals_say_what_the_sample_lacks():
    short = intervals([sample([5000, 5000, 5000], lognormal_ms(3, 150, 4))])
    assert short["rows_per_s"].low is None
    assert short["rows_per_s"].reason == (
        "an interval needs at least 5 measured seconds per run, 3 measured"
    )
    assert short["p50_ms"].low is not None  # 150 batches support a p50 ...
    assert short["p95_ms"].reason == "p95 needs 200 batches, 150 measured"  # ... not a p95
    assert short["p99.9_ms"].reason == "p99.9 needs 10,000 batches, 150 measured"
    assert short["p95_ms"].median == latencies(lognormal_ms(3, 150, 4)).percentile_ms(95)

    two = intervals([sample(steady(10, 30, s), lognormal_ms(3, 5000, s)) for s in (1, 2)])
    for metric in INTERVAL_METRICS[:-1]:
        assert two[metric].reason == "an interval needs at least 3 repeats (2 ran)", metric
    assert "visibility_p95_ms" not in two  # nothing measured, nothing claimed

    visibility = Sample([1.0] * 10, [1.0] * 10, [1.0] * 10, None, latencies([300.0] * 30))
    assert intervals([visibility])["visibility_p95_ms"].reason == (
        "p95 needs 200 visibility samples, 30 measured"
    )


def test_seconds_without_acks_count_as_zero_rows_over_the_real_window():
    # A SQL-like writer: 2,000-row batches acked in seconds 0 and 2 of a 3.5 s window.
    rows, size, spans = seconds_of([(0, 2000, 2e6), (2, 2000, 2e6)], 3.5)
    assert rows == [2000, 0, 2000, 0] and spans == [1.0, 1.0, 1.0, 0.5]
    assert size == [2e6, 0, 2e6, 0]
    assert Sample(rows, size, spans).rate() == (4000 / 3.5, 4e6 / 3.5)


def test_a_saved_single_run_gets_its_intervals_from_its_own_seconds_and_batches():
    w = writer("zerobus", steady(20_000, 12, seed=5), lognormal_ms(8, 600, 5))
    assert not w.intervals
    found = of_result(w)
    assert found["rows_per_s"].median == pytest.approx(w.rows_per_s, abs=0.05)
    assert w.latency_ms is not None and found["p95_ms"].median == w.latency_ms.p95
    assert found["p99_ms"].reason == "p99 needs 1,000 batches, 600 measured"
