"""The real-time writer's ForeachWriter contract against the local stack's Postgres: the
newest fix per driver wins (version column), each written row is notified, and a payload
that would pass Postgres's 8,000-byte limit is cut to the key."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pipeline.realtime import CHANNEL, LIVE_TABLE, PostgresForeachWriter, TableStatements

T0 = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)


def row(event: str, driver: str, seconds: int, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event,
        "driver_id": driver,
        "order_id": extra.get("order_id"),
        "event_time": T0 + dt.timedelta(seconds=seconds),
        "latitude": 37.75,
        "longitude": -122.42,
        "speed_mps": 5.0,
        "heading_deg": 90.0,
        "accuracy_m": 4.0,
        "status": status,
        "battery_pct": 50,
        "app_version": "5.0.0",
        "batch_id": "b",
        "source": "test",
    }


def test_the_foreach_writer_upserts_the_newest_fix_and_notifies_each_row(
    local_stack: dict[str, Any],
) -> None:
    dsn = local_stack["postgres_dsn"]
    with psycopg.connect(dsn, autocommit=True) as admin:
        for statement in TableStatements("upsert").ddl():
            admin.execute(statement)
        admin.execute(f"DELETE FROM {LIVE_TABLE} WHERE driver_id LIKE 'rt-%'")
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")
    writer = PostgresForeachWriter(lambda: conninfo_to_dict(dsn), "upsert")
    assert writer.open(partition_id=0, epoch_id=1) is True
    for r in (
        row("x1", "rt-1", 1, "idle"),
        row("x2", "rt-1", 5, "to_restaurant"),
        row("x3", "rt-1", 3, "delivered"),  # late: older than rt-1's newest
        row("x4", "rt-2", 2, "picked_up", order_id="order-9"),
        row("x5", "rt-3", 2, "idle", order_id="o" * 7990),  # its payload would be too big
    ):
        writer.process(r)
    writer.close(None)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT driver_id, status, event_id, version FROM {LIVE_TABLE} "
            "WHERE driver_id LIKE 'rt-%' ORDER BY 1"
        ).fetchall()
    micros = int((T0 + dt.timedelta(seconds=5)).timestamp() * 1_000_000)
    assert rows[0] == ("rt-1", "to_restaurant", "x2", micros)
    assert [r[:3] for r in rows[1:]] == [("rt-2", "picked_up", "x4"), ("rt-3", "idle", "x5")]
    payloads = [json.loads(n.payload) for n in listener.notifies(timeout=2.0, stop_after=4)]
    listener.close()
    # x3 updated nothing (older version), so it was not notified
    assert [p["driver_id"] for p in payloads] == ["rt-1", "rt-1", "rt-2", "rt-3"]
    assert payloads[1]["status"] == "to_restaurant"
    assert payloads[1]["event_time_us"] == micros
    assert payloads[2]["order_id"] == "order-9"
    assert payloads[3] == {"driver_id": "rt-3", "cut": True}
