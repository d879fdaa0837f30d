"""The local Statement Execution API: what `databricks-sdk`'s `w.statement_execution` calls.

    POST /api/2.0/sql/statements                                execute (waits up to wait_timeout)
    GET  /api/2.0/sql/statements/{id}                           poll
    POST /api/2.0/sql/statements/{id}/cancel                    cancel
    GET  /api/2.0/sql/statements/{id}/result/chunks/{index}     one chunk of a result
    GET  /api/2.0/sql/warehouses[/{id}]                         the one local warehouse
    GET  /api/2.1/unity-catalog/tables/{full_name}[/exists]     a table's metadata (TableInfo)
    GET  /api/2.1/unity-catalog/tables?catalog_name=&schema_name=   the tables of a schema
    GET  /.well-known/databricks-config                         host metadata the SDK probes
                                                                (where OAuth is: oidc_endpoint)
    PUT/DELETE/HEAD /api/2.0/fs/files/Volumes/...               the Files API (emulator.volumes)

Every statement runs in its own asyncio task; parsing and DuckDB work happen in a worker
thread (`emulator.sql_eval`), catalog changes and inserts in the event loop that owns the
table writers. A statement that fails as SQL answers HTTP 200 with state FAILED, as a real
warehouse does; a malformed request answers HTTP 4xx with `{"error_code", "message"}`.
Every route takes the stack's token, or an all-apis OAuth token the stack issued (one
without authorization_details: a table-scoped token is for Zerobus writes only).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from emulator.catalog import Catalog
from emulator.copy_into import CopyRows
from emulator.errors import (
    SchemaMismatchError,
    TableExistsError,
    TableNotFoundError,
    WriterClosedError,
    scrub_paths,
)
from emulator.oauth import OAuthIssuer
from emulator.sql_eval import (
    Action,
    CreateTable,
    DropTable,
    InsertRows,
    Interrupt,
    NoOp,
    Parameter,
    ResultColumn,
    ResultSet,
    Rows,
    SqlError,
    SqlEvaluator,
    StatementContext,
    StatementInterrupted,
    affected_rows,
)
from emulator.unity_catalog import table_info
from emulator.volumes import FilesApiError, Volumes, files_router

log = structlog.get_logger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True)
class StatementLimits:
    # Documented by the API (databricks-sdk StatementExecutionAPI docstring):
    max_statement_bytes: int = 16 * MiB  # "The maximum query text size is 16 MiB."
    max_inline_bytes: int = 25 * MiB  # "Statements with disposition=INLINE are limited to 25 MiB"
    result_ttl_s: float = 3600.0  # "results are only available for one hour after success"
    # Warehouses reject more than 256 named parameters ("... but the limit is 256",
    # databricks-sql-python#300, databricks-sqlalchemy#24).
    max_parameters: int = 256
    # Local choices.
    chunk_rows: int = 10_000
    chunk_bytes: int = 4 * MiB
    max_statements: int = 1_000
    max_body_bytes: int = 64 * MiB


class State(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    CLOSED = "CLOSED"


class ApiError(Exception):
    """A request the API refuses outright (HTTP 4xx)."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


@dataclass(frozen=True)
class ExecuteRequest:
    statement: str
    parameters: list[Parameter]
    catalog: str = "main"
    schema: str = "default"
    wait_s: int = 10
    cancel_on_timeout: bool = False
    row_limit: int | None = None
    byte_limit: int | None = None


@dataclass
class Statement:
    id: str
    request: ExecuteRequest
    state: State = State.PENDING
    error: dict[str, str] | None = None
    sql_state: str | None = None
    manifest: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    cancellable: bool = True  # False once the statement started changing the catalog
    done: asyncio.Event = field(default_factory=asyncio.Event)
    interrupt: Interrupt = field(default_factory=Interrupt)
    task: asyncio.Task[None] | None = None


class StatementService:
    """Runs statements and keeps a bounded number of them (and their results) in memory."""

    def __init__(
        self, catalog: Catalog, limits: StatementLimits, volumes: Volumes | None = None
    ) -> None:
        self._catalog = catalog
        self._limits = limits
        self._evaluator = SqlEvaluator(catalog, volumes)
        self._statements: OrderedDict[str, Statement] = OrderedDict()
        self._ddl_lock = asyncio.Lock()

    def submit(self, request: ExecuteRequest) -> Statement:
        self._make_room()
        statement = Statement(str(uuid.uuid4()), request)
        self._statements[statement.id] = statement
        loop = asyncio.get_running_loop()
        statement.task = loop.create_task(self._run(statement), name=f"sql-{statement.id}")
        return statement

    async def wait(self, statement: Statement) -> None:
        """Wait up to the request's wait_timeout; on expiry cancel if it asked for that."""
        if statement.request.wait_s == 0 or statement.done.is_set():
            return
        try:
            await asyncio.wait_for(statement.done.wait(), statement.request.wait_s)
        except TimeoutError:
            if statement.request.cancel_on_timeout:
                self.cancel(statement)
                await statement.done.wait()

    def get(self, statement_id: str) -> Statement:
        statement = self._statements.get(statement_id)
        if statement is None:
            raise ApiError(
                404, "RESOURCE_DOES_NOT_EXIST", f"Statement {statement_id} does not exist."
            )
        ttl = self._limits.result_ttl_s
        if statement.state is State.SUCCEEDED and time.monotonic() - _finished(statement) > ttl:
            statement.state, statement.manifest, statement.chunks = State.CLOSED, None, []
        return statement

    def cancel(self, statement: Statement) -> None:
        if statement.done.is_set():
            return
        statement.interrupt.interrupt()
        if statement.cancellable and statement.task is not None:
            statement.task.cancel()

    def chunk(self, statement: Statement, index: int) -> dict[str, Any]:
        if statement.state is not State.SUCCEEDED:
            raise _bad_request(
                f"Statement {statement.id} is {statement.state.value}; "
                "result chunks are available only once it SUCCEEDED."
            )
        if not 0 <= index < len(statement.chunks):
            raise _bad_request(
                f"Chunk index {index} is out of range; the result has {len(statement.chunks)}."
            )
        return statement.chunks[index]

    def response(self, statement: Statement) -> dict[str, Any]:
        status: dict[str, Any] = {"state": statement.state.value}
        body: dict[str, Any] = {"statement_id": statement.id, "status": status}
        if statement.state is State.FAILED:
            status["error"] = statement.error
            if statement.sql_state:
                status["sql_state"] = statement.sql_state
        if statement.state is State.SUCCEEDED:
            body["manifest"] = statement.manifest
            if statement.chunks:
                body["result"] = statement.chunks[0]
        return body

    async def close(self) -> None:
        """Cancel what can be canceled, let commits in flight finish, free DuckDB."""
        running = [s for s in self._statements.values() if not s.done.is_set()]
        for statement in running:
            self.cancel(statement)
        await asyncio.gather(*(s.task for s in running if s.task), return_exceptions=True)
        self._evaluator.close()

    def _make_room(self) -> None:
        if len(self._statements) < self._limits.max_statements:
            return
        for statement_id, statement in list(self._statements.items()):
            if statement.done.is_set():
                del self._statements[statement_id]
                if len(self._statements) < self._limits.max_statements:
                    return
        raise ApiError(
            429,
            "TOO_MANY_REQUESTS",
            f"{len(self._statements)} statements are running; try again shortly.",
        )

    async def _run(self, statement: Statement) -> None:
        started = time.perf_counter()
        request = statement.request
        statement.state = State.RUNNING
        kind, rows = "unknown", 0
        ctx = StatementContext(
            request.catalog,
            request.schema,
            request.row_limit,
            request.byte_limit,
            self._limits.max_inline_bytes,
        )
        work = asyncio.ensure_future(
            asyncio.to_thread(
                self._evaluator.prepare,
                request.statement,
                request.parameters,
                ctx,
                statement.interrupt,
            )
        )
        try:
            try:
                action = await asyncio.shield(work)
            except asyncio.CancelledError:
                # A thread cannot be killed: stop its DuckDB query and wait until it returns,
                # so no work outlives the statement (or the service).
                statement.interrupt.interrupt()
                await asyncio.gather(work, return_exceptions=True)
                raise
            kind = type(action).__name__
            result = await self._apply(statement, action)
            rows = len(result.rows) if result else 0
            self._succeed(statement, result)
        except (asyncio.CancelledError, StatementInterrupted):
            statement.state = State.CANCELED
        except SqlError as exc:
            self._fail(statement, exc.error_code, exc.message, exc.sql_state)
        except Exception as exc:
            log.exception("statement_crashed", statement_id=statement.id)
            message = f"The local stack could not run the statement: {type(exc).__name__}: {exc}"
            self._fail(statement, "INTERNAL_ERROR", message, None)
        finally:
            statement.finished_at = time.monotonic()
            statement.done.set()
        ms = round((time.perf_counter() - started) * 1000, 2)
        emit = log.debug if statement.state is State.SUCCEEDED else log.info
        error_code = statement.error["error_code"] if statement.error else None
        emit(
            "statement_finished",
            statement_id=statement.id,
            state=statement.state.value,
            kind=kind,
            ms=ms,
            rows=rows,
            error_code=error_code,
        )

    async def _apply(self, statement: Statement, action: Action) -> ResultSet | None:
        if isinstance(action, Rows):
            return action.result
        if isinstance(action, NoOp):
            return None
        if statement.interrupt.requested:
            raise StatementInterrupted
        statement.cancellable = False  # from here on it changes tables: it runs to the end
        try:
            if isinstance(action, InsertRows):
                await self._catalog.writer(action.name).append(action.batch)
                return affected_rows(action.batch.num_rows)
            if isinstance(action, CopyRows):
                return await self._copy(action)
            async with self._ddl_lock:
                if isinstance(action, CreateTable):
                    await asyncio.to_thread(
                        self._catalog.create_table,
                        action.name,
                        action.schema,
                        if_not_exists=action.if_not_exists,
                    )
                elif isinstance(action, DropTable):
                    await self._catalog.drop_table(action.name, if_exists=action.if_exists)
            return None
        except TableExistsError as exc:
            raise SqlError(
                "TABLE_OR_VIEW_ALREADY_EXISTS",
                f"Cannot create table or view {_backticked(exc.name)} because it already "
                "exists. Choose another name, drop the table first, or add IF NOT EXISTS.",
                "42P07",
            ) from None
        except (TableNotFoundError, WriterClosedError):
            name = action.name if isinstance(action, InsertRows | CopyRows | DropTable) else "?"
            raise SqlError(
                "TABLE_OR_VIEW_NOT_FOUND",
                f"The table or view {_backticked(name)} cannot be found. "
                "To tolerate a missing table on drop, use DROP TABLE IF EXISTS.",
                "42P01",
            ) from None

    async def _copy(self, action: CopyRows) -> ResultSet:
        table = self._catalog.get(action.name)
        if action.batch.num_rows:
            # The files are listed in the commit itself: a restarted stack skips them too.
            await self._catalog.writer(action.name).append(action.batch, copied_files=action.files)
        # Recorded once committed: a failed commit leaves the files to load again.
        table.loaded_files().update(action.files)
        return copy_result(action.batch.num_rows)

    def _succeed(self, statement: Statement, result: ResultSet | None) -> None:
        manifest: dict[str, Any] = {"format": "JSON_ARRAY", "schema": {"column_count": 0}}
        chunks: list[dict[str, Any]] = []
        if result is not None:
            chunks = self._chunks(statement.id, result)
            manifest["schema"] = {
                "column_count": len(result.columns),
                "columns": [c.to_json(i) for i, c in enumerate(result.columns)],
            }
        manifest["total_row_count"] = len(result.rows) if result is not None else 0
        manifest["total_chunk_count"] = len(chunks)
        if chunks:
            keys = ("chunk_index", "row_offset", "row_count", "byte_count")
            manifest["chunks"] = [{k: c[k] for k in keys} for c in chunks]
        manifest["truncated"] = bool(result and result.truncated)
        statement.manifest, statement.chunks = manifest, chunks
        statement.state = State.SUCCEEDED

    def _chunks(self, statement_id: str, result: ResultSet) -> list[dict[str, Any]]:
        bounds: list[tuple[int, int, int]] = []  # (start, end, bytes)
        start, size = 0, 0
        for index, row_size in enumerate(result.row_bytes):
            rows = index - start
            if rows and (
                rows >= self._limits.chunk_rows or size + row_size > self._limits.chunk_bytes
            ):
                bounds.append((start, index, size))
                start, size = index, 0
            size += row_size
        if len(result.rows) > start:
            bounds.append((start, len(result.rows), size))
        chunks = []
        for i, (lo, hi, size) in enumerate(bounds):
            chunk: dict[str, Any] = {
                "chunk_index": i,
                "row_offset": lo,
                "row_count": hi - lo,
                "byte_count": size,
                "data_array": result.rows[lo:hi],
            }
            if i + 1 < len(bounds):
                chunk["next_chunk_index"] = i + 1
                chunk["next_chunk_internal_link"] = (
                    f"/api/2.0/sql/statements/{statement_id}/result/chunks/{i + 1}"
                )
            chunks.append(chunk)
        return chunks

    def _fail(
        self, statement: Statement, error_code: str, message: str, sql_state: str | None
    ) -> None:
        message = scrub_paths(message, self._catalog.root.parent)
        statement.error = {"error_code": error_code, "message": message}
        statement.sql_state = sql_state
        statement.state = State.FAILED


def copy_result(count: int) -> ResultSet:
    """The one-row answer Databricks gives to COPY INTO (no file here is skipped as corrupt:
    the local stack does not run ignoreCorruptFiles)."""
    names = ("num_affected_rows", "num_inserted_rows", "num_skipped_corrupt_files")
    values: list[str | None] = [str(count), str(count), "0"]
    columns = [ResultColumn(n, "LONG", "BIGINT") for n in names]
    return ResultSet(columns, [values], [2 * len(str(count)) + 1])


def _finished(statement: Statement) -> float:
    return statement.finished_at if statement.finished_at is not None else time.monotonic()


def _backticked(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


# -- request parsing -------------------------------------------------------------------------

_WAIT_TIMEOUT = re.compile(r"^(\d{1,3})s$")


def _optional(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise _bad_request(f"Field {key} must be a {kind.__name__}.")
    return value


def parse_execute_request(body: Any, limits: StatementLimits) -> ExecuteRequest:
    """Validate an execute request body the way the API does (HTTP 400 on violations)."""
    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object.")
    statement = body.get("statement")
    if not isinstance(statement, str):
        raise _bad_request("Field statement is required and must be a string.")
    size = len(statement.encode("utf-8"))
    if size > limits.max_statement_bytes:
        raise _bad_request(
            f"The statement is {size} bytes; the maximum query text size is "
            f"{limits.max_statement_bytes // MiB} MiB."
        )
    wait = _optional(body, "wait_timeout", str, "10s")
    match = _WAIT_TIMEOUT.match(wait)
    wait_s = int(match.group(1)) if match else -1
    if wait_s != 0 and not 5 <= wait_s <= 50:
        raise _bad_request(f"wait_timeout must be 0s or between 5s and 50s, got {wait!r}.")
    on_timeout = _optional(body, "on_wait_timeout", str, "CONTINUE")
    if on_timeout not in ("CONTINUE", "CANCEL"):
        raise _bad_request(f"on_wait_timeout must be CONTINUE or CANCEL, got {on_timeout!r}.")
    disposition = _optional(body, "disposition", str, "INLINE")
    if disposition != "INLINE":
        raise _bad_request(
            f"disposition {disposition} is not supported by the local stack; use INLINE."
        )
    result_format = _optional(body, "format", str, "JSON_ARRAY")
    if result_format != "JSON_ARRAY":
        raise _bad_request(
            f"format {result_format} is not supported with INLINE disposition; use JSON_ARRAY."
        )
    limits_given = {key: _optional(body, key, int) for key in ("row_limit", "byte_limit")}
    for key, value in limits_given.items():
        if value is not None and value <= 0:
            raise _bad_request(f"{key} must be a positive integer.")
    return ExecuteRequest(
        statement=statement,
        parameters=_parse_parameters(body.get("parameters"), limits),
        catalog=_optional(body, "catalog", str, "") or "main",
        schema=_optional(body, "schema", str, "") or "default",
        wait_s=wait_s,
        cancel_on_timeout=on_timeout == "CANCEL",
        row_limit=limits_given["row_limit"],
        byte_limit=limits_given["byte_limit"],
    )


def _parse_parameters(raw: Any, limits: StatementLimits) -> list[Parameter]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad_request("Field parameters must be a list of {name, value, type} objects.")
    if len(raw) > limits.max_parameters:
        raise _bad_request(
            f"The statement has {len(raw)} parameters; the limit is {limits.max_parameters}."
        )
    parameters: list[Parameter] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise _bad_request("Each parameter must be an object with name, value and type.")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _bad_request("Each parameter needs a non-empty name.")
        if name in seen:
            raise _bad_request(f"Parameter {name} is given more than once.")
        seen.add(name)
        value, type_text = item.get("value"), item.get("type")
        if value is not None and not isinstance(value, str):
            raise _bad_request(f"The value of parameter {name} must be a string or null.")
        if type_text is not None and not isinstance(type_text, str):
            raise _bad_request(f"The type of parameter {name} must be a string.")
        parameters.append(Parameter(name, value, type_text or None))
    return parameters


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _bad_request(f"The request body is larger than {limit // MiB} MiB.")
    raw = await request.body()
    if len(raw) > limit:
        raise _bad_request(f"The request body is larger than {limit // MiB} MiB.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digits
        raise _bad_request("Malformed request: the body is not valid JSON.") from None


# -- the app -------------------------------------------------------------------------------------


def _authorizer(token: str, oauth: OAuthIssuer | None) -> Callable[[Request], Awaitable[None]]:
    expected = f"Bearer {token}".encode()

    async def authorize(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "UNAUTHENTICATED", "No access token was sent with the request.")
        if hmac.compare_digest(header.encode(), expected):
            return
        if oauth is None or not oauth.allows_apis(header):
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")

    return authorize


_HTTP_ERROR_CODES = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    405: "ENDPOINT_NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
}


def _warehouse_info(warehouse_id: str, request: Request) -> dict[str, Any]:
    return {
        "id": warehouse_id,
        "name": "Local SQL warehouse",
        "state": "RUNNING",
        "health": {"status": "HEALTHY"},
        "cluster_size": "2X-Small",
        "warehouse_type": "PRO",
        "enable_serverless_compute": True,
        "min_num_clusters": 1,
        "max_num_clusters": 1,
        "num_clusters": 1,
        "auto_stop_mins": 0,
        "creator_name": "local",
        "odbc_params": {
            "hostname": request.url.hostname,
            "port": request.url.port,
            "path": f"/sql/1.0/warehouses/{warehouse_id}",
            "protocol": request.url.scheme,
        },
    }


def _unity_catalog_router(catalog: Catalog, guard: Callable[..., Awaitable[None]]) -> APIRouter:
    uc = APIRouter(prefix="/api/2.1/unity-catalog", dependencies=[Depends(guard)])

    def lookup(full_name: str) -> Any:
        try:
            return catalog.get(full_name)
        except TableNotFoundError:
            raise ApiError(
                404, "TABLE_DOES_NOT_EXIST", f"Table '{full_name}' does not exist."
            ) from None
        except SchemaMismatchError as exc:
            raise _bad_request(str(exc)) from None

    @uc.get("/tables/{full_name}")
    async def get_table(full_name: str) -> dict[str, Any]:
        """A table's metadata and columns, as Unity Catalog describes them."""
        return await asyncio.to_thread(table_info, lookup(full_name))

    @uc.get("/tables/{full_name}/exists")
    async def table_exists(full_name: str) -> dict[str, Any]:
        """Whether the table exists."""
        try:
            catalog.get(full_name)
        except (TableNotFoundError, SchemaMismatchError):
            return {"table_exists": False}
        return {"table_exists": True}

    @uc.get("/tables")
    async def list_tables(
        catalog_name: str = "", schema_name: str = "", omit_columns: bool = False
    ) -> dict[str, Any]:
        """The tables of one schema (one page: the local catalog is small)."""
        if not catalog_name or not schema_name:
            raise _bad_request("catalog_name and schema_name are required.")
        prefix = f"{catalog_name}.{schema_name}.".lower()
        tables = [catalog.get(n) for n in catalog.names() if n.startswith(prefix)]

        def describe() -> list[dict[str, Any]]:
            return [table_info(t, with_columns=not omit_columns) for t in tables]

        return {"tables": await asyncio.to_thread(describe)}

    return uc


def create_statement_app(
    catalog: Catalog,
    token: str,
    *,
    warehouse_id: str = "local",
    limits: StatementLimits | None = None,
    volumes: Volumes | None = None,
    oauth: OAuthIssuer | None = None,
) -> FastAPI:
    """The Statement Execution API over `catalog`, guarded by `token` (and, given `oauth`,
    the all-apis OAuth tokens it issues).

    The service is at `app.state.statement_service`; the app's lifespan closes it (call
    `close()` yourself when mounting this app inside another one).
    """
    limits = limits or StatementLimits()
    service = StatementService(catalog, limits, volumes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.close()

    app = FastAPI(title="Local Statement Execution API", lifespan=lifespan)
    app.state.statement_service = service
    guard = _authorizer(token, oauth)
    api = APIRouter(prefix="/api/2.0/sql", dependencies=[Depends(guard)])

    def check_warehouse(requested: Any) -> None:
        if not isinstance(requested, str) or not requested:
            raise _bad_request("Field warehouse_id is required.")
        if requested != warehouse_id:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Warehouse {requested} does not exist.")

    @api.post("/statements")
    async def execute_statement(request: Request) -> dict[str, Any]:
        """Run a SQL statement; answer with its result or its state after wait_timeout."""
        body = await _read_json(request, limits.max_body_bytes)
        parsed = parse_execute_request(body, limits)
        check_warehouse(body.get("warehouse_id"))
        statement = service.submit(parsed)
        await service.wait(statement)
        return service.response(statement)

    @api.get("/statements/{statement_id}")
    async def get_statement(statement_id: str) -> dict[str, Any]:
        """The statement's state, and once it succeeded its manifest and first chunk."""
        return service.response(service.get(statement_id))

    @api.post("/statements/{statement_id}/cancel")
    async def cancel_execution(statement_id: str) -> dict[str, Any]:
        """Ask for a running statement to be canceled; poll to see its final state."""
        service.cancel(service.get(statement_id))
        return {}

    @api.get("/statements/{statement_id}/result/chunks/{chunk_index}")
    async def get_result_chunk(statement_id: str, chunk_index: int) -> dict[str, Any]:
        """One chunk of a succeeded statement's result."""
        return service.chunk(service.get(statement_id), chunk_index)

    @api.get("/warehouses")
    async def list_warehouses(request: Request) -> dict[str, Any]:
        """The local stack's one SQL warehouse."""
        return {"warehouses": [_warehouse_info(warehouse_id, request)]}

    @api.get("/warehouses/{requested_id}")
    async def get_warehouse(requested_id: str, request: Request) -> dict[str, Any]:
        """The warehouse, always RUNNING."""
        check_warehouse(requested_id)
        return _warehouse_info(warehouse_id, request)

    app.include_router(api)
    app.include_router(_unity_catalog_router(catalog, guard))
    if volumes is not None:
        app.include_router(files_router(volumes, token, oauth))

    @app.get("/.well-known/databricks-config")
    async def host_metadata(request: Request) -> dict[str, Any]:
        """Host metadata, which the SDK asks for whenever it builds a client: where the
        workspace's OAuth is (its discovery document under `oidc_endpoint`), when the stack
        issues OAuth tokens."""
        if oauth is None:
            return {}
        base = str(request.base_url).rstrip("/")
        return {"oidc_endpoint": f"{base}/oidc", "workspace_id": oauth.workspace_id}

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        message = scrub_paths(exc.message, catalog.root.parent)
        content = {"error_code": exc.error_code, "message": message}
        return JSONResponse(content, status_code=exc.status, headers=headers)

    @app.exception_handler(FilesApiError)
    async def files_error(_: Request, exc: FilesApiError) -> JSONResponse:
        message = scrub_paths(exc.message, catalog.root.parent)
        content = {"error_code": exc.error_code, "message": message}
        return JSONResponse(content, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(exc.status_code, "BAD_REQUEST")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"No API found for '{request.method} {request.url.path}'."
        content = {"error_code": code, "message": message}
        return JSONResponse(content, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(str(e.get("msg")) for e in exc.errors())
        content = {"error_code": "INVALID_PARAMETER_VALUE", "message": problems}
        return JSONResponse(content, status_code=400)

    return app
