"""A run that lost data says so: the fleet's unacknowledged events and the real-time
sink's failed rows make the run's error (pipeline.run.lost_data)."""

from __future__ import annotations

from pipeline.fleet import FleetCounters
from pipeline.fleet_process import FleetReport
from pipeline.run import lost_data


def test_a_run_that_lost_nothing_has_no_error() -> None:
    report = FleetReport(
        counters=FleetCounters(produced=1000, acked=1000, batches=10),
        sink={"rows_written": 1000, "failed_rows": 0, "last_error": None},
    )
    assert lost_data(report, "zerobus") is None
    # On a workspace there is no sink here (the bundle's job writes).
    assert lost_data(FleetReport(counters=FleetCounters(produced=5, acked=5)), "zerobus") is None


def test_unacknowledged_events_and_failed_rows_are_the_runs_error() -> None:
    report = FleetReport(
        counters=FleetCounters(
            produced=1000,
            acked=900,
            failed=100,
            errors={"WriteFailedError": 1},
            error_samples=["WriteFailedError: the stream was closed"],
        ),
        sink={"rows_written": 850, "failed_rows": 50, "last_error": "connection lost"},
    )
    assert lost_data(report, "zerobus-json") == (
        "100 of 1,000 events were not acknowledged by zerobus-json (first error: "
        "WriteFailedError: the stream was closed); 50 rows did not reach the real-time "
        "table (refused, or failing 5 attempts; last error: connection lost)"
    )
