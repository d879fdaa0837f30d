"""The SQL writer: multi-row INSERTs of SQL literals through a SQL warehouse.

Statements go through databricks-sdk's Statement Execution API (the local stack emulates
it); `writers.sql_connector` sends the same statements through databricks-sql-connector, and
`writers.sql_copy` loads Parquet files with COPY INTO, both on this writer's code paths.

A write becomes `INSERT INTO `cat`.`sch`.`tbl` (`col`, ...) VALUES (...), (...)` statements
whose values are typed literals rendered column by column (`writers.sql_literals`), never
raw text. Each statement holds as many rows as fit STATEMENT_BUDGET_BYTES (the API takes
16 MiB of statement text; sizes count the text as it travels, JSON-escaped), and the rows
are spread evenly over as few statements as that allows, so most writes are one statement
and one commit. A row too large for a statement alone refuses the whole write up front.
Up to `max_concurrency` statements run at once.

A statement that FAILED still answers HTTP 200, so every statement's state is checked, and
the receipt comes back only when all of them SUCCEEDED. When a statement fails, the error
says how many rows other statements had committed by then; nothing is claimed written that
was not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx
import requests
import structlog
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import (
    DatabricksError,
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    TemporarilyUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from databricks.sdk.service.sql import ExecuteStatementRequestOnWaitTimeout, StatementState
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dwbench.errors import (
    DirectWriteError,
    InvalidSchemaError,
    RequestTooLargeError,
    SchemaNotSupportedError,
    WriteFailedError,
    WriterUnavailableError,
)
from workloads.base import Rows, TableRef
from workloads.types import Primitive, StructType
from writers.base import (
    Availability,
    DataWriterInterface,
    Targets,
    WriteReceipt,
    WriterSettings,
)
from writers.readback import WarehouseReader, quote_column
from writers.sql_literals import column_literals

log = structlog.get_logger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024
MAX_STATEMENT_BYTES = 16 * MiB  # the API's limit on statement text
STATEMENT_BUDGET_BYTES = 15 * MiB  # rows are packed up to this, a margin under the limit
_TABLE_NAME = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_DONE = (StatementState.SUCCEEDED, StatementState.FAILED, StatementState.CANCELED)
_VARIANT = Primitive("VARIANT")
AVAILABILITY_TIMEOUT_S = 2.0  # an availability check answers within this, whatever the server
# The size of text inside a JSON string as the SDK sends it (non-ASCII as \uXXXX), which is
# never less than its UTF-8 size: one measure for the request and the statement limit.
_json_escaped = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


class SqlSettings(WriterSettings):
    """DATABRICKS_WAREHOUSE_ID, SQL_TABLE."""

    model_config = SettingsConfigDict(env_prefix="SQL_")

    # The warehouse to write through (Databricks mode; the local stack names its own).
    warehouse_id: str | None = Field(default=None, validation_alias="DATABRICKS_WAREHOUSE_ID")
    table: str = "main.default.products"


@dataclass(frozen=True)
class InsertStatement:
    sql: str
    rows: int
    bytes: int  # the statement's size as sent (JSON-escaped)


def quote_table(name: str) -> str:
    """`catalog`.`schema`.`table`, after checking the name is three plain identifiers."""
    if not _TABLE_NAME.fullmatch(name):
        raise InvalidSchemaError(
            "the SQL writer takes a three-part table name catalog.schema.table of letters, "
            f"digits and underscores, got {name!r}"
        )
    return ".".join(f"`{part}`" for part in name.split("."))


def text_bytes(text: str) -> int:
    """What the text adds to a statement as the API receives it."""
    return len(_json_escaped(text)) - 2


def insert_statements(
    rows: Rows,
    *,
    budget_bytes: int = STATEMENT_BUDGET_BYTES,
    max_bytes: int = MAX_STATEMENT_BYTES,
) -> list[InsertStatement]:
    """The rows as INSERT statements of at most `budget_bytes` each (a row over the budget
    alone), as few as the budget allows, filled evenly.

    A row too large for `max_bytes` alone refuses the whole write, before anything is sent.
    """
    table = rows.table
    columns = table.schema.columns
    head = (
        f"INSERT INTO {quote_table(table.delta_table)} "
        f"({', '.join(quote_column(c.name) for c in columns)}) VALUES "
    )
    literals = [column_literals(rows.data.column(c.name), c.type) for c in columns]
    texts = ["(" + ", ".join(values) + ")" for values in zip(*literals, strict=True)]
    sizes = [text_bytes(t) for t in texts]
    head_size = text_bytes(head)
    for index, size in enumerate(sizes):
        if head_size + size > max_bytes:
            raise RequestTooLargeError(
                f"row {index}{_row_name(rows, index)} needs {size / MiB:.1f} MiB as SQL "
                f"literals; one statement must stay under {max_bytes // MiB} MiB, so it cannot "
                "be written through SQL",
                writer="sql",
            )
    # An even share of the rows for each statement, so statements that run at once finish
    # together: a statement ends where a row's middle passes the next multiple of the share
    # of the text, or where the next row would not fit the budget (a row over it goes alone).
    count = math.ceil((head_size + sum(sizes) + 2 * len(sizes)) / budget_bytes)
    share = (sum(sizes) + 2 * len(sizes)) / max(1, count)
    statements: list[InsertStatement] = []
    start, size, position, boundary = 0, head_size, 0, share
    for index, row_size in enumerate(sizes):
        middle = position + row_size / 2
        if index > start and size + 2 + row_size > budget_bytes:
            statements.append(_statement(head, texts[start:index], size))
            start, size, boundary = index, head_size, position + share  # shares from here
        elif index > start and middle > boundary:
            statements.append(_statement(head, texts[start:index], size))
            start, size = index, head_size
            while boundary < middle:
                boundary += share
        size += row_size + (2 if index > start else 0)
        position += row_size + 2
    if texts:
        statements.append(_statement(head, texts[start:], size))
    return statements


def _statement(head: str, texts: list[str], size: int) -> InsertStatement:
    return InsertStatement(head + ", ".join(texts), len(texts), size)


def _row_name(rows: Rows, index: int) -> str:
    column = rows.table.id_column
    if column is None:
        return ""
    return f" ({column} {rows.data.column(column)[index].as_py()})"


@dataclass(frozen=True)
class _Result:
    statement_id: str
    rows: list[list[Any]]


class _StatementFailed(Exception):
    """A statement that ended in another state than SUCCEEDED (translated to WriteFailedError)."""


class SqlWriter(DataWriterInterface):
    name = "sql"
    counts_payload = True
    label = "SQL warehouse"
    # Statements of one write in flight at once.
    max_concurrency = 4
    # Rows per statement up to this much statement text.
    statement_budget_bytes = STATEMENT_BUDGET_BYTES
    # How long one execute call waits for the result before we poll (0 = always poll).
    wait_timeout_s = 10
    settings_class = SqlSettings
    config: SqlSettings

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        s = self.settings
        self.local = targets.mode == "local"
        self.table = self.config.table  # the default target, shown in availability
        self.host = (
            targets.workspace_url if self.local else targets.workspace_url or s.workspace_url
        )
        # One warehouse for every SQL writer: DATABRICKS_WAREHOUSE_ID is the sql writer's.
        sql_config = (
            self.config
            if isinstance(self.config, SqlSettings)
            else targets.writer_config("sql", SqlSettings)
        )
        self.warehouse_id = targets.warehouse_id or sql_config.warehouse_id
        # Overall deadline per statement; a stopped warehouse can take minutes to start.
        self.statement_timeout_s = 60.0 if self.local else 600.0
        self._token = targets.local_token.get_secret_value() if targets.local_token else ""
        self._secrets = [x for x in (self._token, *_auth_secrets(targets)) if x]
        self._client: WorkspaceClient | None = None
        self.availability_timeout_s = AVAILABILITY_TIMEOUT_S
        self._reader: WarehouseReader | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _config_problem(self) -> str | None:
        if self.local:
            if not self.host or not self._token or not self.warehouse_id:
                return "the local stack's SQL API (URL, token, warehouse) is not known"
            return None
        missing = self.targets.auth_missing()
        if missing:
            return missing
        if not self.warehouse_id:
            return "set DATABRICKS_WAREHOUSE_ID to the id of the SQL warehouse to write through"
        return None

    async def open(self) -> None:
        if self._client is not None:
            return
        problem = self._config_problem()
        if problem:
            raise WriterUnavailableError(problem, writer=self.name)
        # Building a client probes the host (and fetches OAuth endpoints): not on the loop.
        self._client = await self._call(self._make_client)
        log.info("sql_writer_opened", writer=self.name, **self._details())

    def _make_client(self) -> WorkspaceClient:
        # Short retry budget: an unreachable server fails in seconds, not the SDK's 5 minutes.
        # http_timeout must outlast the execute call's own wait_timeout.
        if self.local:
            config = Config(
                host=self.host,
                token=self._token,
                auth_type="pat",
                retry_timeout_seconds=2,
                http_timeout_seconds=self.wait_timeout_s + 20,
            )
            return WorkspaceClient(config=config)
        # The workspace's unified-auth Config (dwbench.auth), whatever its auth type; its
        # retry budget is short already, and the SDK's 60 s HTTP timeout outlasts wait_timeout.
        auth = self.targets.workspace_auth
        assert auth is not None
        return auth.workspace_client()

    async def _probe_warehouse(self) -> tuple[str | None, str]:
        """The warehouse's name and state. Locally one plain request, no retries (the
        SDK's retry loop would outlast the availability timeout on a refused connection);
        on a workspace the SDK's client, bounded by the caller's timeout."""
        if not self.local:
            assert self._client is not None
            warehouse = await self._call(self._client.warehouses.get, self.warehouse_id or "")
            return warehouse.name, warehouse.state.value if warehouse.state else "UNKNOWN"
        url = f"{str(self.host).rstrip('/')}/api/2.0/sql/warehouses/{self.warehouse_id}"
        try:
            async with httpx.AsyncClient(timeout=self.availability_timeout_s) as client:
                resp = await client.get(url, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as exc:
            root: BaseException = exc  # httpx's text is generic; the OSError under it says why
            while (inner := root.__cause__ or root.__context__) is not None:
                root = inner
            if isinstance(root, ConnectionRefusedError):
                root = ConnectionRefusedError("connection refused")
            raise WriterUnavailableError(
                f"cannot reach the SQL API at {self.host}: {_network(root) or type(root).__name__}",
                writer=self.name,
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        message = self._clean(str(body.get("message") or resp.text[:300]))
        if resp.status_code == 401:
            raise WriterUnavailableError(
                f"{self.host} rejected the credentials (HTTP 401): {message}", writer=self.name
            )
        if resp.status_code != 200:
            raise WriterUnavailableError(
                f"the SQL API at {self.host} answered HTTP {resp.status_code}: {message}",
                writer=self.name,
            )
        return body.get("name"), str(body.get("state") or "UNKNOWN")

    async def close(self) -> None:
        self._client = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    # -- availability ----------------------------------------------------------------------

    def _details(self) -> dict[str, Any]:
        auth = self.targets.workspace_auth
        return {
            "host": self.host,
            "warehouse_id": self.warehouse_id,
            "table": self.table,
            "auth": "pat (local token)" if self.local else (auth.summary() if auth else "none"),
        }

    async def availability(self) -> Availability:
        details = self._details()
        problem = self._config_problem()
        if problem:
            return Availability(False, problem, details)
        if self._client is None:
            return Availability(False, "the SQL writer is not open", details)
        timeout = self.availability_timeout_s
        try:
            name, state = await asyncio.wait_for(self._probe_warehouse(), timeout)
        except DirectWriteError as exc:
            return Availability(False, exc.message, details)
        except TimeoutError:
            return Availability(
                False,
                f"the SQL API at {self.host} did not answer within {timeout:g} s "
                f"(warehouses.get {self.warehouse_id})",
                details,
            )
        details.update(warehouse_name=name, warehouse_state=state)
        if state == "RUNNING":
            return Availability(True, None, details)
        if state in ("STARTING", "STOPPED", "STOPPING"):
            # A statement starts a stopped warehouse; reporting it unavailable would leave
            # nothing that could ever start it (availability has no side effects).
            details["note"] = f"the warehouse is {state}; the first statement starts it (minutes)"
            return Availability(True, None, details)
        return Availability(False, f"warehouse {self.warehouse_id} is {state}", details)

    # -- writing ---------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        """Every type has a literal; VARIANT only where a warehouse stores it."""
        quote_table(table.delta_table)
        for col, dtype in table.schema.types():
            names = [f.name for f in dtype.fields] if isinstance(dtype, StructType) else []
            if any("${" in name for name in [col.name, *names]):
                # Spark would substitute it as a variable; identifiers have no escape for it.
                raise SchemaNotSupportedError(
                    f"{self.label} cannot write workload {table.workload}: column {col.name} "
                    "has a name with '${' in it, which Spark reads as a variable reference",
                    writer=self.name,
                )
            if dtype == _VARIANT and self.local:
                raise SchemaNotSupportedError(
                    f"{self.label} cannot write workload {table.workload}: column {col.name} "
                    "holds VARIANT, which the local stack cannot store (a Databricks "
                    "warehouse takes it as PARSE_JSON)",
                    writer=self.name,
                )

    async def write(self, rows: Rows) -> WriteReceipt:
        if len(rows) == 0:
            return WriteReceipt(rows=0, details={"statement_ids": [], "statements": 0})
        self._require_open()
        self.check(rows.table)
        # Rendering megabytes of SQL takes a while: in a thread, so the loop keeps running.
        statements = await asyncio.to_thread(
            insert_statements, rows, budget_bytes=self.statement_budget_bytes
        )
        self.count_payload(rows.table.delta_table, sum(len(s.sql.encode()) for s in statements))
        ids: list[str | None] = [None] * len(statements)
        failures: list[tuple[int, DirectWriteError]] = []
        pending = iter(enumerate(statements))

        async def worker() -> None:
            for index, statement in pending:  # shared: each worker takes the next statement
                if failures:
                    return
                try:
                    result = await self._call(self._run, statement.sql)
                    _check_inserted(result, statement.rows)
                except DirectWriteError as exc:
                    failures.append((index, exc))
                    return
                ids[index] = result.statement_id

        workers = self.max_concurrency
        await asyncio.gather(*(worker() for _ in range(min(workers, len(statements)))))
        if failures:
            index, exc = min(failures, key=lambda f: f[0])
            raise self._partial_failure(rows, statements, ids, index, exc) from exc
        log.debug(
            "sql_write",
            writer=self.name,
            batch_id=rows.batch_id,
            rows=len(rows),
            statements=len(ids),
        )
        return WriteReceipt(
            rows=len(rows), details={"statement_ids": ids, "statements": len(statements)}
        )

    def _partial_failure(
        self,
        rows: Rows,
        statements: list[InsertStatement],
        ids: list[str | None],
        index: int,
        exc: DirectWriteError,
    ) -> DirectWriteError:
        done = [(s, i) for s, i in zip(statements, ids, strict=True) if i]
        committed = sum(s.rows for s, _ in done)
        shown = ", ".join(i for _, i in done[:10]) + (", ..." if len(done) > 10 else "")
        message = (
            f"{exc.message} (statement {index + 1} of {len(statements)}). "
            f"{committed} of {len(rows)} rows are known to be committed"
            + (f" (statements {shown})" if done else "")
            + f"; the other {len(rows) - committed} rows are not reported as written"
            + (
                " (a statement whose answer was lost may still have been committed)."
                if isinstance(exc, WriterUnavailableError)
                else "."
            )
        )
        log.warning(
            "sql_write_failed",
            writer=self.name,
            batch_id=rows.batch_id,
            rows=len(rows),
            committed_rows=committed,
            statements=len(statements),
            failed_statement=index + 1,
            error=exc.message,
        )
        return type(exc)(message, writer=self.name)

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        """The batch's rows this writer wrote, read back through the warehouse."""
        self._require_open()
        # Async HTTP on the event loop (however the writer writes): benchmarks poll this while
        # they measure writes.
        if self._reader is None:
            self._reader = WarehouseReader(
                replace(self.targets, warehouse_id=self.warehouse_id, workspace_url=self.host),
                self.name,
            )
        return await self._reader.count(table, batch_id)

    def _require_open(self) -> None:
        if self._client is None:
            raise WriterUnavailableError("the SQL writer is not open", writer=self.name)

    def _run(self, sql: str) -> _Result:
        """Run one statement to its end (in a worker thread)."""
        return self._run_statement(sql)

    def _run_statement(self, sql: str) -> _Result:
        """One statement through the Statement Execution API, polled until it is done."""
        if self._client is None:
            raise WriterUnavailableError("the SQL writer is closed", writer=self.name)
        api = self._client.statement_execution
        deadline = time.monotonic() + self.statement_timeout_s
        resp = api.execute_statement(
            statement=sql,
            warehouse_id=self.warehouse_id or "",
            wait_timeout=f"{self.wait_timeout_s}s",
            on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
        )
        statement_id = resp.statement_id or "?"
        delay = 0.02
        while (state := resp.status.state if resp.status else None) not in _DONE:
            if time.monotonic() >= deadline:
                with contextlib.suppress(Exception):
                    api.cancel_execution(statement_id)
                raise _StatementFailed(
                    f"statement {statement_id} did not finish within "
                    f"{self.statement_timeout_s:g} s (last state {state.value if state else '?'})"
                    "; cancel was requested, but its rows may still be committed"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            resp = api.get_statement(statement_id)
        if state != StatementState.SUCCEEDED:
            error = resp.status.error if resp.status else None
            why = error.message if error and error.message else "no error message"
            raise _StatementFailed(
                f"the warehouse reports statement {statement_id} {state.value if state else '?'}"
                f": {why}"
            )
        rows = resp.result.data_array if resp.result and resp.result.data_array else []
        return _Result(statement_id, rows)

    # -- errors ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking SDK call in a thread; its errors come back as the app's errors."""
        return await asyncio.to_thread(self._translated, fn, *args)

    def _translated(self, fn: Callable[..., T], *args: Any) -> T:
        # Translated inside the thread: asyncio re-creates a TimeoutError crossing from a
        # thread (Python 3.11) and drops its cause, which says why the server was unreachable.
        try:
            return fn(*args)
        except DirectWriteError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> DirectWriteError:
        """The one place where driver errors become WriterUnavailableError or WriteFailedError."""
        unavailable, failed = WriterUnavailableError, WriteFailedError
        text = str(exc)
        if isinstance(exc, _StatementFailed):
            error: DirectWriteError = failed(text)
        elif isinstance(exc, Unauthenticated):
            error = unavailable(f"{self.host} rejected the credentials (HTTP 401): {text}")
        elif isinstance(exc, PermissionDenied):
            error = unavailable(f"{self.host} denied access (HTTP 403): {text}")
        elif isinstance(exc, NotFound):
            error = unavailable(f"not found on {self.host}: {text}")
        elif isinstance(exc, TooManyRequests | TemporarilyUnavailable | DeadlineExceeded):
            error = unavailable(f"the SQL API at {self.host} is busy or unavailable: {text}")
        elif isinstance(exc, DatabricksError):
            error = failed(f"the SQL API refused the request: {text}")
        elif isinstance(exc, TimeoutError | requests.RequestException):
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            error = unavailable(f"cannot reach the SQL API at {self.host}: {_network(cause)}")
        elif (driver_error := self._translate_driver(exc)) is not None:
            error = driver_error
        elif isinstance(exc, ValueError):  # the SDK's Config: auth could not be set up
            error = unavailable(f"cannot authenticate to {self.host}: {text}")
        else:
            error = failed(f"{type(exc).__name__}: {text}")
        error.message = self._clean(error.message)
        error.args = (error.message,)
        error.writer = self.name
        return error

    def _translate_driver(self, exc: Exception) -> DirectWriteError | None:
        """Errors of another client library a subclass runs statements with (None: not one)."""
        return None

    def _clean(self, message: str) -> str:
        message = re.split(r"\.? Config: ", message, maxsplit=1)[0]  # the SDK's debug suffix
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message[:4000]


def _check_inserted(result: _Result, expected: int) -> None:
    """An INSERT answers [num_affected_rows, num_inserted_rows]; it must match what we sent."""
    if result.rows and result.rows[0] and str(result.rows[0][0]).isdigit():
        inserted = int(result.rows[0][-1])
        if inserted != expected:
            raise WriteFailedError(
                f"statement {result.statement_id} inserted {inserted} rows, expected {expected}"
            )


def _network(exc: BaseException) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    if isinstance(exc, TimeoutError | requests.Timeout) or "timed out" in text.lower():
        return "timed out"
    return text[:300]


def _auth_secrets(targets: Targets) -> list[str]:
    """The workspace credentials' secrets, which no error message may quote."""
    auth = targets.workspace_auth
    if auth is None:
        return []
    return [str(v) for v in (auth.config.token, auth.config.client_secret) if v]
