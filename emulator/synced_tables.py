"""Continuous synced tables (Delta -> Postgres) and the CDF copy, as local-stack services.

A synced table is the stand-in for Lakebase's: the Postgres table has the source's schema,
belongs to the sync (the app's role may only read it: no triggers, no writes), and is kept
up to date from the source's Change Data Feed. Each sync reads `load_cdf` from the version
after the last processed one up to the newest, keeps the newest change per primary key
(the timeseries key breaks ties, then the commit version), and applies those in ONE
Postgres transaction together with its progress (`_dwbench_sync.synced_tables`): a sync
that fails or a stack that stops mid-way leaves the table and its version consistent, and
a restarted sync resumes from that version. A new synced table starts with a snapshot of
the source, then follows its changes (CONTINUOUS). `sync_interval_s` 0 syncs as fast as
it keeps up; 15 reproduces the service's documented minimum interval.

The status is shaped like the SDK's `SyncedDatabaseTable.data_synchronization_status`
(detailed_state, continuous_update_status.last_processed_commit_version, last_sync with
its start and end and the Delta commit version and timestamp it reached). There is no
lag field there either: a client computes lag from those times.

HTTP (the stack's API port, bearer token), registered by `PipelineServices.add_routes`:

    POST   /api/local/pipeline/copies            {"source", "target", "run_id"?}
    GET    /api/local/pipeline/copies/{target}
    DELETE /api/local/pipeline/copies/{target}    stop (data and progress stay)
    POST   /api/local/pipeline/synced-tables     {"name", "spec": {...}, "sync_interval_s",
                                                  "run_id"?}
    GET    /api/local/pipeline/synced-tables/{name}
    DELETE /api/local/pipeline/synced-tables/{name}

Creating what exists returns it (restarted when it was stopped); a new `run_id` empties
its freshness histograms. Registrations are kept in `<data dir>/pipeline/services.json`
and started again with the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from deltalake import DeltaTable
from fastapi import FastAPI, Header, Request
from psycopg import sql

from emulator.catalog import Catalog, parse_table_name
from emulator.cdf_copy import CdfCopy, HopHistogram, iso, lag_us, now_us
from emulator.errors import EmulatorError
from emulator.postgres import EmbeddedPostgres, superuser_conninfo
from emulator.statements import ApiError
from emulator.table_writer import commit_file, commit_time_us

log = structlog.get_logger(__name__)

STATE_SCHEMA = "_dwbench_sync"
# Interval 0 ("as fast as it keeps up"): syncs start at most this often.
MIN_INTERVAL_S = 0.1
ROUTE = "/api/local/pipeline"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _pg_type(kind: pa.DataType) -> str:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "text"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_int8(kind) or pa.types.is_int16(kind):
        return "smallint"
    if pa.types.is_int32(kind):
        return "integer"
    if pa.types.is_int64(kind):
        return "bigint"
    if pa.types.is_float32(kind):
        return "real"
    if pa.types.is_float64(kind):
        return "double precision"
    if pa.types.is_date32(kind):
        return "date"
    if pa.types.is_decimal(kind):
        return f"numeric({kind.precision},{kind.scale})"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytea"
    return "jsonb"  # nested types, as Lakebase maps them


class SyncedTable:
    """One continuous synced table: a Delta source with CDF -> a Postgres table."""

    def __init__(
        self,
        catalog: Catalog,
        conninfo: str,
        reader_role: str,
        name: str,
        spec: dict[str, Any],
        sync_interval_s: float,
    ) -> None:
        self.catalog = catalog
        self.conninfo = conninfo
        self.reader_role = reader_role
        self.name = parse_table_name(name)
        self.spec = spec
        self.source = catalog.get(str(spec["source_table_full_name"]))
        self.primary_key: list[str] = list(spec["primary_key_columns"])
        self.timeseries_key: str | None = spec.get("timeseries_key")
        _, pg_schema, pg_table = self.name.split(".")
        self.pg_schema, self.pg_table = pg_schema, pg_table
        self.sync_interval_s = sync_interval_s
        self.state = "SYNCED_TABLE_PROVISIONING"
        self.message: str | None = None
        self.last_version: int | None = None
        self.sync_start_us: int | None = None
        self.sync_end_us: int | None = None
        self.delta_version: int | None = None
        self.delta_timestamp_us: int | None = None
        self.rows_applied = 0
        self.changes_read = 0
        self.syncs = 0
        self.hops = {"postgres": HopHistogram()}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._columns: list[str] = []
        self._arrow: pa.Schema | None = None
        self._source: DeltaTable | None = None

    def describe(self) -> dict[str, Any]:
        last_sync = None
        if self.sync_end_us is not None:
            last_sync = {
                "sync_start_timestamp": iso(self.sync_start_us),
                "sync_end_timestamp": iso(self.sync_end_us),
                "delta_table_sync_info": {
                    "delta_commit_version": self.delta_version,
                    "delta_commit_timestamp": iso(self.delta_timestamp_us),
                },
            }
        status: dict[str, Any] = {"detailed_state": self.state, "message": self.message}
        if self.last_version is not None:
            status["continuous_update_status"] = {
                "last_processed_commit_version": self.last_version,
                "timestamp": iso(self.sync_end_us),
            }
        if last_sync:
            status["last_sync"] = last_sync
        return {
            "name": self.name,
            "spec": {**self.spec, "scheduling_policy": "CONTINUOUS"},
            "postgres_table": f"{self.pg_schema}.{self.pg_table}",
            "sync_interval_s": self.sync_interval_s,
            "data_synchronization_status": status,
            "rows_applied": self.rows_applied,
            "changes_read": self.changes_read,
            "syncs": self.syncs,
            "freshness": {hop: h.encode() for hop, h in self.hops.items()},
        }

    def reset_freshness(self) -> None:
        self.hops = {"postgres": HopHistogram()}

    async def start(self) -> None:
        """Provision and read the progress first, so the status has the version it resumes
        from as soon as this returns; a failure here is the first sync's, which reports it
        (FAILED, the message) and tries again."""
        self._stop.clear()
        try:
            await asyncio.to_thread(self._connection)
        except Exception:  # the first sync meets it again and reports it
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await asyncio.to_thread(conn.close)
        self._task = asyncio.create_task(self._run(), name=f"synced-table-{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._conn is not None:
            await asyncio.to_thread(self._conn.close)
            self._conn = None
        self.state = "SYNCED_TABLED_OFFLINE"

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._sync_once)
            except Exception as exc:  # reported in the status; tried again next interval
                self.state = "SYNCED_TABLE_ONLINE_PIPELINE_FAILED"
                self.message = str(exc)[:500]
                log.error("synced_table.sync_failed", table=self.name, error=str(exc))
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    await asyncio.to_thread(conn.close)
                await self._nap(max(self.sync_interval_s, 1.0))
                continue
            interval = max(self.sync_interval_s, MIN_INTERVAL_S)
            await self._nap(interval - (time.monotonic() - started))

    async def _nap(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)

    # -- in a thread --------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True)
            self._provision(self._conn)
        return self._conn

    def _provision(self, conn: psycopg.Connection[Any]) -> None:
        """The Postgres table (the source's schema), its reader grants, and the progress."""
        source = DeltaTable(str(self.source.path))
        arrow = pa.schema(source.schema().to_arrow())
        self._arrow = arrow
        self._columns = [f.name for f in arrow]
        missing = [
            c for c in (*self.primary_key, self.timeseries_key) if c and c not in arrow.names
        ]
        if missing:
            raise ValueError(f"columns {missing} are not in {self.source.name}")
        ident = sql.Identifier(self.pg_schema, self.pg_table)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(
                sql.Identifier(f.name),
                sql.SQL(_pg_type(f.type)),
                sql.SQL(" NOT NULL" if not f.nullable or f.name in self.primary_key else ""),
            )
            for f in arrow
        )
        key = sql.SQL(", ").join(sql.Identifier(c) for c in self.primary_key)
        reader = sql.Identifier(self.reader_role)
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA))
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.synced_tables (name text PRIMARY KEY, "
                    "last_processed_commit_version bigint NOT NULL, sync_start timestamptz, "
                    "sync_end timestamptz, delta_commit_timestamp timestamptz)"
                ).format(sql.Identifier(STATE_SCHEMA))
            )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.pg_schema))
            )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                    ident, columns, key
                )
            )
            # The app reads a synced table; only the sync writes it.
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.Identifier(self.pg_schema), reader
                )
            )
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(ident, reader))
            row = conn.execute(
                sql.SQL(
                    "SELECT last_processed_commit_version, sync_start, sync_end, "
                    "delta_commit_timestamp FROM {}.synced_tables WHERE name = %s"
                ).format(sql.Identifier(STATE_SCHEMA)),
                [self.name],
            ).fetchone()
        if row is not None:
            self.last_version = int(row[0])
            self.delta_version = self.last_version
            self.sync_start_us = _us(row[1])
            self.sync_end_us = _us(row[2])
            self.delta_timestamp_us = _us(row[3])
        log.info("synced_table.provisioned", table=self.name, resume_after=self.last_version)

    def _sync_once(self) -> bool:
        conn = self._connection()
        if self._source is None:
            self._source = DeltaTable(str(self.source.path))
        elif commit_file(self.source.path, self._source.version() + 1).exists():
            # The log since the last look, and only when there is a newer commit: delta-rs's
            # update costs about as much with nothing new as with one commit.
            self._source.update_incremental()
        source = self._source
        latest = source.version()
        if self.last_version is not None and latest <= self.last_version:
            if self.state != "SYNCED_TABLE_ONLINE_PIPELINE_FAILED":
                self.state = "SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE"
            return False
        start = now_us()
        assert self._arrow is not None
        if self.last_version is None:
            # The initial snapshot, then the changes after it.
            self.state = "SYNCED_TABLE_PROVISIONING_INITIAL_SNAPSHOT"
            changes = source.to_pyarrow_table()
            kinds = None
            versions = pa.array([latest] * changes.num_rows, pa.int64())
        else:
            changes = pa.table(
                source.load_cdf(starting_version=self.last_version + 1, ending_version=latest)
            )
            kinds = pc.cast(changes.column("_change_type"), pa.string())
            versions = pc.cast(changes.column("_commit_version"), pa.int64())
        commit_us = commit_time_us(self.source.path, latest)
        data = changes.select(self._columns).cast(self._arrow)
        if kinds is not None:
            keep = pc.not_equal(kinds, "update_preimage")
            data, versions, kinds = (
                data.filter(keep),
                pc.filter(versions, keep),
                pc.filter(kinds, keep),
            )
        newest = self._newest(data, versions)
        upserts = data.take(newest)
        deletes = None
        if kinds is not None:
            is_delete = pc.equal(pc.take(kinds, newest), "delete")
            deletes = upserts.filter(is_delete)
            upserts = upserts.filter(pc.invert(is_delete))
        self._apply(conn, upserts, deletes, latest, start, commit_us)
        end = now_us()
        self.last_version = latest
        self.delta_version = latest
        self.delta_timestamp_us = commit_us
        self.sync_start_us, self.sync_end_us = start, end
        self.rows_applied += upserts.num_rows + (deletes.num_rows if deletes is not None else 0)
        self.changes_read += data.num_rows
        self.syncs += 1
        self.state = "SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE"
        self.message = None
        if self.timeseries_key and data.num_rows:
            # Every change read is reflected in Postgres now (itself, or a newer one).
            self.hops["postgres"].record_array(lag_us(data.column(self.timeseries_key), end))
        return True

    def _newest(self, data: pa.Table, versions: pa.Array) -> pa.Array:
        """Indices of the newest change per primary key (timeseries key, then version)."""
        if data.num_rows == 0:
            return pa.array([], pa.int64())
        if len(self.primary_key) == 1:
            key = data.column(self.primary_key[0])
        else:
            key = pc.binary_join_element_wise(
                *[pc.cast(data.column(c), pa.string()) for c in self.primary_key], "\x1f"
            )
        order = [("k", "ascending")]
        columns = {"k": key, "v": versions, "i": pa.array(range(data.num_rows), pa.int64())}
        if self.timeseries_key:
            columns["t"] = data.column(self.timeseries_key)
            order.append(("t", "ascending"))
        order += [("v", "ascending"), ("i", "ascending")]
        frame = pa.table(columns)
        frame = frame.take(pc.sort_indices(frame, sort_keys=order))
        keys = frame.column("k")
        n = frame.num_rows
        last = pc.not_equal(keys.slice(0, n - 1), keys.slice(1))
        mask = pa.concat_arrays([pa.array(last.to_pylist(), pa.bool_()), pa.array([True])])
        return pc.filter(frame.column("i"), mask).combine_chunks()

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        upserts: pa.Table,
        deletes: pa.Table | None,
        version: int,
        start_us: int,
        commit_us: int,
    ) -> None:
        ident = sql.Identifier(self.pg_schema, self.pg_table)
        names = sql.SQL(", ").join(sql.Identifier(c) for c in self._columns)
        key = sql.SQL(", ").join(sql.Identifier(c) for c in self.primary_key)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in self._columns
            if c not in self.primary_key
        )
        newer = (
            sql.SQL(" WHERE {0}.{1} <= EXCLUDED.{1}").format(
                sql.Identifier(self.pg_table), sql.Identifier(self.timeseries_key)
            )
            if self.timeseries_key
            else sql.SQL("")
        )
        with conn.transaction():
            if upserts.num_rows:
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE _sync_stage (LIKE {}) ON COMMIT DROP").format(ident)
                )
                with conn.cursor().copy(
                    sql.SQL("COPY _sync_stage ({}) FROM STDIN").format(names)
                ) as copy:
                    for row in zip(
                        *(upserts.column(c).to_pylist() for c in self._columns), strict=True
                    ):
                        copy.write_row(row)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} ({}) SELECT {} FROM _sync_stage "
                        "ON CONFLICT ({}) DO UPDATE SET {}{}"
                    ).format(ident, names, names, key, updates, newer)
                )
            if deletes is not None and deletes.num_rows:
                match = sql.SQL(" AND ").join(
                    sql.SQL("{} = %s").format(sql.Identifier(c)) for c in self.primary_key
                )
                conn.cursor().executemany(
                    sql.SQL("DELETE FROM {} WHERE {}").format(ident, match),
                    list(
                        zip(*(deletes.column(c).to_pylist() for c in self.primary_key), strict=True)
                    ),
                )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.synced_tables VALUES (%s, %s, to_timestamp(%s), now(), "
                    "to_timestamp(%s)) ON CONFLICT (name) DO UPDATE SET "
                    "last_processed_commit_version = EXCLUDED.last_processed_commit_version, "
                    "sync_start = EXCLUDED.sync_start, sync_end = EXCLUDED.sync_end, "
                    "delta_commit_timestamp = EXCLUDED.delta_commit_timestamp"
                ).format(sql.Identifier(STATE_SCHEMA)),
                [self.name, version, start_us / 1e6, commit_us / 1e6],
            )


def _us(value: Any) -> int | None:
    return None if value is None else (value - _EPOCH) // dt.timedelta(microseconds=1)


class PipelineServices:
    """The stack's copies and synced tables, their HTTP routes and their registrations."""

    def __init__(self, catalog: Catalog, postgres: EmbeddedPostgres | None, data_dir: Path) -> None:
        self.catalog = catalog
        self.postgres = postgres
        self.data_dir = data_dir
        self.registry = data_dir / "pipeline" / "services.json"
        self.copies: dict[str, CdfCopy] = {}
        self.synced: dict[str, SyncedTable] = {}
        self._runs: dict[str, str | None] = {}
        self._lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------------

    async def restore(self) -> None:
        """Start again what was registered before the stack stopped."""
        if not self.registry.exists():
            return
        saved = json.loads(self.registry.read_text())
        for spec in saved.get("copies", []):
            try:
                await self.create_copy(spec, persist=False)
            except Exception as exc:
                log.error("cdf_copy.restore_failed", spec=spec, error=str(exc))
        for spec in saved.get("synced_tables", []):
            try:
                await self.create_synced(spec, persist=False)
            except Exception as exc:
                log.error("synced_table.restore_failed", name=spec.get("name"), error=str(exc))

    async def close(self) -> None:
        for copy in self.copies.values():
            await copy.stop()
        for table in self.synced.values():
            await table.stop()

    def _persist(self) -> None:
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        saved = {
            "copies": [c.spec() for c in self.copies.values()],
            "synced_tables": [
                {"name": t.name, "spec": t.spec, "sync_interval_s": t.sync_interval_s}
                for t in self.synced.values()
            ],
        }
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(saved, indent=2))
        tmp.replace(self.registry)

    # -- operations ---------------------------------------------------------------------

    async def create_copy(self, body: dict[str, Any], *, persist: bool = True) -> dict[str, Any]:
        source = parse_table_name(_text(body, "source"))
        target = parse_table_name(_text(body, "target"))
        run_id = body.get("run_id")
        async with self._lock:
            copy = self.copies.get(target)
            if copy is not None and copy.source.name != source:
                raise _error(409, f"{target} is already copied from {copy.source.name}")
            if copy is None or copy.status.state == "STOPPED":
                copy = CdfCopy(self.catalog, source, target)
                await copy.start()
                self.copies[target] = copy
            if self._runs.get(f"copy:{target}") != run_id:
                copy.reset_freshness()
                self._runs[f"copy:{target}"] = run_id
            if persist:
                self._persist()
        return copy.describe()

    async def create_synced(self, body: dict[str, Any], *, persist: bool = True) -> dict[str, Any]:
        if self.postgres is None:
            raise _error(409, "the local stack runs without Postgres (--no-postgres)")
        name = parse_table_name(_text(body, "name"))
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise _error(400, "spec must be an object")
        keys = spec.get("primary_key_columns")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise _error(400, "spec.primary_key_columns must be a non-empty list of names")
        policy = spec.get("scheduling_policy", "CONTINUOUS")
        if policy != "CONTINUOUS":
            raise _error(400, f"scheduling_policy {policy!r}: only CONTINUOUS is served here")
        interval = body.get("sync_interval_s", 0)
        if not isinstance(interval, int | float) or interval < 0 or interval > 3600:
            raise _error(400, "sync_interval_s must be a number of seconds in 0..3600")
        clean = {
            "source_table_full_name": parse_table_name(_text(spec, "source_table_full_name")),
            "primary_key_columns": keys,
            "timeseries_key": spec.get("timeseries_key"),
        }
        run_id = body.get("run_id")
        async with self._lock:
            table = self.synced.get(name)
            if table is not None and (table.spec != clean or table.sync_interval_s != interval):
                await table.stop()
                table = None
            if table is None or table.state == "SYNCED_TABLED_OFFLINE":
                writer_role = psycopg.conninfo.conninfo_to_dict(self.postgres.dsn)["user"]
                table = SyncedTable(
                    self.catalog,
                    superuser_conninfo(self.data_dir / "postgres"),
                    str(writer_role),
                    name,
                    clean,
                    float(interval),
                )
                await table.start()
                self.synced[name] = table
            if self._runs.get(f"synced:{name}") != run_id:
                table.reset_freshness()
                self._runs[f"synced:{name}"] = run_id
            if persist:
                self._persist()
        return table.describe()

    async def stop_copy(self, target: str) -> dict[str, Any]:
        copy = self._copy(target)
        await copy.stop()
        return copy.describe()

    async def stop_synced(self, name: str) -> dict[str, Any]:
        table = self._synced(name)
        await table.stop()
        return table.describe()

    def _copy(self, target: str) -> CdfCopy:
        copy = self.copies.get(_canonical(target))
        if copy is None:
            raise _error(404, f"no copy into {target}")
        return copy

    def _synced(self, name: str) -> SyncedTable:
        table = self.synced.get(_canonical(name))
        if table is None:
            raise _error(404, f"no synced table {name}")
        return table

    # -- HTTP -------------------------------------------------------------------------

    def add_routes(self, app: FastAPI, authorize: Callable[[str], None]) -> None:
        async def body_of(request: Request) -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                raise _error(400, "the body must be a JSON object") from None
            if not isinstance(body, dict):
                raise _error(400, "the body must be a JSON object")
            return body

        async def create_copy(request: Request, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return await _translated(self.create_copy(await body_of(request)))

        async def get_copy(target: str, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return self._copy(target).describe()

        async def stop_copy(target: str, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return await self.stop_copy(target)

        async def create_synced(request: Request, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return await _translated(self.create_synced(await body_of(request)))

        async def get_synced(name: str, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return self._synced(name).describe()

        async def stop_synced(name: str, authorization: str = Header(default="")) -> Any:
            authorize(authorization)
            return await self.stop_synced(name)

        app.add_api_route(f"{ROUTE}/copies", create_copy, methods=["POST"])
        app.add_api_route(f"{ROUTE}/copies/{{target}}", get_copy, methods=["GET"])
        app.add_api_route(f"{ROUTE}/copies/{{target}}", stop_copy, methods=["DELETE"])
        app.add_api_route(f"{ROUTE}/synced-tables", create_synced, methods=["POST"])
        app.add_api_route(f"{ROUTE}/synced-tables/{{name}}", get_synced, methods=["GET"])
        app.add_api_route(f"{ROUTE}/synced-tables/{{name}}", stop_synced, methods=["DELETE"])


async def _translated(operation: Any) -> Any:
    try:
        return await operation
    except EmulatorError as exc:
        raise _error(404 if "does not exist" in str(exc) else 400, str(exc)) from None


_CODES = {400: "INVALID_PARAMETER_VALUE", 404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_CONFLICT"}


def _error(status: int, message: str) -> ApiError:
    """Refusals in the Databricks API's error shape (error_code, message)."""
    return ApiError(status, _CODES[status], message)


def _canonical(name: str) -> str:
    try:
        return parse_table_name(name)
    except EmulatorError as exc:
        raise _error(400, str(exc)) from None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _error(400, f"{key} must be a table name")
    return value
