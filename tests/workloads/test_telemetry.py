"""The telemetry fleet: plausible movement, monotonic event times, deliveries that progress."""

from __future__ import annotations

import collections

import numpy as np

from workloads.base import Rows
from workloads.telemetry import SCHEMA, STATUSES, TABLE, City, Fleet, FleetRows

START_US = 1_800_000_000_000_000


def run_fleet(drivers: int, events_per_tick: int, ticks: int, tick_us: int = 250_000):
    fleet = Fleet(drivers, seed=4)
    clock = {"now": START_US}
    rows = FleetRows(TABLE, fleet, clock=lambda: clock["now"])
    batches = []
    for k in range(ticks):
        clock["now"] += tick_us
        batches.append(rows(k, events_per_tick, f"b-{k:05d}", "zerobus"))
    return fleet, batches


def test_events_are_monotonic_inside_the_city_and_deliveries_progress() -> None:
    fleet, batches = run_fleet(drivers=40, events_per_tick=100, ticks=2400)  # 10 simulated minutes
    city = fleet.city
    last_time: dict[str, int] = {}
    last_status: dict[str, str] = {}
    seen = collections.Counter()
    transitions = collections.Counter()
    jittered = 0
    total = 0
    for batch in batches:
        assert batch.schema == SCHEMA.arrow()
        cols = batch.to_pydict()
        times = batch.column("event_time").cast("int64").to_pylist()
        for driver, t, status, lat, lon, speed, acc in zip(
            cols["driver_id"],
            times,
            cols["status"],
            cols["latitude"],
            cols["longitude"],
            cols["speed_mps"],
            cols["accuracy_m"],
            strict=True,
        ):
            assert t > last_time.get(driver, 0)
            last_time[driver] = t
            assert city.south - 0.001 < lat < city.north + 0.001
            assert city.west - 0.001 < lon < city.east + 0.001
            assert 0 <= speed <= 16
            jittered += acc >= 20
            total += 1
            seen[status] += 1
            previous = last_status.get(driver)
            if previous is not None and previous != status:
                transitions[(previous, status)] += 1
            last_status[driver] = status
    assert set(seen) == set(STATUSES)
    # Always forward through a delivery (a state shorter than the gap between two fixes
    # can go unreported, as with a real phone), and mostly one step at a time.
    steps = collections.Counter()
    for (before, after), n in transitions.items():
        step = (STATUSES.index(after) - STATUSES.index(before)) % len(STATUSES)
        assert step in (1, 2), (before, after)
        steps[step] += n
    assert steps[1] > 20 * steps[2]
    assert 0.01 < jittered / total < 0.06
    assert len(set(last_time)) == 40


def test_deterministic_from_the_seed_with_unique_event_ids() -> None:
    _, first = run_fleet(drivers=10, events_per_tick=25, ticks=40)
    _, again = run_fleet(drivers=10, events_per_tick=25, ticks=40)
    assert first == again
    ids = [i for b in first for i in b.column("event_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 1000
    assert Rows(TABLE, first[0], "b-00000").table.id_column == "event_id"


def test_streets_are_geojson_lines_on_the_grid() -> None:
    streets = City().streets()
    assert streets["type"] == "FeatureCollection"
    lines = [f["geometry"]["coordinates"] for f in streets["features"]]
    assert all(len(line) == 2 for line in lines) and len(lines) > 40
    assert np.isfinite(np.array(lines)).all()
