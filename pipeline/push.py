"""The push: Postgres changes fanned out to WebSocket clients (`WS /ws/fleet`).

Real-time path: ONE LISTEN connection on the app-owned table's channel (its trigger sends
each written row with pg_notify). Synced path: a synced table is read-only (no triggers
there), so it is polled: rows with an event time past the newest seen minus a look-back,
and the whole table every FULL_POLL_S, each compared with what the feed holds.

Each path's feed keeps every driver's latest state. A client first gets a snapshot of it,
then batches of changes (coalesced per driver, every FLUSH_S), a status about once a
second, and a ping on connecting and now and then. Its pongs give the clock offset (min-RTT
estimate) and its "received" reports (the `sent_us` of a changes message and when it
arrived) the "browser" hop: the event times are the ones the server sent in that message,
kept per client until answered, so a client reports one time and can invent no samples. In
databricks mode the hop is corrected for the offset, and a receipt that comes before the
first pong waits for it. A client
that falls behind (its queue full) is closed with 1013 and, reconnecting, gets a snapshot:
it converges. The LISTEN connection is renewed before the Postgres token's hour ends and
after any failure, with a reload of the feed so that nothing missed meanwhile stays missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from fastapi import WebSocket, WebSocketDisconnect
from psycopg import sql

from pipeline.pg import RENEW_AFTER_S, PostgresConnector
from pipeline.realtime import CHANNEL, TableStatements

log = structlog.get_logger(__name__)

FLUSH_S = 0.05  # at most ~20 "changes" messages a second
STATUS_S = 1.0
PING_S = 3.0
POLL_S = 0.1
FULL_POLL_S = 10.0
LOOKBACK_US = 30_000_000
QUEUE_MAX = 200
# Changes messages a client may leave unanswered (their event times kept for its receipt),
# and receipts kept waiting for its first pong; the oldest go first.
AWAITING_MAX = 2 * QUEUE_MAX
HELD_MAX = 200
WS_TRY_AGAIN = 1013

Recorder = Callable[[str, str, list[int]], None]


def wall_us() -> int:
    return time.time_ns() // 1000


def _driver(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "driver_id": row[0],
        "lat": row[1],
        "lon": row[2],
        "status": row[3],
        "order_id": row[4],
        "speed_mps": row[5],
        "heading_deg": row[6],
        "battery_pct": row[7],
        "event_time_us": int(row[8]),
    }


@dataclass(eq=False)
class Client:
    websocket: WebSocket
    path: str
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    offset_us: float | None = None
    best_rtt_us: float | None = None
    overflowed: bool = False
    # sent_us of a changes message -> the event times it carried (the browser hop's samples)
    awaiting: dict[int, list[int]] = field(default_factory=dict)
    # receipts (received_us, event times) that wait for the clock offset
    held: list[tuple[int, list[int]]] = field(default_factory=list)

    def expect(self, sent_us: int, event_times: list[int]) -> None:
        self.awaiting[sent_us] = event_times
        if len(self.awaiting) > AWAITING_MAX:
            del self.awaiting[next(iter(self.awaiting))]

    def offer(self, text: str) -> None:
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.get_nowait()
                self.queue.put_nowait(None)  # tells its sender to close it: it must resync


@dataclass
class Feed:
    path: str
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: set[Client] = field(default_factory=set)
    loaded: bool = False

    def apply(self, driver: dict[str, Any]) -> bool:
        known = self.state.get(driver["driver_id"])
        if known is not None and known["event_time_us"] >= driver["event_time_us"]:
            return False
        self.state[driver["driver_id"]] = driver
        self.dirty[driver["driver_id"]] = driver
        return True


class PushHub:
    def __init__(
        self,
        connector: PostgresConnector,
        *,
        synced_table: str,
        record: Recorder,
        bad: Callable[[str], None],
        status: Callable[[], dict[str, Any] | None],
        correct_offset: bool,
        observed_hops: bool = False,
        clock_us: Callable[[], int] = wall_us,
    ) -> None:
        self.connector = connector
        self.synced_table = synced_table
        self.record = record
        self.bad = bad
        self.status = status
        self.correct_offset = correct_offset
        self.observed_hops = observed_hops
        self.clock_us = clock_us
        self.realtime = TableStatements("upsert")
        self.feeds = {"realtime": Feed("realtime"), "synced": Feed("synced")}
        self.messages_sent = 0
        self.events_pushed = 0  # driver updates broadcast (once each, whatever the clients)
        self.notifications = 0
        self.listen_problem: str | None = None
        self.poll_problem: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._reload = asyncio.Event()
        self._cut: set[str] = set()  # drivers whose notification was cut: read their row
        self.polls = 0  # polls of the synced table done
        self.flushes = 0  # fan-out rounds done

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._listen(), name="push-listen"),
            asyncio.create_task(self._poll(), name="push-poll"),
            asyncio.create_task(self._flush(), name="push-flush"),
            asyncio.create_task(self._beat(), name="push-status"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for feed in self.feeds.values():
            for client in list(feed.clients):
                with contextlib.suppress(asyncio.QueueFull):
                    client.queue.put_nowait(None)

    def use_realtime_mode(self, statements: TableStatements) -> None:
        """A run writes this table now (created by then): the real-time feed reloads from
        it if it is another, or if it was missing when last loaded."""
        if statements.table != self.realtime.table or self.listen_problem is not None:
            self.realtime = statements
            self._reload.set()

    # -- the real-time path: LISTEN ---------------------------------------------------

    async def _listen(self) -> None:
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self.connector.connect()
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                self._listen_conn = conn
                # After LISTEN: whatever is written from now on is notified, so a reload
                # now misses nothing.
                await self._load_realtime(conn)
                renew_at = time.monotonic() + RENEW_AFTER_S
                self._reload.clear()
                gen = conn.notifies(timeout=1.0)
                while time.monotonic() < renew_at:
                    async for note in gen:
                        self._on_notify(note.payload)
                    if self._cut:
                        await self._read_cut(conn)
                    if self._reload.is_set():
                        self._reload.clear()
                        await self._load_realtime(conn)
                    gen = conn.notifies(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reported in the status, tried again
                self.listen_problem = f"LISTEN: {exc}"[:300]
                log.warning("push.listen_failed", error=self.listen_problem)
                await asyncio.sleep(1.0)
            finally:
                self._listen_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _load_realtime(self, conn: psycopg.AsyncConnection[Any]) -> None:
        feed = self.feeds["realtime"]
        try:
            cur = await conn.execute(self.realtime.snapshot_sql())
            rows = await cur.fetchall()
            self.listen_problem = None
        except psycopg.errors.UndefinedTable:
            # Listening all the same: a run creates the table, and reloads the feed then.
            self.listen_problem = f"the real-time table {self.realtime.table} does not exist yet"
            rows = []
        # The table's state (one row per driver) replaces the feed's; only drivers that
        # differ are pushed (a reload is no change for a driver the feed held as it is).
        state = {driver["driver_id"]: driver for driver in map(_driver, rows)}
        for driver_id, driver in state.items():
            if feed.state.get(driver_id) != driver:
                feed.dirty[driver_id] = driver
        feed.state = state
        feed.loaded = True

    def _on_notify(self, payload: str) -> None:
        self.notifications += 1
        try:
            data = json.loads(payload)
            if data.get("cut"):
                self._cut.add(str(data["driver_id"]))  # an oversized row: read it
                return
            driver = {
                "driver_id": str(data["driver_id"]),
                "lat": float(data["lat"]),
                "lon": float(data["lon"]),
                "status": str(data["status"]),
                "order_id": data.get("order_id"),
                "speed_mps": data.get("speed_mps"),
                "heading_deg": data.get("heading_deg"),
                "battery_pct": data.get("battery_pct"),
                "event_time_us": int(data["event_time_us"]),
            }
        except (ValueError, KeyError, TypeError):
            self.bad("malformed_notification")
            return
        self._apply_realtime(driver)

    def _apply_realtime(self, driver: dict[str, Any]) -> None:
        if self.feeds["realtime"].apply(driver) and self.observed_hops:
            # On a workspace the job commits, not the app: the time the notification
            # arrived bounds "in Postgres" from above.
            self.record("realtime", "postgres", [self.clock_us() - driver["event_time_us"]])

    async def _read_cut(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The rows whose notification was too big to carry them, read from the table."""
        drivers, self._cut = sorted(self._cut), set()
        cur = await conn.execute(self.realtime.snapshot_sql(of_drivers=True), [drivers])
        for row in await cur.fetchall():
            self._apply_realtime(_driver(row))

    # -- the synced path: polling -----------------------------------------------------

    async def _poll(self) -> None:
        schema, table = self.synced_table.split(".")
        ident = sql.Identifier(schema, table)
        columns = sql.SQL(
            "driver_id, latitude, longitude, status, order_id, speed_mps, heading_deg, "
            "battery_pct, (extract(epoch FROM event_time) * 1000000)::bigint"
        )
        full = sql.SQL("SELECT {} FROM {}").format(columns, ident)
        recent = sql.SQL("SELECT {} FROM {} WHERE event_time >= to_timestamp(%s)").format(
            columns, ident
        )
        feed = self.feeds["synced"]
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self.connector.connect()
                renew_at = time.monotonic() + RENEW_AFTER_S
                last_full = 0.0
                newest = 0
                while time.monotonic() < renew_at:
                    now = time.monotonic()
                    if now - last_full >= FULL_POLL_S or not feed.loaded:
                        cur = await conn.execute(full)
                        last_full = now
                    else:
                        cur = await conn.execute(recent, [(newest - LOOKBACK_US) / 1e6])
                    seen_us = self.clock_us()
                    changed: list[int] = []
                    for row in await cur.fetchall():
                        driver = _driver(row)
                        newest = max(newest, driver["event_time_us"])
                        if feed.apply(driver):
                            changed.append(driver["event_time_us"])
                    if self.observed_hops and feed.loaded and changed:
                        self.record("synced", "postgres", [seen_us - t for t in changed])
                    feed.loaded = True
                    self.poll_problem = None
                    self.polls += 1
                    await asyncio.sleep(POLL_S)
            except asyncio.CancelledError:
                raise
            except psycopg.errors.UndefinedTable:
                self.poll_problem = f"the synced table {self.synced_table} does not exist yet"
                feed.loaded = True
                await asyncio.sleep(1.0)
            except Exception as exc:
                self.poll_problem = f"polling {self.synced_table}: {exc}"[:300]
                log.warning("push.poll_failed", error=self.poll_problem)
                await asyncio.sleep(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    # -- fan-out ----------------------------------------------------------------------

    async def _flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush_once()

    def flush_once(self) -> None:
        """Each feed's changes since the last flush, in one message to each of its clients."""
        self.flushes += 1
        for feed in self.feeds.values():
            if not feed.dirty:
                continue
            drivers = list(feed.dirty.values())
            feed.dirty = {}
            if not feed.clients:
                continue
            sent_us = self.clock_us()
            text = json.dumps(
                {"type": "changes", "path": feed.path, "drivers": drivers, "sent_us": sent_us}
            )
            times = [d["event_time_us"] for d in drivers]
            for client in list(feed.clients):
                client.expect(sent_us, times)
                client.offer(text)
            self.messages_sent += len(feed.clients)
            self.events_pushed += len(drivers)
            self.record(feed.path, "ws_sent", [sent_us - t for t in times])

    async def settle(self, timeout_s: float) -> bool:
        """Wait until what Postgres holds now has been pushed and every client answered
        what it was sent: a poll of the synced table that began after this call, a flush
        after it, then no client with a message unanswered. False if `timeout_s` passed
        first (a client that never answers, a poll that keeps failing)."""
        polls, deadline = self.polls, time.monotonic() + timeout_s

        async def until(done: Callable[[], bool]) -> bool:
            while not done():
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.02)
            return True

        if not await until(lambda: self.polls >= polls + 2):  # the first may predate this
            return False
        flushes = self.flushes
        if not await until(lambda: self.flushes > flushes):
            return False
        return await until(
            lambda: not any(c.awaiting for f in self.feeds.values() for c in f.clients)
        )

    async def _beat(self) -> None:
        last_ping = 0.0
        while True:
            await asyncio.sleep(STATUS_S)
            clients = [c for feed in self.feeds.values() for c in feed.clients]
            if not clients:
                continue
            status = self.status()
            if status is not None:
                text = json.dumps({"type": "status", **status})
                for client in clients:
                    client.offer(text)
            if time.monotonic() - last_ping >= PING_S:
                last_ping = time.monotonic()
                text = self._ping()
                for client in clients:
                    client.offer(text)

    def _ping(self) -> str:
        return json.dumps({"type": "ping", "server_us": self.clock_us()})

    async def serve(self, websocket: WebSocket, path: str) -> None:
        """One client: snapshot, then changes; its reports feed the browser hop."""
        await websocket.accept()
        feed = self.feeds[path]
        for _ in range(100):  # the first load of a feed, just after start
            if feed.loaded:
                break
            await asyncio.sleep(0.05)
        client = Client(websocket, path)
        # Snapshot and registration without an await between them: every later change
        # reaches this client after its snapshot.
        snapshot = {
            "type": "snapshot",
            "path": path,
            "drivers": list(feed.state.values()),
            "server_us": self.clock_us(),
        }
        client.offer(json.dumps(snapshot))
        client.offer(self._ping())  # its clock offset, before its first receipt
        feed.clients.add(client)
        sender = asyncio.create_task(self._send_to(client))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self.bad("malformed_message")
                    continue
                self.on_client_message(client, text)
                if sender.done():
                    break
        except WebSocketDisconnect:
            pass
        finally:
            feed.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send_to(self, client: Client) -> None:
        while True:
            text = await client.queue.get()
            if text is None:
                with contextlib.suppress(Exception):
                    await client.websocket.close(WS_TRY_AGAIN, "fell behind: reconnect")
                return
            await client.websocket.send_text(text)

    def on_client_message(self, client: Client, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message["type"]
            if kind == "pong":
                now = self.clock_us()
                sent = _time_us(message["server_us"])
                client_us = _time_us(message["client_us"])
                rtt = now - sent
                if rtt >= 0 and (client.best_rtt_us is None or rtt <= client.best_rtt_us):
                    client.best_rtt_us = rtt
                    client.offset_us = client_us - (sent + rtt / 2)
                    held, client.held = client.held, []
                    for received_us, event_times in held:
                        self._record_receipt(client, received_us, event_times)
            elif kind == "received":
                sent = _time_us(message["sent_us"])
                received = _time_us(message["received_us"])
                times = client.awaiting.pop(sent, None)
                if times is None:
                    self.bad("unmatched_receipt")  # not a message this client was sent
                elif self.correct_offset and client.offset_us is None:
                    client.held.append((received, times))
                    del client.held[:-HELD_MAX]
                else:
                    self._record_receipt(client, received, times)
            else:
                self.bad("malformed_message")
        except (ValueError, KeyError, TypeError, OverflowError):
            self.bad("malformed_message")

    def _record_receipt(self, client: Client, received_us: int, event_times: list[int]) -> None:
        if self.correct_offset and client.offset_us is not None:
            received_us -= int(client.offset_us)
        self.record(client.path, "browser", [received_us - t for t in event_times])


def _time_us(value: Any) -> int:
    """A client's time in µs since the epoch: an integer, or a finite float (JavaScript's)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("a time must be a number")
    if not math.isfinite(value) or not 0 <= value < 2**62:
        raise ValueError("a time out of range")
    return int(value)
