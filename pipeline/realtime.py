"""The real-time writer: Structured Streaming's ForeachWriter contract into Lakebase.

`open(partition_id, epoch_id)` / `process(row)` / `close(error)`, buffering rows and
flushing at FLUSH_ROWS rows or FLUSH_AFTER_S after the oldest buffered row (the async
sink: SINK_LINGER_S, one flush at a time), each flush one transaction, in one of three modes:

    upsert  INSERT ... ON CONFLICT (driver_id) DO UPDATE ... WHERE the stored version is
            older (version = event time in µs): a replayed or late event never moves a
            driver back; the table holds each driver's latest fix (LIVE_TABLE)
    insert  INSERT ... ON CONFLICT (event_id) DO NOTHING into the event log (EVENTS_TABLE)
    copy    COPY into the event log (fastest; a replayed batch fails on its event ids)

The app owns these tables, so each has a trigger that sends every written row with
`pg_notify` (payload well under Postgres's 8,000-byte limit: the driver's position and
status; an oversized one is cut to the key, and the listener reads that driver's row).
The push listens on that channel.

`PostgresForeachWriter` is the synchronous class a Spark job passes to `foreach()`;
`RealtimeSink` is the same contract, async and columnar, that local mode feeds with the
fleet's acknowledged batches (in the fleet's process, pipeline.fleet_process). Both use
`TableStatements`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from psycopg import sql

from workloads.telemetry import SCHEMA
from workloads.wire import epoch_micros

log = structlog.get_logger(__name__)

Mode = Literal["upsert", "insert", "copy"]
MODES: tuple[Mode, ...] = ("upsert", "insert", "copy")
FLUSH_ROWS = 1000
FLUSH_AFTER_S = 0.100
# The async sink flushes one transaction at a time, so rows that arrive while one commits
# wait for the next: it needs no long linger to batch (the batch grows with the load and
# the wait stays about one transaction), only this one to gather batches acked together.
SINK_LINGER_S = 0.005
CLOSE_TIMEOUT_S = 60.0
# A flush that fails is tried again (reconnected, after a pause doubling from RETRY_S up to
# RETRY_MAX_S) up to FLUSH_ATTEMPTS times, as Spark retries a failed task; then its rows
# are counted failed, with the error, and the sink goes on. A row Postgres refuses (a
# constraint, a value out of range) is isolated by halving the flush: only it is refused.
FLUSH_ATTEMPTS = 5
RETRY_S = 0.1
RETRY_MAX_S = 2.0
LIVE_TABLE = "public.fleet_live"
EVENTS_TABLE = "public.fleet_events"
CHANNEL = "fleet_changes"
STAGE = "fleet_live_stage"  # the real-time sink's session-local staging table
MAX_PAYLOAD_BYTES = 8000
COLUMNS = tuple(SCHEMA.arrow().names)


class TableStatements:
    """DDL, trigger and write statements of the app-owned table of a mode."""

    def __init__(self, mode: Mode, table: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.table = table or (LIVE_TABLE if mode == "upsert" else EVENTS_TABLE)
        schema, name = self.table.split(".")
        self.schema, self.name = schema, name
        self.ident = sql.Identifier(schema, name)
        self.columns = (*COLUMNS, "version") if mode == "upsert" else COLUMNS
        self.names = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)

    def ddl(self) -> list[sql.SQL | sql.Composed]:
        key = "driver_id" if self.mode == "upsert" else "event_id"
        create = SCHEMA.postgres_ddl(self.table, primary_key=key)
        statements: list[sql.SQL | sql.Composed] = [sql.SQL(create)]  # type: ignore[arg-type]  # derived DDL
        if self.mode == "upsert":
            statements.append(
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0"
                ).format(self.ident)
            )
        function = sql.Identifier(self.schema, f"{self.name}_notify")
        statements.append(
            sql.SQL(
                """CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE payload text;
BEGIN
  payload := json_build_object(
    'driver_id', NEW.driver_id, 'lat', NEW.latitude, 'lon', NEW.longitude,
    'status', NEW.status, 'order_id', NEW.order_id, 'speed_mps', NEW.speed_mps,
    'heading_deg', NEW.heading_deg, 'battery_pct', NEW.battery_pct,
    'event_time_us', (extract(epoch FROM NEW.event_time) * 1000000)::bigint)::text;
  IF octet_length(payload) >= {limit} THEN
    payload := json_build_object('driver_id', left(NEW.driver_id, 200), 'cut', true)::text;
  END IF;
  PERFORM pg_notify({channel}, payload);
  RETURN NULL;
END $$"""
            ).format(
                function=function,
                limit=sql.Literal(MAX_PAYLOAD_BYTES),
                channel=sql.Literal(CHANNEL),
            )
        )
        trigger = sql.Identifier(f"{self.name}_notify")
        statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, self.ident))
        statements.append(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(trigger, self.ident, function)
        )
        return statements

    def write_sql(self) -> sql.Composed:
        placeholders = sql.SQL(", ").join([sql.Placeholder()] * len(self.columns))
        if self.mode == "copy":
            return sql.SQL("COPY {} ({}) FROM STDIN").format(self.ident, self.names)
        if self.mode == "insert":
            return sql.SQL(
                "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (event_id) DO NOTHING"
            ).format(self.ident, self.names, placeholders)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in self.columns
            if c != "driver_id"
        )
        return sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (driver_id) DO UPDATE SET {} "
            "WHERE {}.version < EXCLUDED.version"
        ).format(self.ident, self.names, placeholders, updates, sql.Identifier(self.name))

    def staged_upsert_sql(self) -> list[sql.Composed]:
        """Upsert mode in one statement: COPY into a session's staging table, then the
        newest row per driver of it merged (fewer statements than one INSERT per row)."""
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in self.columns
            if c != "driver_id"
        )
        return [
            sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(STAGE), self.names),
            sql.SQL(
                "INSERT INTO {} ({}) SELECT DISTINCT ON (driver_id) {} FROM {} "
                "ORDER BY driver_id, version DESC "
                "ON CONFLICT (driver_id) DO UPDATE SET {} WHERE {}.version < EXCLUDED.version"
            ).format(
                self.ident,
                self.names,
                self.names,
                sql.Identifier(STAGE),
                updates,
                sql.Identifier(self.name),
            ),
        ]

    def stage_ddl(self) -> sql.Composed:
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
            sql.Identifier(STAGE), self.ident
        )

    def snapshot_sql(self, *, of_drivers: bool = False) -> sql.Composed:
        """Every driver's latest fix in this table; `of_drivers`: only those of the
        parameter (a list of driver ids)."""
        wanted = sql.SQL(
            "driver_id, latitude, longitude, status, order_id, speed_mps, heading_deg, "
            "battery_pct, (extract(epoch FROM event_time) * 1000000)::bigint"
        )
        where = sql.SQL(" WHERE driver_id = ANY(%s)" if of_drivers else "")
        if self.mode == "upsert":
            return sql.SQL("SELECT {} FROM {}{}").format(wanted, self.ident, where)
        return sql.SQL(
            "SELECT DISTINCT ON (driver_id) {} FROM {}{} ORDER BY driver_id, event_time DESC"
        ).format(wanted, self.ident, where)

    def rows(self, batch: pa.RecordBatch | pa.Table) -> list[tuple[Any, ...]]:
        """A batch's rows in column order (plus the version in upsert mode)."""
        columns = [batch.column(c).to_pylist() for c in COLUMNS]
        if self.mode == "upsert":
            micros = pc.cast(
                pc.cast(batch.column("event_time"), pa.timestamp("us", tz="UTC")), pa.int64()
            )
            columns.append(micros.to_pylist())
        return list(zip(*columns, strict=True))


async def create_table(
    conn: psycopg.AsyncConnection[Any], statements: TableStatements, *, writer: str | None = None
) -> None:
    """The app-owned table of `statements`, its notify function and trigger, in one
    transaction (idempotent); `writer`: a role granted what the ForeachWriter's writes need
    (SELECT, INSERT, UPDATE), when another role writes it."""
    async with conn.transaction():
        for statement in statements.ddl():
            await conn.execute(statement)
        if writer:
            await conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
                    statements.ident, sql.Identifier(writer)
                )
            )


def event_micros(batch: pa.RecordBatch | pa.Table) -> list[int]:
    micros = pc.cast(pc.cast(batch.column("event_time"), pa.timestamp("us", tz="UTC")), pa.int64())
    return [int(v) for v in micros.to_pylist() if v is not None]


def wall_us() -> int:
    return time.time_ns() // 1000


class PostgresForeachWriter:
    """Spark's ForeachWriter for `DataStreamWriter.foreach()`: one instance per partition
    and epoch; rows are Spark `Row`s (or dicts) of the telemetry schema."""

    def __init__(self, connect_kwargs: Callable[[], dict[str, Any]], mode: Mode = "upsert") -> None:
        self.connect_kwargs = connect_kwargs
        self.statements = TableStatements(mode)
        self._conn: psycopg.Connection[Any] | None = None
        self._buffer: list[tuple[Any, ...]] = []
        self._oldest = 0.0

    def open(self, partition_id: int, epoch_id: int) -> bool:
        self._conn = psycopg.connect(**self.connect_kwargs(), autocommit=True)
        return True

    def process(self, row: Any) -> None:
        values = row.asDict() if hasattr(row, "asDict") else dict(row)
        record = [values.get(c) for c in COLUMNS]
        if self.statements.mode == "upsert":
            at = values["event_time"]
            record.append(epoch_micros(at))
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(tuple(record))
        if len(self._buffer) >= FLUSH_ROWS or time.monotonic() - self._oldest >= FLUSH_AFTER_S:
            self._flush()

    def close(self, error: BaseException | None) -> None:
        try:
            if error is None:
                self._flush()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _flush(self) -> None:
        if not self._buffer or self._conn is None:
            return
        rows, self._buffer = self._buffer, []
        with self._conn.transaction():
            _write_sync(self._conn, self.statements, rows)


def _write_sync(
    conn: psycopg.Connection[Any], statements: TableStatements, rows: Sequence[tuple[Any, ...]]
) -> None:
    if statements.mode == "copy":
        with conn.cursor().copy(statements.write_sql()) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        conn.cursor().executemany(statements.write_sql(), rows)


Written = Callable[[list[int], int], None]


class RealtimeSink:
    """The ForeachWriter contract, async and columnar: `open()`, `process(batch)`,
    `close()`; flushes at FLUSH_ROWS rows or `flush_after_s` (SINK_LINGER_S) after the
    oldest buffered row, one transaction at a time (what comes meanwhile goes in the next).
    `on_written(event_micros, committed_us)` is told of every committed flush."""

    def __init__(
        self,
        connect: Callable[[], Any],
        mode: Mode,
        *,
        on_written: Written,
        flush_rows: int = FLUSH_ROWS,
        flush_after_s: float = SINK_LINGER_S,
        clock_us: Callable[[], int] = wall_us,
    ) -> None:
        self.connect = connect
        self.statements = TableStatements(mode)
        self.on_written = on_written
        self.flush_rows = flush_rows
        self.flush_after_s = flush_after_s
        self.clock_us = clock_us
        self.rows_written = 0
        self.flushes = 0
        self.failed_rows = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        # Per flush: its rows, and the ms its transaction took (how the sink keeps up).
        self.flush_rows_total = 0
        self.write_ms: list[float] = []
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._oldest: float | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._attempts = 0  # failed attempts of the flush at the head of _pending
        self.retries = 0

    @property
    def closed(self) -> bool:
        return self._closing

    async def prepare(self) -> None:
        """Create the table, its notify function and trigger (idempotent)."""
        conn = await self.connect()
        try:
            await create_table(conn, self.statements)
        finally:
            await conn.close()

    async def open(self) -> None:
        self._conn = await self._session()
        self._task = asyncio.create_task(self._run(), name="realtime-sink")

    def process(self, batch: pa.RecordBatch) -> None:
        if self._closing:
            raise RuntimeError("the real-time sink is closed")
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._wakeup.set()

    async def close(self) -> None:
        """Flush what is buffered, then close; a flush that hangs fails the close."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, CLOSE_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(
                    f"the real-time sink did not flush within {CLOSE_TIMEOUT_S:g} s "
                    f"({self._pending_rows} rows left)"
                ) from None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            assert self._oldest is not None
            due = self._oldest + self.flush_after_s
            # Linger until the batch is full, the oldest row is due, or the sink closes.
            while (
                self._pending_rows < self.flush_rows
                and not self._closing
                and (delay := due - time.monotonic()) > 0
            ):
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
            await self._flush()

    async def _flush(self) -> None:
        take: list[pa.RecordBatch] = []
        rows = 0
        while self._pending and rows < self.flush_rows:
            batch = self._pending.pop(0)
            if rows + batch.num_rows > self.flush_rows:
                cut = self.flush_rows - rows
                self._pending.insert(0, batch.slice(cut))
                batch = batch.slice(0, cut)
            take.append(batch)
            rows += batch.num_rows
        self._pending_rows -= rows
        if not self._pending:
            self._oldest = None  # else the rest is as old as it was: flushed next, at once
        table = pa.Table.from_batches(take)
        began = time.perf_counter()
        try:
            written, refused = await self._write_isolating(table, again=self._attempts > 0)
        except Exception as exc:  # a lost connection, a server going away: try it again
            self._count_error(exc)
            self._attempts += 1
            if self._attempts < FLUSH_ATTEMPTS:
                self.retries += 1
                log.warning(
                    "realtime.flush_retrying",
                    rows=rows,
                    attempt=self._attempts,
                    error=self.last_error,
                )
                self._pending[:0] = take  # first again, due at once
                self._pending_rows += rows
                self._oldest = time.monotonic() - self.flush_after_s
                await self._reconnect()
                await asyncio.sleep(min(RETRY_S * 2 ** (self._attempts - 1), RETRY_MAX_S))
                return
            self._attempts = 0
            self.failed_rows += rows
            log.error(
                "realtime.flush_failed", rows=rows, attempts=FLUSH_ATTEMPTS, error=self.last_error
            )
            await self._reconnect()
            return
        self._attempts = 0
        self.failed_rows += refused
        if not written:
            return
        committed = self.clock_us()
        if len(self.write_ms) < 100_000:
            self.write_ms.append((time.perf_counter() - began) * 1000)
        self.rows_written += sum(t.num_rows for t in written)
        self.flushes += 1
        self.on_written([t for part in written for t in event_micros(part)], committed)

    async def _write_isolating(self, table: pa.Table, *, again: bool) -> tuple[list[pa.Table], int]:
        """Write `table`; when Postgres refuses a row of it (a constraint, a value out of
        its type's range), write its halves apart, down to that row, so one bad row costs
        only itself. Returns the parts written and the number of rows refused."""
        try:
            await self._write(self.statements.rows(table), retry=again)
            return [table], 0
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            self._count_error(exc)
            if self.statements.mode == "copy" and not again:
                # A replayed event id: as a retry does, insert it ON CONFLICT DO NOTHING.
                return await self._write_isolating(table, again=True)
            if table.num_rows == 1:
                log.error("realtime.row_refused", error=self.last_error)
                return [], 1
            half = table.num_rows // 2
            first = await self._write_isolating(table.slice(0, half), again=again)
            second = await self._write_isolating(table.slice(half), again=again)
            return first[0] + second[0], first[1] + second[1]

    def _count_error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = str(exc)[:300]

    async def _session(self) -> psycopg.AsyncConnection[Any]:
        conn = await self.connect()
        if self.statements.mode == "upsert":
            await conn.execute(self.statements.stage_ddl())
        return conn

    async def _write(self, values: Iterable[tuple[Any, ...]], *, retry: bool = False) -> None:
        """One flush, one transaction. A retried COPY inserts ON CONFLICT DO NOTHING
        instead: if the failed attempt's commit did reach the server, its rows are kept
        once (upsert and insert are idempotent anyway)."""
        assert self._conn is not None
        conn = self._conn
        async with conn.transaction():
            if self.statements.mode == "copy" and retry:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        TableStatements("insert", self.statements.table).write_sql(), list(values)
                    )
            elif self.statements.mode == "upsert":
                copy_sql, merge_sql = self.statements.staged_upsert_sql()
                async with conn.cursor().copy(copy_sql) as copy:
                    for row in values:
                        await copy.write_row(row)
                await conn.execute(merge_sql)
            elif self.statements.mode == "copy":
                async with conn.cursor().copy(self.statements.write_sql()) as copy:
                    for row in values:
                        await copy.write_row(row)
            else:
                async with conn.cursor() as cur:
                    await cur.executemany(self.statements.write_sql(), list(values))

    async def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                await self._conn.close()
        try:
            self._conn = await self._session()
        except Exception as exc:
            self.last_error = str(exc)[:300]
            await asyncio.sleep(1.0)
