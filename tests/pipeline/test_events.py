"""Checks of events from outside: every bad kind is named, good ones become rows."""

from __future__ import annotations

import pytest

from pipeline.events import BadEvent, check_event, events_batch

NOW = 1_800_000_000_000_000


def good(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "driver_id": "driver-00001",
        "event_time_us": NOW - 1_000,
        "latitude": 37.75,
        "longitude": -122.42,
        "status": "to_customer",
        "order_id": "order-0000007",
        "battery_pct": 80,
    }
    event.update(overrides)
    return event


def test_a_good_event_becomes_a_row_of_the_telemetry_schema() -> None:
    row = check_event(good(), NOW)
    assert row["driver_id"] == "driver-00001"
    assert row["event_time"] == NOW - 1_000
    assert row["status"] == "to_customer"
    assert row["speed_mps"] is None


@pytest.mark.parametrize(
    ("event", "kind", "reason"),
    [
        ("not an object", "malformed", "an event must be a JSON object"),
        (good(driver_id=None), "malformed", "driver_id must be a string of 1-200 characters"),
        (good(latitude="north"), "malformed", "latitude must be a finite number"),
        (good(latitude=91.0), "malformed", "latitude/longitude out of range"),
        (good(battery_pct=120), "malformed", "battery_pct must be an integer 0-100"),
        (good(event_time_us="yesterday"), "malformed", "event_time 'yesterday' is not ISO 8601"),
        (good(status="teleporting"), "unknown_status", "status 'teleporting' is not one of"),
        (good(event_time_us=NOW + 60_000_000), "clock_skew", "event_time is +60.0 s from"),
        (good(event_time_us=NOW - 7_200_000_000), "clock_skew", "event_time is -7200.0 s from"),
        (good(latitude=10**400), "malformed", "latitude must be a finite number"),
        (good(speed_mps=-(10**400)), "malformed", "speed_mps must be a finite number"),
        (good(event_time_us=10**400), "malformed", "event_time is out of range"),
        (good(event_time_us="+999999-01-01"), "malformed", "event_time '+999999-01-01' is not"),
    ],
)
def test_each_bad_event_is_refused_with_its_kind(event: object, kind: str, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        check_event(event, NOW)
    assert info.value.kind == kind
    assert str(info.value).startswith(reason)


def test_a_batch_keeps_the_good_events_and_counts_the_bad() -> None:
    kinds: list[str] = []
    batch = events_batch(
        [good(), good(status="flying"), 7, good(driver_id="driver-00002")],
        batch_id="ext-1",
        source="external",
        now_us=NOW,
        bad=kinds.append,
    )
    assert batch is not None
    assert batch.column("driver_id").to_pylist() == ["driver-00001", "driver-00002"]
    assert batch.column("batch_id").to_pylist() == ["ext-1", "ext-1"]
    assert kinds == ["unknown_status", "malformed"]


def test_a_batch_of_only_bad_events_is_none() -> None:
    kinds: list[str] = []
    assert events_batch([{}], batch_id="b", source="s", now_us=NOW, bad=kinds.append) is None
    assert kinds == ["malformed"]
