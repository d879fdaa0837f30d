"""The Lakebase writer: psycopg 3's async pool, one transaction per batch, COPY by default.

A batch is one transaction: binary `COPY ... FROM STDIN` (or a pipelined INSERT in
`insert` mode) and COMMIT; `write()` returns only after COMMIT succeeded. Any error rolls
the transaction back, so a batch lands whole or not at all.

Any table schema: each `TableRef` names its Postgres table (`schema.table`). `prepare()`
creates a missing table from the schema's derived DDL (the id column its primary key, an
index on the batch column) and checks an existing one's column types, once per table;
the COPY and INSERT statements and the binary COPY types are derived once per table too.
A batch's Arrow columns become Python values column by column, and rows only at the edge
(`zip` into `write_row`). Every Databricks type has a Postgres form (complex types and
VARIANT as jsonb); only text holding NUL characters cannot be stored, and such a batch
fails before anything is sent.

Passwords come from a password provider, asked once per *new* connection: in local mode
the DSN's password, in Databricks mode an OAuth token from `generate_database_credential`
(valid for an hour). Pooled connections retire after 45 minutes, well before their token
expires, and their replacements authenticate with a fresh token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import re
import select
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from dwbench.errors import (
    DirectWriteError,
    PoolWaitError,
    SchemaNotSupportedError,
    WriteFailedError,
    WriterUnavailableError,
)
from workloads.base import Rows, TableRef
from workloads.schema import TableSchema
from workloads.types import Primitive
from workloads.wire import python_columns
from writers.base import Availability, DataWriterInterface, Targets, WriteReceipt, WriterSettings

log = structlog.get_logger(__name__)
# Batches of at least this many Arrow bytes are converted to Postgres values in a thread.
_CONVERT_OFF_LOOP_BYTES = 512 * 1024
# COPY yields to the event loop after this many rows.
_COPY_ROWS_PER_YIELD = 2_000

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
_MAX_IDENTIFIER_BYTES = 63  # Postgres truncates longer names (NAMEDATALEN - 1)

CONNECT_TIMEOUT_S = 5
OPEN_TIMEOUT_S = 10.0
POOL_TIMEOUT_S = 30.0  # how long a write waits for a pooled connection
AVAILABILITY_TIMEOUT_S = 2.0
MAX_LIFETIME_S = 45 * 60.0  # OAuth tokens live an hour; retire connections well before
POOL_MAX_SIZE = 16  # the pool's size until a benchmark asks for more (`reserve`)
# Connections of Postgres' max_connections a resized pool leaves to other clients.
POOL_HEADROOM = 2
_ROOM_SQL = (
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true)::int, 0),"
    " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
)
# A transaction's lock on one table name while it may create the table (released at commit).
_CREATE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('dwbench.create:' || %s, 0))"
CREDENTIAL_REUSE_S = 5 * 60.0
CREDENTIAL_EXPIRY_MARGIN_S = 5 * 60.0
# SQLSTATEs that say the server or the session is out of reach rather than the data wrong.
_CONNECTION_SQLSTATES = ("08", "28", "3D", "53300", "57P01", "57P02", "57P03")

# Binary COPY carries a date as int32 days and a timestamp as int64 µs since 2000-01-01
# (UTC for timestamptz). Arrow holds the same integers counted from 1970, so one vectorised
# subtraction gives the wire's value and skips a Python date/datetime per value (to_pylist
# of a 10,000-row timestamptz column alone took 42 ms, the whole batch's COPY ~35 ms).
_DAYS_1970_TO_2000 = 10_957
_MICROS_1970_TO_2000 = _DAYS_1970_TO_2000 * 86_400 * 1_000_000
_AS_INTEGERS: dict[str, tuple[str, pa.DataType, int]] = {
    "DATE": ("int4", pa.int32(), _DAYS_1970_TO_2000),
    "TIMESTAMP": ("int8", pa.int64(), _MICROS_1970_TO_2000),
    "TIMESTAMP_NTZ": ("int8", pa.int64(), _MICROS_1970_TO_2000),
}
# Types an existing table's column may have where the derived DDL says `text`: the same
# binary form.
_TEXT_ALIKE = frozenset({"text", "varchar"})
_VARIANT = Primitive("VARIANT")
_JSON_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

PasswordProvider = Callable[[], Awaitable[str]]


class LakebaseSettings(WriterSettings):
    """LAKEBASE_*, and libpq's own PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE
    (which Databricks Apps sets for a database resource)."""

    model_config = SettingsConfigDict(env_prefix="LAKEBASE_")

    host: str | None = Field(default=None, validation_alias="PGHOST")
    port: int = Field(default=5432, validation_alias="PGPORT")
    database: str | None = Field(default=None, validation_alias="PGDATABASE")
    user: str | None = Field(default=None, validation_alias="PGUSER")
    password: SecretStr | None = Field(default=None, validation_alias="PGPASSWORD")
    sslmode: str | None = Field(default=None, validation_alias="PGSSLMODE")
    instance_name: str | None = None
    # The default table availability shows; each batch names its own.
    table: str = "public.products"
    write_mode: Literal["copy", "insert"] = "copy"
    # A batch's transaction that has not committed in this time is cancelled and fails.
    write_timeout_s: float = Field(default=120.0, gt=0)
    # The most connections the pool opens (a benchmark sizes it to its concurrency, up to
    # this and to what the server's max_connections leaves free).
    pool_max_size: int = Field(default=128, ge=1)


class StaticPassword:
    """The password of a DSN or of PGPASSWORD: the same for every connection."""

    def __init__(self, password: str) -> None:
        self._password = password

    async def __call__(self) -> str:
        return self._password


class DatabaseCredentialProvider:
    """Lakebase OAuth tokens from `generate_database_credential`.

    A token is reused for a few minutes so that a burst of new connections makes one API
    call, but never closer than a safety margin to its expiry.
    """

    def __init__(
        self,
        client: Any,
        instance_name: str,
        *,
        reuse_s: float = CREDENTIAL_REUSE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client  # a databricks.sdk.WorkspaceClient, or anything with .database
        self.instance_name = instance_name
        self._reuse_s = reuse_s
        self._clock = clock
        self._token: str | None = None
        self._reuse_until = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._reuse_until:
                return self._token
            try:
                credential = await asyncio.to_thread(
                    self._client.database.generate_database_credential,
                    instance_names=[self.instance_name],
                    request_id=str(uuid.uuid4()),
                )
            except Exception as exc:  # the SDK's errors, network errors
                raise WriterUnavailableError(
                    f"generate_database_credential for Lakebase instance "
                    f"{self.instance_name!r} failed: {exc}",
                    writer="lakebase",
                ) from exc
            if not credential.token:
                raise WriterUnavailableError(
                    f"generate_database_credential for {self.instance_name!r} returned no token",
                    writer="lakebase",
                )
            expires = _parse_expiry(credential.expiration_time) or now + 3600.0
            self._token = credential.token
            self._reuse_until = min(now + self._reuse_s, expires - CREDENTIAL_EXPIRY_MARGIN_S)
            return credential.token


def _parse_expiry(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_table(name: str) -> tuple[str, str]:
    """`schema.table` as two identifiers, folded to lower case as Postgres folds unquoted."""
    parts = name.strip().lower().split(".")
    if len(parts) != 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise SchemaNotSupportedError(
            f"the Postgres table must be schema.table (letters, digits, _), got {name!r}",
            writer="lakebase",
        )
    return parts[0], parts[1]


def _as_is(text: str) -> str:
    return text


@dataclass(eq=False)
class _TablePlan:
    """One table's statements and column forms, derived from its schema once."""

    table: TableRef
    name: str  # schema.table, validated
    ident: sql.Identifier
    copy_sql: sql.Composed
    insert_sql: sql.Composed
    # Binary COPY types in column order (the integer forms of dates and timestamps).
    copy_types: list[str]
    # Columns COPY sends as integers: name -> (Arrow integer type, epoch shift).
    copy_integers: dict[str, tuple[pa.DataType, int]]
    # The other columns, converted by python_columns for COPY (None when there are none).
    copy_plain: TableSchema | None
    # jsonb columns: name -> how a value becomes JSON text (VARIANT is JSON text already).
    json_dumps: dict[str, Callable[[Any], str]]
    # Columns holding text somewhere in their type (checked for NUL characters).
    text_columns: list[str]
    ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def matches(self, table: TableRef) -> bool:
        return self.table is table or (
            self.table == table
            and (self.table.schema is table.schema or self.table.schema == table.schema)
        )

    def copy_columns(self, batch: pa.RecordBatch) -> list[list[Any]]:
        plain = iter(python_columns(batch, self.copy_plain, "postgres") if self.copy_plain else ())
        out = []
        for col in self.table.schema.columns:
            integers = self.copy_integers.get(col.name)
            if integers is None:
                out.append(self._wrapped(col.name, next(plain)))
                continue
            array = batch.column(col.name)
            if array.type != col.type.arrow():  # another unit or zone: Arrow converts it
                array = array.cast(col.type.arrow())
            int_type, shift = integers
            out.append(pc.subtract_checked(array.cast(int_type), shift).to_pylist())
        return out

    def insert_columns(self, batch: pa.RecordBatch) -> list[list[Any]]:
        schema = self.table.schema
        columns = python_columns(batch, schema, "postgres")
        return [self._wrapped(c.name, v) for c, v in zip(schema.columns, columns, strict=True)]

    def _wrapped(self, name: str, values: list[Any]) -> list[Any]:
        dumps = self.json_dumps.get(name)
        if dumps is None:
            return values
        return [None if v is None else Jsonb(v, dumps) for v in values]


def _plan_for(table: TableRef) -> _TablePlan:
    """Statements and column forms of a table; SchemaNotSupportedError when it has none."""
    schema = table.schema
    for col in schema.columns:
        if '"' in col.name or len(col.name.encode()) > _MAX_IDENTIFIER_BYTES:
            raise SchemaNotSupportedError(
                f"column {col.name!r} of workload {table.workload} cannot be a Postgres "
                f"column name here (at most {_MAX_IDENTIFIER_BYTES} bytes, no double quotes)",
                writer="lakebase",
            )
    pg_schema, pg_table = parse_table(table.postgres_table)
    ident = sql.Identifier(pg_schema, pg_table)
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in schema.columns)
    copy_types: list[str] = []
    copy_integers: dict[str, tuple[pa.DataType, int]] = {}
    json_dumps: dict[str, Callable[[Any], str]] = {}
    text_columns: list[str] = []
    for col in schema.columns:
        dtype = col.type
        pg_type = dtype.postgres().split("(")[0]  # numeric(p,s): the binary form is numeric's
        if isinstance(dtype, Primitive) and dtype.name in _AS_INTEGERS:
            wire, int_type, shift = _AS_INTEGERS[dtype.name]
            copy_types.append(wire)
            copy_integers[col.name] = (int_type, shift)
        else:
            copy_types.append(pg_type)
        if pg_type == "jsonb":
            json_dumps[col.name] = _as_is if dtype == _VARIANT else _JSON_DUMPS
        if any(t in (Primitive("STRING"), _VARIANT) for t in dtype.walk()):
            text_columns.append(col.name)
    plain = [c for c in schema.columns if c.name not in copy_integers]
    return _TablePlan(
        table=table,
        name=f"{pg_schema}.{pg_table}",
        ident=ident,
        copy_sql=sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(ident, names),
        insert_sql=sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            ident, names, sql.SQL(", ").join([sql.Placeholder()] * len(schema.columns))
        ),
        copy_types=copy_types,
        copy_integers=copy_integers,
        copy_plain=TableSchema(tuple(plain)) if plain else None,
        json_dumps=json_dumps,
        text_columns=text_columns,
    )


def _nul_in(array: pa.Array, path: str, top: bool = True) -> str | None:
    """Where a NUL character sits in the text of a column, nested text included, or None."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if not _may_hold_nul(array):
            return None
        found = pc.index(pc.fill_null(pc.match_substring(array, "\x00"), False), True).as_py()
        if found < 0:
            return None
        return f"column {path}, row {found}," if top else f"column {path}"
    if pa.types.is_map(kind):
        # keys and items are the whole child arrays, not the slice's part of them.
        offsets = array.offsets
        start, end = offsets[0].as_py(), offsets[-1].as_py()
        keys, items = (child.slice(start, end - start) for child in (array.keys, array.items))
        return _nul_in(keys, f"{path} (a key)", False) or _nul_in(items, f"{path} (a value)", False)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _nul_in(array.flatten(), f"{path}[]", False)
    if pa.types.is_struct(kind):
        for i, child in enumerate(array.flatten()):
            if where := _nul_in(child, f"{path}.{kind.field(i).name}", False):
                return where
    return None


def _may_hold_nul(array: pa.Array) -> bool:
    """Whether the bytes of a string array's values hold a zero: a memchr-speed scan (µs
    for a column of 10,000 values), where Arrow's match_substring takes milliseconds."""
    if len(array) == 0:
        return False
    _, offsets, data = array.buffers()
    if data is None:
        return False
    ends = np.frombuffer(offsets, np.int64 if pa.types.is_large_string(array.type) else np.int32)
    start, end = int(ends[array.offset]), int(ends[array.offset + len(array)])
    return end > start and not np.frombuffer(data, np.uint8, end - start, start).all()


def missing_workspace_settings(pg: LakebaseSettings) -> list[str]:
    """The variables a Lakebase connection on a workspace needs that are not set."""
    return [
        var
        for var, value in (
            ("PGHOST", pg.host),
            ("PGDATABASE", pg.database),
            ("PGUSER", pg.user),
            ("LAKEBASE_INSTANCE_NAME", pg.instance_name),
        )
        if not value
    ]


class LakebaseWriter(DataWriterInterface):
    name = "lakebase"
    label = "Lakebase (Postgres)"
    family = "lakebase"
    color = "#047857"
    client_distributions = ("psycopg", "psycopg-pool")
    settings_class = LakebaseSettings
    config: LakebaseSettings

    def __init__(
        self,
        targets: Targets,
        *,
        password_provider: PasswordProvider | None = None,
        max_lifetime_s: float = MAX_LIFETIME_S,
        pool_max_size: int = POOL_MAX_SIZE,
    ) -> None:
        super().__init__(targets)
        # Only the default that availability shows: each batch names its own table.
        self.default_table = self.config.table
        self.write_mode = self.config.write_mode
        self.write_timeout_s = self.config.write_timeout_s
        self._password_provider = password_provider
        self._max_lifetime_s = max_lifetime_s
        self._pool_max_size = min(pool_max_size, self.config.pool_max_size)
        self._in_use = 0  # connections handed out by `_connection` (pool waits vs outages)
        self._params: dict[str, Any] = {}
        self._auth = "not configured"
        self._secrets: collections.deque[str] = collections.deque(maxlen=4)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._open_error: str | None = None
        self._plans: dict[str, _TablePlan] = {}

    # -- configuration ----------------------------------------------------------------------

    async def _configure(self) -> None:
        """Connection parameters (no password) and the password provider, by mode."""
        pg = self.config
        if self.targets.mode == "databricks":
            missing = missing_workspace_settings(pg)
            if missing:
                raise WriterUnavailableError(f"{', '.join(missing)} not set", writer=self.name)
            no_auth = self.targets.auth_missing()
            if no_auth and self._password_provider is None:
                raise WriterUnavailableError(no_auth, writer=self.name)
            assert pg.instance_name is not None
            sslmode = pg.sslmode if pg.sslmode in ("verify-ca", "verify-full") else "require"
            params = {"host": pg.host, "port": pg.port, "dbname": pg.database}
            self._params = {**params, "user": pg.user, "sslmode": sslmode}
            auth = self.targets.workspace_auth
            self._auth = (
                f"oauth token via generate_database_credential (instance {pg.instance_name}"
                f"{f', as {auth.summary()}' if auth else ''})"
            )
            if self._password_provider is None:
                client = await asyncio.to_thread(self._workspace_client)
                self._password_provider = DatabaseCredentialProvider(client, pg.instance_name)
            return
        if self.targets.postgres_dsn is not None:
            try:
                self._params = conninfo_to_dict(self.targets.postgres_dsn.get_secret_value())
            except psycopg.Error:  # libpq's message may quote the DSN, password and all
                raise WriterUnavailableError(
                    "the Postgres DSN is not a valid libpq connection string", writer=self.name
                ) from None
        elif pg.host:
            self._params = {"host": pg.host, "port": pg.port, "dbname": pg.database}
            self._params.update(user=pg.user, sslmode=pg.sslmode)
            if pg.password is not None:
                self._params["password"] = pg.password.get_secret_value()
        else:
            raise WriterUnavailableError(
                "no Postgres to write to: the local stack runs none, and PGHOST is not set",
                writer=self.name,
            )
        self._params = {k: v for k, v in self._params.items() if v is not None}
        password = str(self._params.pop("password", ""))
        self._auth = "password (local)"
        if self._password_provider is None:
            self._password_provider = StaticPassword(password)

    def _workspace_client(self) -> Any:
        # The workspace's unified-auth Config (dwbench.auth): the app's service principal,
        # or the CLI user's profile, PAT or `databricks auth login` token.
        auth = self.targets.workspace_auth
        assert auth is not None
        try:
            return auth.workspace_client()
        except Exception as exc:  # the SDK's config and auth errors
            raise WriterUnavailableError(
                f"cannot authenticate to {auth.host} with {auth.summary()}: {exc}",
                writer=self.name,
            ) from exc

    async def _connect_kwargs(self) -> dict[str, Any]:
        """The parameters of one new connection, with the provider's current password."""
        assert self._password_provider is not None
        password = await self._password_provider()
        if password and password not in self._secrets:
            self._secrets.append(password)
        return {
            **self._params,
            "password": password,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "dwbench-lakebase",
            "autocommit": True,  # transactions are explicit, one per batch
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        began = time.monotonic()
        try:
            await self._configure()
            async with self._translated("connect"):
                # One direct connection first: it fails fast, with the server's own reason,
                # where the pool would retry quietly until its timeout.
                conn = await psycopg.AsyncConnection.connect(**await self._connect_kwargs())
                await conn.close()
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = _ReconnectingPool(
                    kwargs=self._connect_kwargs,
                    min_size=1,
                    max_size=self._pool_max_size,
                    open=False,
                    name="lakebase",
                    timeout=POOL_TIMEOUT_S,
                    max_lifetime=self._max_lifetime_s,
                    check=check_pooled_connection,
                )
                try:
                    await pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
                except BaseException:
                    await pool.close()
                    raise
        except DirectWriteError as exc:
            self._open_error = exc.message
            raise
        self._pool, self._open_error = pool, None
        log.info(
            "lakebase.opened",
            writer=self.name,
            host=self._params.get("host"),
            mode=self.write_mode,
            ms=round((time.monotonic() - began) * 1000),
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        for plan in self._plans.values():
            plan.ready = False  # a reopened writer looks at its tables again
        if pool is not None:
            await pool.close()

    async def reserve(self, concurrency: int) -> str | None:
        """Size the pool to `concurrency` batches in flight, and one connection more for the
        visibility sampler, up to LAKEBASE_POOL_MAX_SIZE and what the server's
        max_connections leaves free; a note when that is fewer than `concurrency`."""
        pool = self._pool
        if pool is None:
            return None
        wanted = max(POOL_MAX_SIZE, concurrency + 1)
        size, bound = min(wanted, self.config.pool_max_size), "LAKEBASE_POOL_MAX_SIZE"
        room, problem = await self._server_room(pool)
        if room is not None and room < size:
            size, bound = max(room, 1), "the server's free max_connections"
        if size != pool.max_size:
            await pool.resize(min_size=min(pool.min_size, size), max_size=size)
            self._pool_max_size = size
            log.info("lakebase.pool_resized", writer=self.name, max_size=size, bound=bound)
        if size >= concurrency:
            return problem
        return (
            f"pool of {size} connections ({bound}) for concurrency {concurrency}: up to "
            f"{concurrency - size} batches wait for a connection, and one that waits over "
            f"{POOL_TIMEOUT_S:g} s fails as a pool wait" + (f"; {problem}" if problem else "")
        )

    async def _server_room(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    ) -> tuple[int | None, str | None]:
        """Connections this pool may hold: its own and the server's free ones, less a few
        for other clients; None (and why) when the server did not say."""
        try:
            async with (
                asyncio.timeout(AVAILABILITY_TIMEOUT_S),
                self._connection("pool sizing", wait_s=AVAILABILITY_TIMEOUT_S) as conn,
            ):
                row = await (await conn.execute(_ROOM_SQL)).fetchone()
        except (DirectWriteError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, DirectWriteError) else "no answer"
            return None, f"max_connections not read ({reason}); the pool was not bounded by it"
        assert row is not None
        limit, used = int(row[0]), int(row[1])
        own = int(pool.get_stats().get("pool_size", 0))
        return limit - used + own - POOL_HEADROOM, None

    # -- tables -----------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        self._plan(table)

    def _plan(self, table: TableRef) -> _TablePlan:
        plan = self._plans.get(table.postgres_table)
        if plan is None or not plan.matches(table):
            plan = _plan_for(table)
            self._plans[table.postgres_table] = plan
        return plan

    async def prepare(self, table: TableRef) -> None:
        """Create the table when it is missing, or check an existing one's columns; once."""
        plan = self._plan(table)
        if plan.ready:
            return
        async with plan.lock:
            if plan.ready:
                return
            try:
                async with (
                    asyncio.timeout(self.write_timeout_s),
                    self._connection("prepare", plan.name) as conn,
                ):
                    await self._ensure_table(conn, plan)
            except TimeoutError:
                raise WriterUnavailableError(
                    f"prepare: no answer from {self._where()} within "
                    f"{self.write_timeout_s:g} s while looking at {plan.name}",
                    writer=self.name,
                ) from None
            plan.ready = True

    async def _ensure_table(self, conn: psycopg.AsyncConnection[Any], plan: _TablePlan) -> None:
        if await self._checked_existing(conn, plan):
            return  # no DDL: it needs CREATE on the schema, which a writer may not have
        table = plan.table
        ddl = table.schema.postgres_ddl(plan.name, primary_key=table.id_column)
        async with conn.transaction():
            # Clients of a run (other processes, other hosts) prepare the same table at once:
            # CREATE TABLE IF NOT EXISTS is no guard against that (the loser fails on the
            # catalog's unique index), so the creators take turns and look again in turn.
            await conn.execute(_CREATE_LOCK_SQL, [plan.name])
            if await self._checked_existing(conn, plan):
                return
            await conn.execute(sql.SQL(ddl))  # derived from the schema, not input
            if table.batch_column is not None:
                index = sql.Identifier(f"{plan.name.split('.')[1]}_{table.batch_column}_idx"[:63])
                await conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                        index, plan.ident, sql.Identifier(table.batch_column)
                    )
                )
        log.info("lakebase.table_created", writer=self.name, table=plan.name)

    async def _checked_existing(self, conn: psycopg.AsyncConnection[Any], plan: _TablePlan) -> bool:
        """Whether the table exists (its columns then checked against the plan's)."""
        cur = await conn.execute("SELECT to_regclass(%s)::oid", [plan.ident.as_string(conn)])
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return False
        await self._check_columns(conn, plan, row[0])
        return True

    async def _check_columns(
        self, conn: psycopg.AsyncConnection[Any], plan: _TablePlan, oid: int
    ) -> None:
        """Refuse an existing table whose columns would misread the batch's values: binary
        COPY does not convert, so four bytes of int4 land in a real column as a float."""
        cur = await conn.execute(
            "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
            [oid],
        )
        existing = {name: (typname, shown) for name, typname, shown in await cur.fetchall()}
        types = conn.adapters.types
        problems = []
        for col in plan.table.schema.columns:
            wanted = col.type.postgres()
            typname = types[wanted.split("(")[0]].name
            found = existing.get(col.name)
            if found is None:
                problems.append(f"{col.name} is missing")
            elif found[0] != typname and not (typname == "text" and found[0] in _TEXT_ALIKE):
                problems.append(f"{col.name} is {found[1]}, not {wanted}")
        if problems:
            raise WriteFailedError(
                f"{plan.name} exists but does not fit workload {plan.table.workload}: "
                f"{'; '.join(problems)}. Nothing was written",
                writer=self.name,
            )

    # -- the contract -----------------------------------------------------------------------

    async def availability(self) -> Availability:
        details = self._details()
        if self._pool is None:
            return Availability(False, self._open_error or "not open", details)
        # Two tries: the first may draw a pooled connection the server has since dropped
        # (a restart), which the pool then replaces.
        reason = ""
        for _attempt in range(2):
            try:
                async with (
                    asyncio.timeout(AVAILABILITY_TIMEOUT_S),
                    self._connection("availability check", wait_s=AVAILABILITY_TIMEOUT_S) as conn,
                ):
                    await conn.execute("SELECT 1")
                return Availability(True, details=details)
            except WriterUnavailableError as exc:
                reason = exc.message  # and try once more
            except DirectWriteError as exc:
                reason = exc.message
                break
            except TimeoutError:
                reason = f"no answer to SELECT 1 within {AVAILABILITY_TIMEOUT_S:g} s"
                break
        return Availability(False, reason, details)

    async def write(self, rows: Rows) -> WriteReceipt:
        n = len(rows)
        if n == 0:
            return WriteReceipt(rows=0, details={"mode": self.write_mode, "transaction": "none"})
        if self._pool is None:
            raise WriterUnavailableError("the Lakebase writer is not open", writer=self.name)
        plan = self._plan(rows.table)
        if not plan.ready:
            await self.prepare(rows.table)
        if rows.data.nbytes >= _CONVERT_OFF_LOOP_BYTES:
            # A big batch's conversion takes long enough (about 1 s per 100,000 products
            # rows) to hold up every other request: done in a thread.
            columns = await asyncio.to_thread(self._values, plan, rows)
        else:
            columns = self._values(plan, rows)
        began = time.monotonic()
        progress: dict[str, str] = {}
        try:
            # A server that stops answering would otherwise hold the write for ever. On
            # timeout psycopg cancels the query, and drops the connection if that fails.
            async with asyncio.timeout(self.write_timeout_s):
                await self._write_in_transaction(plan, columns, n, progress)
        except TimeoutError:
            outcome = "the transaction was cancelled and did not commit"
            if progress.get("phase") == "commit":
                outcome = "the outcome of COMMIT is unknown"
            raise WriteFailedError(
                f"{self.write_mode}: no answer from {self._where()} within "
                f"{self.write_timeout_s:g} s; {outcome}",
                writer=self.name,
            ) from None
        log.debug(
            "lakebase.written",
            writer=self.name,
            table=plan.name,
            rows=n,
            ms=round((time.monotonic() - began) * 1000),
        )
        count_key = "rows_copied" if self.write_mode == "copy" else "rows_inserted"
        details = {"mode": self.write_mode, count_key: n, "transaction": "committed"}
        return WriteReceipt(rows=n, details=details)

    def _values(self, plan: _TablePlan, rows: Rows) -> list[list[Any]]:
        """The batch's columns as the wire's Python values; nothing is sent on failure."""
        batch = rows.data
        try:
            for name in plan.text_columns:
                if where := _nul_in(batch.column(name), name):
                    raise WriteFailedError(
                        f"{where} holds a NUL character, which Postgres cannot store in "
                        f"text or jsonb; nothing of the batch was written into {plan.name}",
                        writer=self.name,
                    )
            if self.write_mode == "copy":
                return plan.copy_columns(batch)
            return plan.insert_columns(batch)
        except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            raise WriteFailedError(
                f"cannot convert the batch for {plan.name}: {exc}; nothing was written",
                writer=self.name,
            ) from exc

    async def _write_in_transaction(
        self, plan: _TablePlan, columns: list[list[Any]], n: int, progress: dict[str, str]
    ) -> None:
        async with (
            self._connection(self.write_mode, plan.name, progress=progress) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            if self.write_mode == "copy":
                written = await self._copy(cur, plan, columns)
            else:
                written = await self._insert(cur, plan, columns, n)
            if written != n:
                raise WriteFailedError(
                    f"{self.write_mode} wrote {written} rows of {n}; rolled back",
                    writer=self.name,
                )
            progress["phase"] = "commit"  # leaving the block commits

    async def _copy(
        self, cur: psycopg.AsyncCursor[Any], plan: _TablePlan, columns: list[list[Any]]
    ) -> int:
        # Binary COPY with the column types declared up front: no per-value type lookup
        # and no text parsing on the server (15-35% more rows/s than text COPY here).
        async with cur.copy(plan.copy_sql) as copy:
            copy.set_types(plan.copy_types)
            for i, row in enumerate(zip(*columns, strict=True), 1):
                await copy.write_row(row)
                if i % _COPY_ROWS_PER_YIELD == 0:
                    # write_row suspends only when psycopg's buffer is full: let the rest
                    # of the app run between slices of a big batch.
                    await asyncio.sleep(0)
        return cur.rowcount

    async def _insert(
        self, cur: psycopg.AsyncCursor[Any], plan: _TablePlan, columns: list[list[Any]], n: int
    ) -> int:
        # executemany runs in pipeline mode: one round trip for the batch, not one per row.
        await cur.executemany(plan.insert_sql, zip(*columns, strict=True))
        return n  # executemany raises unless every row went in

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        if table.batch_column is None:
            raise NotImplementedError(
                f"workload {table.workload} has no batch column to count a batch's rows by"
            )
        plan = self._plan(table)
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            plan.ident, sql.Identifier(table.batch_column)
        )
        async with self._connection("count", plan.name) as conn:
            cur = await conn.execute(query, [batch_id])
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(
        self,
        action: str,
        table: str | None = None,
        *,
        wait_s: float | None = None,
        progress: dict[str, str] | None = None,
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise WriterUnavailableError("the Lakebase writer is not open", writer=self.name)
        async with self._translated(action, table, progress), self._pool.connection(wait_s) as conn:
            self._in_use += 1
            try:
                yield conn
            finally:
                self._in_use -= 1

    @contextlib.asynccontextmanager
    async def _translated(
        self, action: str, table: str | None = None, progress: dict[str, str] | None = None
    ) -> AsyncIterator[None]:
        """The one place where psycopg's errors become the app's."""
        try:
            yield
        except DirectWriteError:
            raise
        except PoolTimeout as exc:
            pool = self._pool
            if pool is not None and self._in_use >= pool.max_size:
                # Every connection is out on this writer's own work: the server is up and
                # the wait is backpressure (more batches in flight than connections).
                raise PoolWaitError(
                    f"{action} waited for a pooled connection: all {pool.max_size} of the "
                    f"pool's connections to {self._where()} were in use (more batches in "
                    f"flight than connections), and it {self._scrub(str(exc))}; nothing written",
                    writer=self.name,
                ) from exc
            raise WriterUnavailableError(
                f"{action}: no Postgres connection from the pool ({self._where()}): "
                f"{self._scrub(str(exc))}",
                writer=self.name,
            ) from exc
        except psycopg.Error as exc:
            state = exc.sqlstate
            reason = self._scrub(_server_message(exc))
            writing = action in ("copy", "insert")
            if action == "connect" or _is_connection_error(exc):
                outcome = ""
                if writing:
                    committing = progress is not None and progress.get("phase") == "commit"
                    outcome = "; the transaction did not commit"
                    if committing:
                        outcome = "; the outcome of COMMIT is unknown"
                code = f" (SQLSTATE {state})" if state else ""
                what = "cannot connect to" if action == "connect" else f"{action} failed at"
                raise WriterUnavailableError(
                    f"{what} {self._where()}{code}: {reason}{outcome}", writer=self.name
                ) from exc
            code = f"SQLSTATE {state} {type(exc).__name__}" if state else type(exc).__name__
            where = f" into {table}" if writing else f" on {table}" if table else ""
            rollback = "; rolled back, no rows of the batch were written" if writing else ""
            raise WriteFailedError(
                f"{action}{where} failed ({code}): {reason}{rollback}", writer=self.name
            ) from exc
        except UnicodeEncodeError as exc:  # a value Postgres cannot store as UTF-8 text
            raise WriteFailedError(
                f"{action} into {table} failed: {exc}; rolled back, no rows written",
                writer=self.name,
            ) from exc

    def _where(self) -> str:
        return f"{self._params.get('host')}:{self._params.get('port', 5432)}"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _details(self) -> dict[str, Any]:
        p = self._params
        return {
            "host": p.get("host"),
            "port": int(p.get("port", 5432)),
            "database": p.get("dbname"),
            "user": p.get("user"),
            "sslmode": p.get("sslmode", "prefer"),
            "table": self.default_table,  # LAKEBASE_TABLE, the default a run may override
            "tables": sorted(plan.name for plan in self._plans.values() if plan.ready),
            "write_mode": self.write_mode,
            "auth": self._auth,
            "pool": {"max_size": self._pool_max_size, "max_lifetime_s": self._max_lifetime_s},
        }


RECONNECT_MAX_DELAY_S = 2.0


class _CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's reconnect backoff (1 s, doubling), capped: after an outage of a
    minute its next attempt would come half a minute after the server is back, and writes
    would wait for it."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY_S)


class _ReconnectingPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """The pool, trying to reconnect at least every RECONNECT_MAX_DELAY_S while the server
    is away (psycopg_pool 3.3 takes the backoff object in `_add_connection`)."""

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        if attempt is None:
            attempt = _CappedBackoff(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing)

    async def _getconn_with_check_loop(self, deadline: float) -> psycopg.AsyncConnection[Any]:
        # psycopg_pool's loop backs off 1, 2, 4, 8 s... between failed checks: after a
        # restart every idle connection fails its check, and the fifth in a row would wait
        # past the pool timeout. A failed check discards its connection, so drawing the
        # next one at once cannot spin on the same one.
        while True:
            conn = await self._getconn_unchecked(deadline - time.monotonic())
            try:
                await self._check_connection(conn)
            except BaseException as exc:
                await self._putconn(conn, from_getconn=True)
                if not isinstance(exc, Exception):
                    raise  # cancelled: the connection goes back, no further try
            else:
                return conn
            if time.monotonic() >= deadline:
                raise PoolTimeout("no pooled connection passed its check in time")
            await asyncio.sleep(0)


async def check_pooled_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check before it hands out a connection: raises when the connection is
    broken, so that the pool discards it and draws another (or connects anew).

    A server that restarted (or ended the session: 57P01 admin_shutdown) has sent its
    FATAL message and closed the socket while the connection sat idle, and the first write
    on it would fail. An idle connection in autocommit has nothing to read, so a readable
    socket means the server said something: then one empty query finds out whether the
    connection still works (it also consumes a harmless notice). Otherwise no round trip."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the pooled connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


def _is_connection_error(exc: psycopg.Error) -> bool:
    if exc.sqlstate is None:  # raised by libpq or psycopg, not by the server
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate.startswith(_CONNECTION_SQLSTATES)


def _server_message(exc: psycopg.Error) -> str:
    """The server's message and detail on one line, or the client's message."""
    diag = exc.diag
    if diag.message_primary:
        detail = f" ({diag.message_detail})" if diag.message_detail else ""
        return f"{diag.message_primary}{detail}"
    return " ".join(str(exc).split()).removeprefix("connection failed: ")
