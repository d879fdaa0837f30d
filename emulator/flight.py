"""Zerobus Ingest's Arrow Flight front end (`arrow.flight.protocol.FlightService/DoPut`).

One DoPut call is one stream into the table named by the `x-databricks-zerobus-table-name`
header. The first FlightData carries only the IPC schema (and no flight descriptor, which
is why this is a plain grpcio handler and not a `pyarrow.flight` server); the schema is
checked against the table, then a ready PutResult `{"ack_up_to_offset":-1,
"ack_up_to_records":0}` goes back. Every later FlightData is one IPC record batch whose
app_metadata is `{"offset_id":N}`, N counting frames from 0 on this call. Its rows go
through the table's writer (the same group commit as the protobuf path) and are
acknowledged, cumulatively and only once committed, with `{"ack_up_to_offset":N,
"ack_up_to_records":R}`, R the rows durable on this call.

Rotation adds `"close_stream_duration_ms":D` to an acknowledgement; after D the server
stops reading, acknowledges what it committed and ends the call, and the client replays
what was not acknowledged on a new call. A schema that does not fit the table ends the
call with INVALID_ARGUMENT and a `google.rpc.ErrorInfo` (reason SCHEMA_VALIDATION_FAILED,
metadata `cause`); bytes that are not Arrow IPC end it with INVALID_ARGUMENT after what
came before them is committed and acknowledged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyarrow as pa
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from emulator.catalog import Catalog, Table
from emulator.errors import SchemaMismatchError, TableNotFoundError
from emulator.value_ranges import check_batch
from emulator.wire import GRPC_PREFIX, ZEROBUS_ARROW, WireCounters
from emulator.zerobus import (
    TABLE_HEADER,
    StreamError,
    StreamInfo,
    StreamSession,
    Undecodable,
    _canonical,
    abort_stream,
    lenient,
)
from proto import arrow_flight_pb2 as fpb
from proto import arrow_flight_pb2_grpc as fpb_grpc

log = structlog.get_logger(__name__)

ERROR_DOMAIN = "zerobus.databricks.com"
SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
_CONTINUATION = b"\xff\xff\xff\xff"


class SchemaValidationError(Exception):
    """The stream's Arrow schema does not fit the table; `cause` is the service's code."""

    def __init__(self, cause: str, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message
        self.field_name = field_name


def rich_status(code: grpc.StatusCode, message: str, info: error_details_pb2.ErrorInfo) -> bytes:
    """A serialized google.rpc.Status carrying `info`: the `grpc-status-details-bin` trailer."""
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return status.SerializeToString()


# -- schema checks -----------------------------------------------------------------------


def check_schema(schema: pa.Schema, table: pa.Schema) -> None:
    """Raise SchemaValidationError unless `schema` may write into `table`.

    Fields match columns by name (case-insensitively, as Delta names do) in column order;
    nullable columns may be left out; types and nullability must agree.
    """
    if len(schema) > len(table):
        raise SchemaValidationError(
            "FIELD_COUNT_MISMATCH",
            f"the Arrow schema has {len(schema)} fields, the table {len(table)} columns",
        )
    positions = {name.lower(): i for i, name in enumerate(table.names)}
    previous = -1
    seen: set[int] = set()
    for arrow_field in schema:
        position = positions.get(arrow_field.name.lower())
        if position is None:
            raise SchemaValidationError(
                "FIELD_NOT_IN_TABLE",
                f"field {arrow_field.name} is not a column of the table",
                arrow_field.name,
            )
        if position in seen:
            raise SchemaValidationError(
                "FIELD_COUNT_MISMATCH",
                f"field {arrow_field.name} appears more than once",
                arrow_field.name,
            )
        if position < previous:
            raise SchemaValidationError(
                "FIELD_OUT_OF_ORDER",
                f"field {arrow_field.name} comes after column {table.names[previous]}, "
                "and the table has it before",
                arrow_field.name,
            )
        seen.add(position)
        previous = position
        column = table.field(position)
        problem = _field_problem(arrow_field, column)
        if problem:
            raise SchemaValidationError(
                "TYPE_INCOMPATIBLE", f"field {arrow_field.name}: {problem}", arrow_field.name
            )
    for position, column in enumerate(table):
        if position not in seen and not column.nullable:
            raise SchemaValidationError(
                "MISSING_REQUIRED_COLUMN",
                f"column {column.name} is NOT NULL and the Arrow schema has no field for it",
                column.name,
            )


def _field_problem(arrow_field: pa.Field, column: pa.Field) -> str | None:
    if arrow_field.nullable != column.nullable:
        want = "nullable" if column.nullable else "not nullable"
        return f"nullability differs: the column is {want}"
    if not _same_type(arrow_field.type, column.type):
        return f"Arrow type {arrow_field.type} does not fit column type {column.type}"
    return None


def _same_type(given: pa.DataType, column: pa.DataType) -> bool:
    # Offset widths and child field names are the sender's choice (arrow-rs names list items
    # `item`, map entries `keys` and `values`); everything else must be the column's type.
    if pa.types.is_string(column):
        return pa.types.is_string(given) or pa.types.is_large_string(given)
    if pa.types.is_binary(column):
        return pa.types.is_binary(given) or pa.types.is_large_binary(given)
    if pa.types.is_list(column):
        if not (pa.types.is_list(given) or pa.types.is_large_list(given)):
            return False
        return _same_type(given.value_type, column.value_type)
    if pa.types.is_map(column):
        return (
            pa.types.is_map(given)
            and _same_type(given.key_type, column.key_type)
            and _same_type(given.item_type, column.item_type)
        )
    if pa.types.is_struct(column):
        if not pa.types.is_struct(given) or given.num_fields != column.num_fields:
            return False
        return all(
            g.name.lower() == c.name.lower() and _field_problem(g, c) is None
            for g, c in zip(given, column, strict=True)
        )
    return bool(given.equals(column))


def conform(batch: pa.RecordBatch, table: pa.Schema) -> pa.RecordBatch:
    """The batch in the table's Arrow schema: omitted columns null, types cast."""
    names = {name.lower(): i for i, name in enumerate(batch.schema.names)}
    columns = []
    for column in table:
        i = names.get(column.name.lower())
        if i is None:
            columns.append(pa.nulls(batch.num_rows, column.type))
        else:
            values = batch.column(i)
            columns.append(values if values.type.equals(column.type) else values.cast(column.type))
    return pa.RecordBatch.from_arrays(columns, schema=table)


# -- IPC ---------------------------------------------------------------------------------


def ipc_message(header: bytes, body: bytes) -> pa.ipc.Message:
    """One IPC message from a FlightData's header and body, as the stream format frames it."""
    padding = -len(header) % 8
    framed = b"".join(
        (_CONTINUATION, struct.pack("<i", len(header) + padding), header, b"\0" * padding, body)
    )
    return pa.ipc.read_message(pa.py_buffer(framed))


# -- the service -------------------------------------------------------------------------


@dataclass
class FlightStats:
    streams_created: int = 0
    streams_rejected: int = 0
    rows_committed: int = 0
    active: dict[str, StreamInfo] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams_created": self.streams_created,
            "streams_rejected": self.streams_rejected,
            "streams_active": len(self.active),
            "rows_committed": self.rows_committed,
        }


class FlightIngestService(fpb_grpc.FlightServiceServicer):
    def __init__(
        self,
        catalog: Catalog,
        token: str,
        *,
        rotation_interval_s: float | None = None,
        rotation_grace_s: float = 5.0,
        ack_only: bool = False,
        wire: WireCounters | None = None,
    ) -> None:
        self.catalog = catalog
        self._token = token.encode()
        self.wire = wire or WireCounters()
        self.rotation_interval_s = rotation_interval_s
        self.rotation_grace_s = rotation_grace_s
        self.ack_only = ack_only
        self.stats = FlightStats()
        self._sessions: set[_FlightSession] = set()

    async def DoPut(self, request_iterator: AsyncIterator[fpb.FlightData], context: Any) -> None:
        await context.send_initial_metadata(())
        session: _FlightSession | None = None
        try:
            session = await self._open(request_iterator, context)
            self._sessions.add(session)
            await session.run()
        except SchemaValidationError as exc:
            self.stats.streams_rejected += 1
            log.warning("flight_stream_rejected", cause=exc.cause, reason=exc.message)
            metadata = {"cause": exc.cause}
            if exc.field_name:
                metadata["field"] = exc.field_name
            info = error_details_pb2.ErrorInfo(
                reason=SCHEMA_VALIDATION_FAILED, domain=ERROR_DOMAIN, metadata=metadata
            )
            message = f"schema validation failed ({exc.cause}): {exc.message}"
            code = grpc.StatusCode.INVALID_ARGUMENT
            details = rich_status(code, message, info)
            await context.abort(
                code, message, trailing_metadata=(("grpc-status-details-bin", details),)
            )
        except (StreamError, UnicodeError, RecursionError) as exc:
            if session is None:
                self.stats.streams_rejected += 1
            await abort_stream(context, exc, self.catalog.root.parent, "flight_stream_failed")
        finally:
            if session is not None:
                self._sessions.discard(session)
                self.stats.active.pop(session.info.stream_id, None)

    async def shutdown(self) -> None:
        """Stop reading every stream, commit and acknowledge what they hold, end them."""
        await asyncio.gather(*(s.stop_reading() for s in list(self._sessions)))

    async def _open(self, requests: AsyncIterator[fpb.FlightData], context: Any) -> _FlightSession:
        metadata = {k.lower(): v for k, v in context.invocation_metadata()}
        scheme, _, presented = metadata.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), self._token):
            raise StreamError(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing bearer token")
        header = metadata.get(TABLE_HEADER)
        if header is None:
            raise StreamError(grpc.StatusCode.UNAUTHENTICATED, f"missing {TABLE_HEADER} header")
        if _canonical(header) is None:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{TABLE_HEADER} {header!r} is not a catalog.schema.table name",
            )
        try:
            table = self.catalog.get(header)
        except TableNotFoundError as exc:
            raise StreamError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        except SchemaMismatchError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "stream closed before its schema message"
            ) from None
        if isinstance(first, Undecodable):
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"the first FlightData: {first.describe()}"
            )
        schema = _read_schema(first)
        check_schema(schema, table.schema.to_arrow())

        info = StreamInfo(
            stream_id=uuid.uuid4().hex, table=table.name, record_type="ARROW", opened_at=time.time()
        )
        session = _FlightSession(self, requests, context, table, schema, info)
        await session.send(ack_up_to_offset=-1, ack_up_to_records=0)
        self.stats.streams_created += 1
        self.stats.active[info.stream_id] = info
        log.info("flight_stream_opened", stream_id=info.stream_id, table=table.name)
        return session


def _read_schema(first: fpb.FlightData) -> pa.Schema:
    if not first.data_header:
        raise StreamError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the first FlightData must carry the Arrow IPC schema; it has no data_header",
        )
    try:
        message = ipc_message(first.data_header, first.data_body)
        if message.type != "schema":
            raise ValueError(f"it is a {message.type} message")
        return pa.ipc.read_schema(message)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StreamError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the first FlightData is not an Arrow IPC schema message: {exc}",
        ) from None


class _FlightSession(StreamSession):
    log_prefix = "flight_"

    def __init__(
        self,
        service: FlightIngestService,
        requests: AsyncIterator[fpb.FlightData],
        context: Any,
        table: Table,
        schema: pa.Schema,
        info: StreamInfo,
    ) -> None:
        super().__init__(service, requests, context, info)
        self.schema = schema
        self.schema_of_table = table.schema
        self.table_schema = table.schema.to_arrow()
        self.acked_records = 0
        self.rotation_ms: int | None = None

    async def send(self, **ack: int) -> None:
        payload = json.dumps(ack, separators=(",", ":")).encode()
        async with self.write_lock:
            await self.context.write(fpb.PutResult(app_metadata=payload))

    async def _read(self) -> None:
        expected = 0
        async for frame in self.requests:
            if isinstance(frame, Undecodable):
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"frame {expected}: {frame.describe()}"
                )
            offset = _offset_id(frame, expected)
            if offset != expected:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"offset_id {offset} out of order: expected {expected}",
                )
            self.info.messages += 1
            self.service.wire.add(ZEROBUS_ARROW, self.info.table, frame.ByteSize() + GRPC_PREFIX)
            if self.writer is None:  # ack-only: the row count is all an acknowledgement needs
                self.pending.put_nowait((offset, None, self._count(frame, offset)))
            else:
                batch = self._decode(frame, offset)
                commit = asyncio.ensure_future(self.writer.append(batch))
                self.pending.put_nowait((offset, commit, batch.num_rows))
            expected += 1

    def _count(self, frame: fpb.FlightData, offset: int) -> int:
        try:
            message = ipc_message(frame.data_header, frame.data_body)
            return int(pa.ipc.read_record_batch(message, self.schema).num_rows)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"offset {offset}: not a valid Arrow IPC record batch: {exc}",
            ) from None

    def _decode(self, frame: fpb.FlightData, offset: int) -> pa.RecordBatch:
        # On the event loop, as the protobuf path decodes: IPC decoding is mostly pointer
        # arithmetic (plus decompression), and a thread hop per frame costs more.
        try:
            message = ipc_message(frame.data_header, frame.data_body)
            if message.type != "record batch":
                raise ValueError(f"a {message.type} message where a record batch belongs")
            batch = pa.ipc.read_record_batch(message, self.schema)
            batch.validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"offset {offset}: not a valid Arrow IPC record batch: {exc}",
            ) from None
        if batch.num_rows == 0:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"offset {offset}: the record batch has no rows"
            )
        try:
            conformed = conform(batch, self.table_schema)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"offset {offset}: {exc}") from None
        try:
            check_batch(conformed, self.schema_of_table)
        except SchemaMismatchError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"offset {offset}: {exc}") from None
        return conformed

    async def _acknowledge(self, last: int, rows: int) -> None:
        self.acked_records += rows
        await self._send_ack()

    async def _send_ack(self) -> None:
        ack = {"ack_up_to_offset": self.info.acked_offset, "ack_up_to_records": self.acked_records}
        if self.rotation_ms is not None:
            ack["close_stream_duration_ms"] = self.rotation_ms
        await self.send(**ack)

    async def _signal_rotation(self, grace_s: float) -> None:
        self.rotation_ms = round(grace_s * 1000)
        await self._send_ack()  # the signal rides on an acknowledgement of what is durable


def _offset_id(frame: fpb.FlightData, expected: int) -> int:
    try:
        metadata = json.loads(frame.app_metadata)
        offset = metadata["offset_id"]
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError("offset_id is not an integer")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StreamError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'frame {expected}: app_metadata must be JSON {{"offset_id": N}} ({exc})',
        ) from None
    return offset


def add_to_server(service: FlightIngestService, server: grpc.aio.Server) -> None:
    """Serve DoPut on `server` (the Zerobus gRPC port)."""
    # Only DoPut is served (the other Flight methods answer UNIMPLEMENTED), with a
    # deserializer that lets the handler answer undecodable frames itself.
    handlers = {
        "DoPut": grpc.stream_stream_rpc_method_handler(
            service.DoPut,
            request_deserializer=lenient(fpb.FlightData),
            response_serializer=fpb.PutResult.SerializeToString,
        )
    }
    name = "arrow.flight.protocol.FlightService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
