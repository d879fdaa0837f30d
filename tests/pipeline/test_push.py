"""The push hub's side of a client's reports: which samples the "browser" hop gets, from
what the server sent, with the clock offset, and what bad reports are counted as. The hub
is driven without Postgres (its tasks are not started) and with an injected clock."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import psycopg
import pytest
from fastapi import WebSocket

from dwbench.settings import Settings
from pipeline.pg import PostgresConnector
from pipeline.push import AWAITING_MAX, QUEUE_MAX, WS_TRY_AGAIN, Client, PushHub
from pipeline.realtime import TableStatements
from writers.base import Targets


class Clock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


class Hub:
    """A PushHub with what it records and counts kept in lists, and a clock to set."""

    def __init__(self, *, correct_offset: bool) -> None:
        self.recorded: list[tuple[str, str, list[int]]] = []
        self.bad: list[str] = []
        self.clock = Clock(10_000_000)
        targets = Targets(mode="local", settings=Settings())
        self.hub = PushHub(
            PostgresConnector(targets),
            synced_table="public.fleet_synced",
            record=lambda path, hop, lags: self.recorded.append((path, hop, lags)),
            bad=self.bad.append,
            status=lambda: None,
            correct_offset=correct_offset,
            clock_us=self.clock,
        )
        # The socket is never used: nothing here sends (no sender task runs).
        self.client = Client(cast(WebSocket, object()), "realtime")
        self.hub.feeds["realtime"].clients.add(self.client)

    def push(self, *event_times: int) -> dict[str, Any]:
        """Drivers changed with these event times, flushed: the changes message sent."""
        for i, t in enumerate(event_times):
            self.hub.feeds["realtime"].apply(_driver(f"d{i}", t))
        self.hub.flush_once()
        message = json.loads(self.client.queue.get_nowait() or "")
        assert message["type"] == "changes"
        return cast(dict[str, Any], message)

    def say(self, message: Any) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.hub.on_client_message(self.client, text)

    def browser(self) -> list[list[int]]:
        return [lags for _, hop, lags in self.recorded if hop == "browser"]


def _driver(driver_id: str, event_time_us: int) -> dict[str, Any]:
    return {
        "driver_id": driver_id,
        "lat": 37.7,
        "lon": -122.4,
        "status": "idle",
        "order_id": None,
        "speed_mps": None,
        "heading_deg": None,
        "battery_pct": None,
        "event_time_us": event_time_us,
    }


def test_a_receipt_gets_the_event_times_the_server_sent_once() -> None:
    h = Hub(correct_offset=False)
    sent = h.push(9_000_000, 9_500_000)
    assert sent["sent_us"] == 10_000_000
    assert ("realtime", "ws_sent", [1_000_000, 500_000]) in h.recorded
    # Whatever event times the client claims, the hop has the ones it was sent.
    h.say({"type": "received", "sent_us": sent["sent_us"], "received_us": 10_020_000,
           "event_time_us": [1, 2, 3]})  # fmt: skip
    assert h.browser() == [[1_020_000, 520_000]]
    # The same receipt again, or one for a message never sent, adds nothing.
    h.say({"type": "received", "sent_us": sent["sent_us"], "received_us": 10_030_000})
    h.say({"type": "received", "sent_us": 123, "received_us": 10_030_000})
    assert h.browser() == [[1_020_000, 520_000]]
    assert h.bad == ["unmatched_receipt", "unmatched_receipt"]


def test_unanswered_messages_are_kept_up_to_a_bound() -> None:
    h = Hub(correct_offset=False)
    first = h.push(9_000_000)
    for n in range(AWAITING_MAX):
        h.clock.now_us += 1
        h.hub.feeds["realtime"].apply(_driver("d0", 9_000_001 + n))
        h.hub.flush_once()
    assert len(h.client.awaiting) == AWAITING_MAX
    h.say({"type": "received", "sent_us": first["sent_us"], "received_us": 10_100_000})
    assert h.bad == ["unmatched_receipt"] and h.browser() == []


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[]",
        {"type": "hello"},
        {"type": "received", "received_us": 10_020_000},
        {"type": "received", "sent_us": "soon", "received_us": 10_020_000},
        '{"type": "received", "sent_us": 10000000, "received_us": 1e400}',
        {"type": "received", "sent_us": 10_000_000, "received_us": 10**400},
        {"type": "received", "sent_us": 10_000_000, "received_us": -5},
        {"type": "received", "sent_us": 10_000_000, "received_us": True},
        '{"type": "pong", "server_us": 1e400, "client_us": 1}',
        {"type": "pong", "server_us": 10_000_000, "client_us": 10**400},
        {"type": "pong", "server_us": 10_000_000},
    ],
)
def test_a_bad_report_is_counted_and_changes_nothing(message: Any) -> None:
    h = Hub(correct_offset=True)
    sent = h.push(9_000_000)
    h.say(message)
    assert h.bad == ["malformed_message"]
    assert h.client.offset_us is None and h.browser() == []
    assert list(h.client.awaiting) == [sent["sent_us"]]


def test_databricks_mode_holds_receipts_until_the_clock_offset_is_known() -> None:
    h = Hub(correct_offset=True)
    sent = h.push(9_000_000)
    # The browser's clock runs 2 s ahead of the server's.
    h.say({"type": "received", "sent_us": sent["sent_us"], "received_us": 12_040_000})
    assert h.browser() == [] and h.bad == []
    h.clock.now_us = 10_100_000
    h.say({"type": "pong", "server_us": 10_080_000, "client_us": 12_090_000})
    # rtt 20 ms: the browser's clock is 12.09 s when the server's is 10.09 s: offset 2 s
    assert h.client.offset_us == 2_000_000
    assert h.browser() == [[1_040_000]]
    sent = h.push(9_900_000)
    h.say({"type": "received", "sent_us": sent["sent_us"], "received_us": 12_130_000})
    assert h.browser()[-1] == [230_000]


def test_local_mode_records_receipts_at_once_uncorrected() -> None:
    h = Hub(correct_offset=False)
    sent = h.push(9_000_000)
    h.say({"type": "received", "sent_us": sent["sent_us"], "received_us": 10_040_000})
    assert h.browser() == [[1_040_000]]


async def test_a_missing_real_time_table_is_reported_until_a_run_creates_it(
    local_stack: dict[str, Any],
) -> None:
    from tests.conftest import local_targets
    from tests.pipeline.support import wait_for

    table = "public.push_missing_table"
    statements = TableStatements("upsert", table)
    dsn = local_stack["postgres_dsn"]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
    hub = PushHub(
        PostgresConnector(local_targets(local_stack)),
        synced_table="public.push_missing_synced",
        record=lambda path, hop, lags: None,
        bad=lambda kind: None,
        status=lambda: None,
        correct_offset=False,
    )
    hub.use_realtime_mode(statements)
    await hub.start()
    try:
        problem = f"the real-time table {table} does not exist yet"
        await asyncio.to_thread(wait_for, lambda: hub.listen_problem == problem, problem)
        with psycopg.connect(dsn, autocommit=True) as admin:
            for statement in statements.ddl():
                admin.execute(statement)
        hub.use_realtime_mode(statements)  # as a run does once its table exists
        await asyncio.to_thread(wait_for, lambda: hub.listen_problem is None, "the reload")
    finally:
        await hub.close()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {table}")


class RecordingSocket:
    """The two WebSocket calls the hub's sender makes, recorded."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_a_client_that_falls_behind_is_closed_with_1013_to_resync() -> None:
    h = Hub(correct_offset=False)
    socket = RecordingSocket()
    client = Client(cast(WebSocket, socket), "realtime")
    for n in range(QUEUE_MAX + 1):  # one more than its queue holds: it fell behind
        client.offer(json.dumps({"type": "changes", "n": n}))
    assert client.overflowed
    await h.hub._send_to(client)
    # The oldest message made room for the close: the rest is sent, then the close that
    # makes it reconnect (and get a snapshot); nothing after.
    assert [json.loads(t)["n"] for t in socket.sent] == list(range(1, QUEUE_MAX))
    assert WS_TRY_AGAIN == 1013
    assert socket.closed == (1013, "fell behind: reconnect")


async def test_a_reload_pushes_only_the_drivers_that_changed(local_stack: dict[str, Any]) -> None:
    dsn = local_stack["postgres_dsn"]
    table = "public.push_reload_table"
    statements = TableStatements("upsert", table)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in statements.ddl():
            admin.execute(statement)
        for n in (1, 2):
            admin.execute(
                f"INSERT INTO {table} (event_id, driver_id, event_time, latitude, longitude, "
                "status, batch_id, source, version) VALUES (%s, %s, to_timestamp(%s), 37.7, "
                "-122.4, 'idle', 'b', 'test', %s)",
                [f"e{n}", f"d{n}", 1_800_000_000 + n, (1_800_000_000 + n) * 1_000_000],
            )
    h = Hub(correct_offset=False)
    h.hub.realtime = statements
    feed = h.hub.feeds["realtime"]
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await h.hub._load_realtime(conn)
            assert sorted(feed.dirty) == ["d1", "d2"]
            feed.dirty = {}
            await conn.execute(
                f"UPDATE {table} SET status = 'picked_up', version = version + 1 "
                "WHERE driver_id = 'd2'"
            )
            await h.hub._load_realtime(conn)
        assert list(feed.dirty) == ["d2"] and feed.dirty["d2"]["status"] == "picked_up"
        assert sorted(feed.state) == ["d1", "d2"]
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {table}")
