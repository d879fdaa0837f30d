"""The telemetry workload: GPS events of delivery drivers (the "Data Diners" seed).

`Fleet` moves N drivers through a small synthetic city: a grid of streets in a bounding
box. Each driver works through orders (to a restaurant, pick up, to the customer, deliver,
next order), driving along the street grid at plausible speeds (5-15 m/s, slower near
stops). Event times are monotonic per driver; a few percent of fixes carry GPS jitter
(tens of metres, with a worse reported accuracy); batteries drain and recharge.

Everything is numpy over the drivers taking part in a batch, so a batch of 1,000 events
costs tens of microseconds of Python, and the same `Fleet` feeds the benchmark and the
serving pipeline.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workloads.base import BatchMaker, TableRef, Workload, default_table
from workloads.generate import padding_column, random_text, row_ids
from workloads.schema import TableSchema

DDL = """
CREATE TABLE main.default.telemetry (
  event_id STRING NOT NULL COMMENT 'unique per event',
  driver_id STRING NOT NULL,
  order_id STRING COMMENT 'null while the driver has no order',
  event_time TIMESTAMP NOT NULL COMMENT 'when the phone took the fix (UTC)',
  latitude DOUBLE NOT NULL,
  longitude DOUBLE NOT NULL,
  speed_mps FLOAT COMMENT 'metres per second',
  heading_deg FLOAT COMMENT 'degrees clockwise from north',
  accuracy_m FLOAT COMMENT 'reported horizontal accuracy, metres',
  status STRING NOT NULL COMMENT 'where the driver is in a delivery',
  battery_pct TINYINT,
  app_version STRING,
  batch_id STRING NOT NULL COMMENT 'the ingesting client batch (freshness checks)',
  source STRING NOT NULL COMMENT 'the writer that wrote the row'
) USING DELTA
"""
SCHEMA = TableSchema.from_ddl(DDL)

# A delivery's progress; a driver cycles through these.
STATUSES = (
    "idle",
    "to_restaurant",
    "at_restaurant",
    "picked_up",
    "to_customer",
    "delivered",
)
IDLE, TO_RESTAURANT, AT_RESTAURANT, PICKED_UP, TO_CUSTOMER, DELIVERED = range(len(STATUSES))
# About what one event takes as protobuf before any padding.
NATURAL_ROW_BYTES = 160
_UTC_US = pa.timestamp("us", tz="UTC")
APP_VERSIONS = ("4.12.0", "4.12.1", "4.13.0", "5.0.0-beta")


@dataclass(frozen=True)
class City:
    """A bounding box with a street grid every `block_m` metres."""

    name: str = "Harbor City"
    south: float = 37.740
    west: float = -122.470
    north: float = 37.800
    east: float = -122.390
    block_m: float = 200.0

    @property
    def metres_per_deg_lat(self) -> float:
        return 111_320.0

    @property
    def metres_per_deg_lon(self) -> float:
        return 111_320.0 * math.cos(math.radians((self.south + self.north) / 2))

    @property
    def width_m(self) -> float:
        return (self.east - self.west) * self.metres_per_deg_lon

    @property
    def height_m(self) -> float:
        return (self.north - self.south) * self.metres_per_deg_lat

    def to_latlon(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.south + y / self.metres_per_deg_lat, self.west + x / self.metres_per_deg_lon

    def streets(self) -> dict[str, Any]:
        """The street grid as GeoJSON (the live map's basemap)."""
        features = []
        blocks_x = int(self.width_m // self.block_m)
        blocks_y = int(self.height_m // self.block_m)
        for i in range(blocks_x + 1):
            lon = self.west + i * self.block_m / self.metres_per_deg_lon
            features.append(_line(f"{i + 1} Avenue", [(lon, self.south), (lon, self.north)], i))
        for j in range(blocks_y + 1):
            lat = self.south + j * self.block_m / self.metres_per_deg_lat
            features.append(_line(f"{j + 1} Street", [(self.west, lat), (self.east, lat)], j))
        return {"type": "FeatureCollection", "features": features}


def _line(name: str, coords: list[tuple[float, float]], index: int) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name, "major": index % 5 == 0},
        "geometry": {"type": "LineString", "coordinates": [list(c) for c in coords]},
    }


class Fleet:
    """N drivers' state; `events(n, now)` moves them and returns n events as Arrow arrays."""

    def __init__(self, drivers: int = 500, *, seed: int = 0, city: City | None = None) -> None:
        if drivers < 1:
            raise ValueError("a fleet needs at least one driver")
        self.city = city or City()
        self.n = drivers
        self.rng = np.random.default_rng(seed)
        rng, n = self.rng, drivers
        self.blocks_x = int(self.city.width_m // self.city.block_m)
        self.blocks_y = int(self.city.height_m // self.city.block_m)
        self.x = self._grid_x(rng.integers(0, self.blocks_x + 1, n)).astype(np.float64)
        self.y = rng.uniform(0, self.city.height_m, n)  # somewhere along an avenue
        self.tx = self.x.copy()
        self.ty = self.y.copy()
        self.status = np.full(n, IDLE, dtype=np.int8)
        self.dwell = rng.uniform(0, 30, n)  # seconds left waiting (idle, at restaurant)
        self.cruise = rng.uniform(6.0, 14.0, n)  # each driver's own pace, m/s
        self.speed = np.zeros(n)
        self.heading = rng.uniform(0, 360, n)
        self.battery = rng.uniform(35, 100, n)
        self.order = np.full(n, -1, dtype=np.int64)
        self.next_order = 0
        self.last_us = np.zeros(n, dtype=np.int64)
        self.version = rng.integers(0, len(APP_VERSIONS), n)
        self.cursor = 0
        self._orders_changed = True
        self._order_labels: pa.Array | None = None
        self._labels_before = self._labels()
        self.driver_ids = pa.array([f"driver-{i:05d}" for i in range(n)])
        self._status_names = pa.array(STATUSES)
        self._versions = pa.array(APP_VERSIONS)

    def _grid_x(self, i: np.ndarray) -> np.ndarray:
        return i * self.city.block_m

    def _grid_y(self, j: np.ndarray) -> np.ndarray:
        return j * self.city.block_m

    def _new_targets(self, d: np.ndarray) -> None:
        rng = self.rng
        self.tx[d] = self._grid_x(rng.integers(0, self.blocks_x + 1, len(d)))
        self.ty[d] = self._grid_y(rng.integers(0, self.blocks_y + 1, len(d)))

    def events(self, n: int, now_us: int) -> dict[str, pa.Array]:
        """n events up to `now_us` (µs since the epoch), drivers taken round-robin.

        Drivers move once per call; a driver with several events in one call reports
        points spread evenly along that move (and over its time), so one call costs the
        same numpy work whatever the batch size.
        """
        count = self.n
        base = self.cursor
        j = np.arange(n) + base
        d = j % count
        occurrence = j // count - base // count - (d < base % count)
        per_driver = np.bincount(d, minlength=count)
        touched = np.flatnonzero(per_driver)
        x0, y0, t0 = self.x.copy(), self.y.copy(), self.last_us.copy()
        status0 = self.status.copy()
        self._advance(touched, now_us)
        self.cursor = (base + n) % count
        frac = (occurrence + 1) / per_driver[d]
        last = occurrence == per_driver[d] - 1
        x = x0[d] + frac * (self.x[d] - x0[d])
        y = y0[d] + frac * (self.y[d] - y0[d])
        first = t0[d] == 0
        start = np.where(first, self.last_us[d] - 1_000, t0[d])
        t = np.where(first & last, self.last_us[d], start + (frac * (self.last_us[d] - start)))
        t = t.astype(np.int64)
        status = np.where(last, self.status[d], status0[d])
        index = pa.array(d)
        labels = self._labels()
        if labels is self._labels_before or bool(last.all()):
            order_ids = labels.take(index)
        else:  # a driver's order changed within this call: earlier events keep the old one
            order_ids = pc.if_else(
                pa.array(last), labels.take(index), self._labels_before.take(index)
            )
        self._labels_before = labels

        # GPS: a few metres of noise always; a few percent of fixes tens of metres off.
        u = self.rng.random((4, n))
        jitter = u[0] < 0.03
        noise = np.where(jitter, 15 + 45 * u[1], 0.5 + 3.5 * u[1])
        angle = 2 * np.pi * u[2]
        lat, lon = self.city.to_latlon(x + noise * np.cos(angle), y + noise * np.sin(angle))
        accuracy = np.where(jitter, 20 + 60 * u[3], 3 + 9 * u[3])
        return {
            "driver_id": self.driver_ids.take(index),
            "order_id": order_ids,
            # The int64 µs buffer as a timestamp array: no cast kernel per batch.
            "event_time": pa.Array.from_buffers(_UTC_US, n, [None, pa.py_buffer(t)]),
            "latitude": pa.array(lat),
            "longitude": pa.array(lon),
            "speed_mps": pa.array(self.speed[d].astype(np.float32)),
            "heading_deg": pa.array(self.heading[d].astype(np.float32)),
            "accuracy_m": pa.array(accuracy.astype(np.float32)),
            "status": self._status_names.take(pa.array(status)),
            "battery_pct": pa.array(self.battery[d].astype(np.int8)),
            "app_version": self._versions.take(pa.array(self.version[d])),
        }

    def _labels(self) -> pa.Array:
        """Each driver's current order id as text (null without an order), rebuilt only when
        an order changed."""
        if self._orders_changed or self._order_labels is None:
            orders = pa.array(self.order)
            text = pc.binary_join_element_wise(
                "order-", pc.utf8_lpad(pc.cast(orders, pa.string()), 7, "0"), ""
            )
            self._order_labels = pc.if_else(
                pa.array(self.order < 0), pa.nulls(self.n, pa.string()), text
            )
            self._orders_changed = False
        return self._order_labels

    def _advance(self, d: np.ndarray, now_us: int) -> None:
        rng = self.rng
        # Monotonic per driver, even when the wall clock stalls or goes back.
        t = np.maximum(self.last_us[d] + 1_000, now_us)
        dt_s = np.where(self.last_us[d] == 0, 1.0, (t - self.last_us[d]) / 1e6).clip(0, 60)
        self.last_us[d] = t
        status = self.status[d]

        waiting = (
            (status == IDLE)
            | (status == AT_RESTAURANT)
            | (status == PICKED_UP)
            | (status == DELIVERED)
        )
        self.dwell[d] -= np.where(waiting, dt_s, 0)
        done = waiting & (self.dwell[d] <= 0)
        # idle -> to_restaurant (a new order); at_restaurant -> picked_up (a short walk back
        # to the car); picked_up -> to_customer; delivered -> idle
        start = d[done & (status == IDLE)]
        if len(start):
            self.order[start] = self.next_order + np.arange(len(start))
            self._orders_changed = True
            self.next_order += len(start)
            self._new_targets(start)
            self.status[start] = TO_RESTAURANT
        pick = d[done & (status == AT_RESTAURANT)]
        self.status[pick] = PICKED_UP
        self.dwell[pick] = rng.uniform(5, 20, len(pick))
        leave = d[done & (status == PICKED_UP)]
        if len(leave):
            self._new_targets(leave)
            self.status[leave] = TO_CUSTOMER
        rest = d[done & (status == DELIVERED)]
        self.status[rest] = IDLE
        if len(rest):
            self.order[rest] = -1
            self._orders_changed = True
        self.dwell[rest] = rng.uniform(5, 40, len(rest))

        # Drive along the grid: first along the avenue (y), then along the street (x).
        moving = (self.status[d] == TO_RESTAURANT) | (self.status[d] == TO_CUSTOMER)
        dx = self.tx[d] - self.x[d]
        dy = self.ty[d] - self.y[d]
        remaining = np.abs(dx) + np.abs(dy)
        slow = np.clip(remaining / 150.0, 0.35, 1.0)  # slowing down near the stop
        speed = np.where(moving, self.cruise[d] * slow * rng.uniform(0.85, 1.1, len(d)), 0.0)
        step = np.minimum(speed * dt_s, remaining)
        along_y = np.minimum(step, np.abs(dy))
        along_x = np.minimum(step - along_y, np.abs(dx))
        self.y[d] += np.sign(dy) * along_y
        self.x[d] += np.sign(dx) * along_x
        heading = np.where(along_y > 0, np.where(dy > 0, 0.0, 180.0), np.where(dx > 0, 90.0, 270.0))
        self.heading[d] = np.where(moving & (step > 0), heading, self.heading[d])
        arrived = moving & (step >= remaining - 1e-9)
        to_rest = d[arrived & (self.status[d] == TO_RESTAURANT)]
        self.status[to_rest] = AT_RESTAURANT
        self.dwell[to_rest] = rng.uniform(20, 120, len(to_rest))
        to_cust = d[arrived & (self.status[d] == TO_CUSTOMER)]
        self.status[to_cust] = DELIVERED
        self.dwell[to_cust] = rng.uniform(10, 45, len(to_cust))
        self.speed[d] = speed

        # Battery: drains while driving, recharges now and then when nearly flat.
        self.battery[d] -= dt_s * np.where(moving, 0.004, 0.0015)
        flat = d[self.battery[d] < 15]
        self.battery[flat] = rng.uniform(85, 100, len(flat))


Clock = Callable[[], int]


def _wall_us() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)


class FleetRows:
    """A BatchMaker over a Fleet: event ids from the batch id, padding on app_version."""

    def __init__(
        self,
        table: TableRef,
        fleet: Fleet,
        *,
        clock: Clock = _wall_us,
        record_bytes: int = 0,
        pad_column: str | None = None,
        seed: int = 0,
    ) -> None:
        self.table = table
        self.fleet = fleet
        self.clock = clock
        self.schema = table.schema.arrow()
        self.record_bytes = NATURAL_ROW_BYTES
        self._pad: str | None = None
        self._noise: pa.Array | None = None
        if record_bytes > NATURAL_ROW_BYTES:
            pad = padding_column(table.schema, pad_column or "app_version")
            assert pad is not None
            extra = record_bytes - NATURAL_ROW_BYTES
            self._pad = pad.name
            self._noise = random_text(np.random.default_rng(seed + 7919), 4096, extra, extra)
            self.record_bytes = record_bytes

    def __call__(self, k: int, rows: int, batch_id: str, source: str) -> pa.RecordBatch:
        columns = self.fleet.events(rows, self.clock())
        columns["event_id"] = row_ids(batch_id, rows)
        columns["batch_id"] = pa.repeat(pa.scalar(batch_id), rows)
        columns["source"] = pa.repeat(pa.scalar(source), rows)
        if self._pad is not None and self._noise is not None:
            noise = self._noise
            start = (k * rows) % len(noise)
            index = pa.array((np.arange(rows) + start) % len(noise))
            current = pc.fill_null(columns[self._pad], "")
            columns[self._pad] = pc.binary_join_element_wise(current, noise.take(index), "")
        return pa.RecordBatch.from_arrays(
            [columns[name] for name in self.schema.names], schema=self.schema
        )


def fleet_source(
    *,
    seed: int = 0,
    drivers: int = 500,
    record_bytes: int = 0,
    pad_column: str | None = None,
    clock: Clock | None = None,
    **_: Any,
) -> BatchMaker:
    return FleetRows(
        TABLE,
        Fleet(drivers, seed=seed),
        clock=clock or _wall_us,
        record_bytes=record_bytes,
        pad_column=pad_column,
        seed=seed,
    )


TABLE = default_table("telemetry", SCHEMA, id_column="event_id")
WORKLOAD = Workload(
    name="telemetry",
    label="Telemetry (delivery drivers' GPS events)",
    description="GPS fixes from delivery drivers' phones moving through a city: the "
    "'Data Diners' events. Generated by a fleet simulation (--drivers).",
    schema=SCHEMA,
    table=TABLE,
    source=fleet_source,
    builtin=True,
    options={"drivers": 500},
)
