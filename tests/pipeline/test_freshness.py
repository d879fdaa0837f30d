"""Freshness histograms: the app's and the stack's merge; summaries and the waterfall."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from pipeline.freshness import Freshness, waterfall


def test_hops_recorded_here_and_encoded_elsewhere_merge() -> None:
    f = Freshness()
    f.record_us("synced", "ack", [10_000] * 99 + [500_000])
    other = HdrHistogram(1, 3_600_000_000, 3)
    for _ in range(10):
        other.record_value(2_000_000)
    merged = f.merged_with({"synced": {"silver": other.encode().decode(), "bronze": None}})
    summary = merged.summary()
    assert summary["synced"]["ack"]["count"] == 100
    assert 9.9 <= summary["synced"]["ack"]["p50"] <= 10.1
    assert 499 <= summary["synced"]["ack"]["max"] <= 501
    assert summary["synced"]["silver"]["count"] == 10
    assert 1990 <= summary["synced"]["silver"]["p95"] <= 2010
    assert "bronze" not in summary["synced"]  # no data, no entry
    assert summary["realtime"] == {}
    # the original is untouched
    assert f.summary()["synced"].keys() == {"ack"}


def test_a_negative_lag_counts_as_one_microsecond() -> None:
    f = Freshness()
    f.record_us("realtime", "browser", [-5_000])
    assert f.summary()["realtime"]["browser"]["max"] == 0.001


def test_the_waterfall_lists_every_hop_of_each_path() -> None:
    f = Freshness()
    f.record_us("realtime", "postgres", [150_000])
    text = waterfall(f.summary())
    lines = text.splitlines()
    assert lines[0] == "realtime path (ms from event time)"
    assert [line.split()[0] for line in lines[2:6]] == ["ack", "postgres", "ws_sent", "browser"]
    assert lines[3].split()[-1] == "1"
    assert "synced path (ms from event time)" in lines
