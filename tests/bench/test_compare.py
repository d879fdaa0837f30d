"""What `compare` decides between two runs, on results whose noise is known."""

from __future__ import annotations

import pytest

from bench.store import compare, compare_json
from tests.bench.synthetic import lognormal_ms, repeated, run, steady, writer


def diff(a, b, metric, name="zerobus"):
    return next(d for d in compare(a, b) if d.writer == name and d.metric == metric)


def test_one_second_each_is_not_enough_data_whatever_the_change():
    # The finding: back-to-back runs, one per-second sample each, +27.6 % called "B better".
    a = run("a", [writer("zerobus", [10_000], lognormal_ms(10, 40, 1))], duration_s=1)
    b = run("b", [writer("zerobus", [12_760], lognormal_ms(10, 40, 2))], duration_s=1)
    d = diff(a, b, "rows_per_s")
    assert d.change == pytest.approx(0.276)
    assert d.decision == "not enough data" and d.better is None
    assert d.reason == "A: an interval needs at least 5 measured seconds per run, 1 measured"


def test_latency_is_judged_by_its_own_spread_not_by_throughputs():
    # The finding: a +78.6 % p50 change called "within noise" because the throughput series
    # oscillated. Throughput swings 1k <-> 30k rows/s in both runs; latency moves clearly.
    swing = [1_000, 30_000] * 15
    a = run("a", [writer("zerobus", swing, lognormal_ms(10.0, 5_000, 1))])
    b = run("b", [writer("zerobus", swing, lognormal_ms(17.86, 5_000, 2))])
    p50 = diff(a, b, "p50_ms")
    assert p50.change == pytest.approx(0.786, abs=0.03)
    assert p50.decision == "a better" and p50.better == "a"
    assert p50.reason == "the 95 % intervals do not overlap"
    assert p50.a_interval is not None and p50.b_interval is not None
    assert p50.a_interval[1] < p50.b_interval[0]
    assert diff(a, b, "rows_per_s").decision == "within noise"  # same series


def test_two_samples_of_the_same_system_are_within_noise():
    a = run("a", [writer("zerobus", steady(40_000, 30, 1), lognormal_ms(10, 3_000, 1))])
    b = run("b", [writer("zerobus", steady(40_000, 30, 2), lognormal_ms(10, 3_000, 2))])
    for metric in ("rows_per_s", "mib_per_s", "p50_ms", "p95_ms", "p99_ms"):
        d = diff(a, b, metric)
        assert d.decision == "within noise", (metric, d)
        assert d.reason == "the 95 % intervals overlap"


def test_no_throughput_verdict_between_rate_capped_runs():
    a = run("a", [writer("zerobus", steady(1500, 30, 1), lognormal_ms(10, 3_000, 1))], rate=1500)
    b = run("b", [writer("zerobus", steady(3000, 30, 2), lognormal_ms(30, 3_000, 2))])
    rows = diff(a, b, "rows_per_s")
    assert rows.decision == "not comparable" and rows.better is None
    assert rows.reason == (
        "rate-capped (A at 1,500 rows/s): throughput follows the target rate, not what the "
        "writer can do"
    )
    assert diff(a, b, "mib_per_s").decision == "not comparable"
    assert diff(a, b, "p50_ms").decision == "a better"  # latency is still compared
    notes = compare_json(a, b)["notes"]
    assert notes[0] == "the workloads differ (rate 1500 vs None)"
    assert notes[1].endswith("; no throughput verdict is given")


def test_a_percentile_the_batches_cannot_support_is_never_compared_as_a_number():
    a = run("a", [writer("zerobus", steady(1000, 30, 1), lognormal_ms(10, 300, 1))])
    b = run("b", [writer("zerobus", steady(1000, 30, 2), lognormal_ms(50, 300, 2))])
    p99 = diff(a, b, "p99_ms")
    assert p99.decision == "not enough data"
    assert p99.reason == "A: p99 needs 1,000 batches, 300 measured"
    assert diff(a, b, "p95_ms").decision == "a better"  # 300 batches do support a p95
    mx = diff(a, b, "max_ms")
    assert mx.decision == "not enough data"
    assert mx.reason == "a maximum is a single batch: it has no interval"


def test_repeats_decide_on_their_medians():
    slow = [
        (steady(rate, 20, i), lognormal_ms(10, 2_000, i))
        for i, rate in enumerate((39e3, 40e3, 41e3))
    ]
    fast = [
        (steady(rate, 20, i), lognormal_ms(10, 2_000, 9 + i))
        for i, rate in enumerate((47e3, 48e3, 49e3))
    ]
    a = run("a", [repeated("zerobus", slow)], repeat=3)
    b = run("b", [repeated("zerobus", fast)], repeat=3)
    rows = diff(a, b, "rows_per_s")
    assert rows.decision == "b better"
    assert rows.a == a.writers[0].intervals["rows_per_s"].median  # the medians, not pooled
    assert rows.change == pytest.approx(0.2, abs=0.01)
    assert diff(a, b, "p50_ms").decision == "within noise"
    assert not any("single run" in note for note in compare_json(a, b)["notes"])


def test_failed_batches_are_compared_as_shares_of_the_batches_sent():
    a = run("a", [writer("zerobus", steady(1000, 30, 1), lognormal_ms(10, 1_000, 1))])
    b = run("b", [writer("zerobus", steady(1000, 30, 2), lognormal_ms(10, 950, 2), failed=50)])
    d = diff(a, b, "failed_batches")
    assert d.decision == "a better"
    assert d.reason == "failure shares 0.00% of 1,000 batches vs 5.00% of 1,000"
    c = run("c", [writer("zerobus", steady(1000, 30, 3), lognormal_ms(10, 998, 3), failed=2)])
    e = run("e", [writer("zerobus", steady(1000, 30, 4), lognormal_ms(10, 999, 4), failed=1)])
    assert diff(c, e, "failed_batches").decision == "within noise"


def test_writers_only_one_run_has_are_listed_not_dropped():
    z = writer("zerobus", steady(1000, 10, 1), lognormal_ms(10, 100, 1))
    a = run("a", [writer("null", [5] * 10, [0.01] * 100, stores_rows=False), z])
    b = run("b", [z, writer("sql", [500] * 10, [900.0] * 20)])
    body = compare_json(a, b)
    assert body["only_in_a"] == [{"writer": "null", "label": "null label", "status": "completed"}]
    assert body["only_in_b"] == [{"writer": "sql", "label": "sql label", "status": "completed"}]
    assert {d["writer"] for d in body["diffs"]} == {"zerobus"}
    b.environment["mode"] = "databricks"
    assert (
        compare_json(a, b)["notes"][0] == "the runs are from different modes: A local, B databricks"
    )
