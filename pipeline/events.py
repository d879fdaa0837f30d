"""Events from outside the fleet (phones posting fixes): checked, and counted when bad.

A bad event never reaches a table and never stops the pipeline: it is counted by kind —
`malformed` (not an object, a field missing or of the wrong type, a coordinate out of
range), `unknown_status` (not one of workloads.telemetry.STATUSES), `clock_skew` (an
event time more than MAX_FUTURE_S ahead of the server's clock or MAX_PAST_S behind it).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from workloads.telemetry import SCHEMA, STATUSES
from workloads.wire import epoch_micros

MAX_FUTURE_S = 5.0
MAX_PAST_S = 3600.0
MAX_TEXT = 200
_STATUSES = frozenset(STATUSES)
_OPTIONAL_FLOATS = ("speed_mps", "heading_deg", "accuracy_m")


class BadEvent(ValueError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _number(value: Any, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadEvent("malformed", f"{name} must be a finite number")
    try:
        number = float(value)  # an integer past a double's range raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadEvent("malformed", f"{name} must be a finite number")
    return number


def _text(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise BadEvent("malformed", f"{name} must be a string of 1-{MAX_TEXT} characters")
    return value


def _event_time_us(event: dict[str, Any]) -> int:
    value = event.get("event_time_us", event.get("event_time"))
    if isinstance(value, bool):
        raise BadEvent("malformed", "event_time must be µs since the epoch or ISO 8601")
    if isinstance(value, int):
        if not -(2**62) < value < 2**62:
            raise BadEvent("malformed", "event_time is out of range")
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (ValueError, OverflowError):
            raise BadEvent("malformed", f"event_time {value[:40]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return epoch_micros(parsed)
    raise BadEvent("malformed", "event_time must be µs since the epoch or ISO 8601")


def check_event(event: Any, now_us: int) -> dict[str, Any]:
    """One event as a row of the telemetry schema; BadEvent (with its kind) otherwise."""
    if not isinstance(event, dict):
        raise BadEvent("malformed", "an event must be a JSON object")
    driver = _text(event.get("driver_id"), "driver_id")
    lat = _number(event.get("latitude", event.get("lat")), "latitude")
    lon = _number(event.get("longitude", event.get("lon")), "longitude")
    assert lat is not None and lon is not None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadEvent("malformed", "latitude/longitude out of range")
    status = event.get("status")
    if not isinstance(status, str):
        raise BadEvent("malformed", "status must be a string")
    if status not in _STATUSES:
        raise BadEvent("unknown_status", f"status {status[:40]!r} is not one of {list(STATUSES)}")
    at = _event_time_us(event)
    if at > now_us + MAX_FUTURE_S * 1e6 or at < now_us - MAX_PAST_S * 1e6:
        raise BadEvent(
            "clock_skew", f"event_time is {(at - now_us) / 1e6:+.1f} s from the server's"
        )
    battery = event.get("battery_pct")
    if battery is not None and (
        isinstance(battery, bool) or not isinstance(battery, int) or not 0 <= battery <= 100
    ):
        raise BadEvent("malformed", "battery_pct must be an integer 0-100")
    row = {
        "event_id": _text(event.get("event_id"), "event_id", optional=True) or uuid.uuid4().hex,
        "driver_id": driver,
        "order_id": _text(event.get("order_id"), "order_id", optional=True),
        "event_time": at,
        "latitude": lat,
        "longitude": lon,
        "status": status,
        "battery_pct": battery,
        "app_version": _text(event.get("app_version"), "app_version", optional=True),
    }
    for name in _OPTIONAL_FLOATS:
        row[name] = _number(event.get(name), name, optional=True)
    return row


def events_batch(
    events: list[Any], *, batch_id: str, source: str, now_us: int, bad: Callable[[str], None]
) -> pa.RecordBatch | None:
    """The good events as one batch of the telemetry schema; each bad one reported to `bad`."""
    rows = []
    for event in events:
        try:
            rows.append(check_event(event, now_us))
        except BadEvent as exc:
            bad(exc.kind)
    if not rows:
        return None
    schema = SCHEMA.arrow()
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            columns[name].append(row.get(name))
    columns["batch_id"] = [batch_id] * len(rows)
    columns["source"] = [source] * len(rows)
    arrays = []
    for f in schema:
        if f.name == "event_time":
            arrays.append(pa.array(columns[f.name], pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(columns[f.name], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
