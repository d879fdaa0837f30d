"""The real-time writer's ForeachWriter contract against the local stack's Postgres: the
newest fix per driver wins (version column), each written row is notified, and a payload
that would pass Postgres's 8,000-byte limit is cut to the key; the async sink tries a
failed flush again (a lost connection: nothing lost, nothing doubled) and counts the rows
of one that fails every attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg.conninfo import conninfo_to_dict

from pipeline.realtime import (
    CHANNEL,
    EVENTS_TABLE,
    FLUSH_ATTEMPTS,
    LIVE_TABLE,
    Mode,
    PostgresForeachWriter,
    RealtimeSink,
    TableStatements,
)
from workloads.telemetry import SCHEMA
from workloads.wire import epoch_micros

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
    micros = epoch_micros(T0 + dt.timedelta(seconds=5))
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


class Sink:
    """A RealtimeSink on the stack's Postgres whose sessions can be told apart (their
    application_name), with each committed flush's rows kept."""

    def __init__(self, dsn: str, mode: Mode, tag: str) -> None:
        self.dsn, self.tag = dsn, tag
        self.written: list[int] = []
        self.flushed = asyncio.Event()
        self.sink = RealtimeSink(self.connect, mode, on_written=self._written)

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, application_name=self.tag, autocommit=True, options="-c lock_timeout=100"
        )

    def _written(self, micros: list[int], committed_us: int) -> None:
        self.written.extend(micros)
        self.flushed.set()

    async def flush(self, rows: list[dict[str, Any]]) -> None:
        """Hand the sink these rows and wait for a flush to commit."""
        self.flushed.clear()
        self.sink.process(pa.RecordBatch.from_pylist(rows, schema=SCHEMA.arrow()))
        await asyncio.wait_for(self.flushed.wait(), 30)

    def drop_sessions(self) -> None:
        """What a Postgres restart or a network cut does to the sink's connection."""
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [self.tag],
            ).fetchone()
        assert dropped == (1,)


@pytest.mark.parametrize("mode", ["upsert", "copy"])
async def test_a_flush_that_fails_is_tried_again_and_nothing_is_lost_or_doubled(
    local_stack: dict[str, Any], mode: Mode
) -> None:
    tag = f"rt-retry-{mode}"
    s = Sink(local_stack["postgres_dsn"], mode, tag)
    table = s.sink.statements.table
    with psycopg.connect(s.dsn, autocommit=True) as admin:
        for statement in TableStatements(mode).ddl():
            admin.execute(statement)
        admin.execute(f"DELETE FROM {table} WHERE driver_id LIKE %s", [f"{tag}-%"])
    await s.sink.open()
    await s.flush([row(f"{tag}-e1", f"{tag}-1", 1, "idle")])
    s.drop_sessions()
    await s.flush([row(f"{tag}-e2", f"{tag}-1", 2, "to_restaurant"),
                   row(f"{tag}-e3", f"{tag}-2", 2, "picked_up")])  # fmt: skip
    await s.sink.close()
    assert (s.sink.retries, s.sink.failed_rows, s.sink.rows_written) == (1, 0, 3)
    assert s.sink.last_error is not None and "terminat" in s.sink.last_error
    with psycopg.connect(s.dsn) as conn:
        stored = conn.execute(
            f"SELECT event_id, driver_id, status FROM {table} WHERE driver_id LIKE %s ORDER BY 1",
            [f"{tag}-%"],
        ).fetchall()
    if mode == "upsert":
        assert stored == [(f"{tag}-e2", f"{tag}-1", "to_restaurant"),
                          (f"{tag}-e3", f"{tag}-2", "picked_up")]  # fmt: skip
    else:
        assert [r[0] for r in stored] == [f"{tag}-e1", f"{tag}-e2", f"{tag}-e3"]


async def test_a_flush_that_fails_every_attempt_counts_its_rows_and_the_sink_goes_on(
    local_stack: dict[str, Any],
) -> None:
    tag = "rt-doomed"
    s = Sink(local_stack["postgres_dsn"], "insert", tag)
    with psycopg.connect(s.dsn, autocommit=True) as admin:
        for statement in TableStatements("insert").ddl():
            admin.execute(statement)
        admin.execute(f"DELETE FROM {EVENTS_TABLE} WHERE driver_id LIKE %s", [f"{tag}-%"])
    await s.sink.open()
    doomed = row(f"{tag}-e3", f"{tag}-3", 1, "idle")
    doomed["event_id"] = None  # the table's primary key: Postgres refuses the row
    good = [row(f"{tag}-e{n}", f"{tag}-{n}", n, "idle") for n in (1, 2, 4, 5)]
    await s.flush([*good[:2], doomed, *good[2:]])
    assert (s.sink.failed_rows, s.sink.rows_written, s.sink.retries) == (1, 4, 0)
    # Halving 5 rows down to the bad one: 5 -> 3 -> 1 refused, the 2 + 2 others written.
    assert s.sink.errors == {"NotNullViolation": 3}
    # A table nobody may write for now: every attempt at the next flush times out.
    with psycopg.connect(s.dsn) as admin:
        admin.execute(f"LOCK TABLE {EVENTS_TABLE} IN ACCESS EXCLUSIVE MODE")
        s.sink.process(
            pa.RecordBatch.from_pylist([row(f"{tag}-e6", f"{tag}-6", 6, "idle")], SCHEMA.arrow())
        )
        for _ in range(600):
            if s.sink.failed_rows == 2:
                break
            await asyncio.sleep(0.05)
        admin.rollback()
    assert s.sink.errors["LockNotAvailable"] == FLUSH_ATTEMPTS
    assert s.sink.retries == FLUSH_ATTEMPTS - 1
    await s.flush([row(f"{tag}-e7", f"{tag}-7", 7, "idle")])
    await s.sink.close()
    assert (s.sink.failed_rows, s.sink.rows_written) == (2, 5)
    with psycopg.connect(s.dsn) as conn:
        stored = conn.execute(
            f"SELECT event_id FROM {EVENTS_TABLE} WHERE driver_id LIKE %s ORDER BY 1",
            [f"{tag}-%"],
        ).fetchall()
    assert stored == [(f"{tag}-e{n}",) for n in (1, 2, 4, 5, 7)]
