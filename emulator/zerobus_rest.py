"""Zerobus Ingest over REST: `POST /zerobus/v1/tables/{catalog.schema.table}/insert`.

Served on a port of its own, as the service serves it on the Zerobus host rather than the
workspace. `Authorization: Bearer` takes the stack's token or an OAuth token from
`/oidc/v1/token` (one scoped by authorization_details writes only into its tables). The
body is a JSON array of row objects, decoded and checked like Zerobus JSON records (the
same per-field error paths); a request with one bad row is refused whole, before any of
it reaches the table writer. The answer is 200 only once the rows are committed.

Errors are `{"error_code": ..., "message": ...}`: INVALID_PARAMETER_VALUE 400 (not JSON,
not an array, a row that does not fit the table), UNAUTHENTICATED 401, PERMISSION_DENIED
403, NOT_FOUND 404 (no such table), REQUEST_LIMIT_EXCEEDED 413 (body over the cap),
INTERNAL_ERROR 500 (the commit failed: nothing of the request is claimed written).
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from emulator.catalog import Catalog, parse_table_name
from emulator.errors import EmulatorError, SchemaMismatchError, TableNotFoundError, scrub_paths
from emulator.oauth import OAuthIssuer, TokenRejected
from emulator.records import JsonRecordDecoder
from emulator.schema import TableSchema
from emulator.wire import ZEROBUS_REST, WireCounters

log = structlog.get_logger(__name__)

# A cap of the size the gRPC path promises per message (10 MiB); bodies over it are 413.
MAX_BODY_BYTES = 10 * 1024 * 1024
INSERT_PATH = "/zerobus/v1/tables/{table}/insert"


class RestError(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


class ZerobusRestService:
    def __init__(
        self,
        catalog: Catalog,
        auth: OAuthIssuer,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        wire: WireCounters | None = None,
    ) -> None:
        self.catalog = catalog
        # Request body bytes per table (`emulator.wire`), counted once a body is read.
        self.wire = wire or WireCounters()
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.requests = 0
        self.rows_committed = 0
        # One decoder per table schema: its converters are built once.
        self._decoders: dict[str, tuple[TableSchema, JsonRecordDecoder]] = {}

    def app(self) -> FastAPI:
        app = FastAPI(title="Zerobus Ingest REST (local)", openapi_url=None, docs_url=None)
        app.add_api_route(INSERT_PATH, self.insert, methods=["POST"])

        @app.exception_handler(404)
        async def _unknown_route(request: Request, exc: Exception) -> JSONResponse:
            return _error(404, "NOT_FOUND", f"no route {request.method} {request.url.path}")

        @app.exception_handler(405)
        async def _wrong_method(request: Request, exc: Exception) -> JSONResponse:
            return _error(501, "NOT_IMPLEMENTED", f"{request.method} is not implemented here")

        return app

    async def insert(self, table: str, request: Request) -> JSONResponse:
        """Insert a JSON array of rows into a table; 200 once they are committed."""
        self.requests += 1
        try:
            rows = await self._insert(table, request)
        except RestError as exc:
            log.info("rest_insert_refused", table=table, status=exc.status, code=exc.error_code)
            message = scrub_paths(exc.message, self.catalog.root.parent)
            return _error(exc.status, exc.error_code, message)
        self.rows_committed += rows
        return JSONResponse({})

    async def _insert(self, table: str, request: Request) -> int:
        try:
            name = parse_table_name(table)
        except SchemaMismatchError as exc:
            raise RestError(400, "INVALID_PARAMETER_VALUE", str(exc)) from None
        try:
            self.auth.authorize_write(request.headers.get("authorization", ""), name)
        except TokenRejected as exc:
            code = "UNAUTHENTICATED" if exc.status == 401 else "PERMISSION_DENIED"
            raise RestError(exc.status, code, exc.message) from None
        try:
            target = self.catalog.get(name)
        except TableNotFoundError as exc:
            raise RestError(404, "NOT_FOUND", str(exc)) from None
        body = await self._body(request)
        self.wire.add(ZEROBUS_REST, name, len(body))
        decoder = self._decoder(name, target.schema)
        try:
            batch = decoder.decode_array(body)
        except EmulatorError as exc:
            raise RestError(400, "INVALID_PARAMETER_VALUE", str(exc)) from None
        try:
            await self.catalog.writer(name).append(batch)
        except EmulatorError as exc:
            raise RestError(503, "TEMPORARILY_UNAVAILABLE", str(exc)) from None
        except Exception as exc:  # the commit failed: say so, claim nothing
            raise RestError(500, "INTERNAL_ERROR", f"the commit failed: {exc}") from None
        return batch.num_rows

    async def _body(self, request: Request) -> bytes:
        cap = self.max_body_bytes
        too_large = RestError(
            413, "REQUEST_LIMIT_EXCEEDED", f"the request body exceeds the limit of {cap} bytes"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _decoder(self, name: str, schema: TableSchema) -> JsonRecordDecoder:
        cached = self._decoders.get(name)
        if cached is not None and cached[0] is schema:
            return cached[1]
        decoder = JsonRecordDecoder(schema)
        self._decoders[name] = (schema, decoder)
        return decoder
