"""The `zerobus-arrow` writer: the Zerobus SDK's Arrow Flight stream, one per table.

Batches already are Arrow record batches; the writer casts each once to the table's
Zerobus Arrow form (STRING as large_utf8, BINARY as large_binary, list items named `item`,
map entries `keys` / `values`: the documented mapping) and hands it to the SDK, which
serializes it as Arrow IPC (compressed with LZ4 or ZSTD when ZEROBUS_ARROW_COMPRESSION
says so) and sends it over DoPut. `write()` returns once the SDK reports the batch's offset
acknowledged, which it derives from the service's cumulative `ack_up_to_records`: the rows
are durable. As in `writers.zerobus`, a failed stream is created anew once, and a batch not
acknowledged within ZEROBUS_ACK_TIMEOUT_S fails and is not sent again.

DECIMAL and VARIANT columns are refused before anything is written: Zerobus's Arrow form
for DECIMAL is not documented by Databricks (only a third-party summary names large_utf8
text), and VARIANT travels as a struct of binary metadata and value, which this tool's
batches (VARIANT as JSON text) do not hold.
"""

from __future__ import annotations

import asyncio
import time
from importlib import metadata
from typing import Any, ClassVar, Literal

import pyarrow as pa
import structlog
from pydantic_settings import SettingsConfigDict
from zerobus.sdk.aio import ZerobusArrowStream, ZerobusSdk
from zerobus.sdk.shared import HeadersProvider, NonRetriableException, ZerobusException
from zerobus.sdk.shared.arrow import ArrowStreamConfigurationOptions, IPCCompression

from dwbench.errors import (
    DirectWriteError,
    SchemaNotSupportedError,
    WriteFailedError,
    WriterUnavailableError,
)
from emulator.wire import ZEROBUS_ARROW
from workloads.base import Rows, TableRef
from workloads.schema import TableSchema
from workloads.types import ArrayType, DataType, DecimalType, MapType, Primitive, StructType
from writers.base import Availability, DataWriterInterface, Targets, WriteReceipt
from writers.readback import WarehouseReader
from writers.zerobus import (
    CLOSE_TIMEOUT_S,
    ZerobusSettings,
    _is_bad_input,
    unreachable_reason,
    zerobus_auth_description,
    zerobus_auth_problem,
    zerobus_error,
)

log = structlog.get_logger(__name__)

_COMPRESSION = {
    "none": IPCCompression.NONE,
    "lz4": IPCCompression.LZ4_FRAME,
    "zstd": IPCCompression.ZSTD,
}
# How the SDK words gRPC codes that mean "the target is not there for us" at stream setup.
_UNAVAILABLE_CODES = (
    "The service is currently unavailable",
    "The request does not have valid authentication credentials",
    "The caller does not have permission",
    "Some requested entity was not found",
    "tcp connect error",
)


class ZerobusArrowSettings(ZerobusSettings):
    """ZEROBUS_ENDPOINT, ZEROBUS_ACK_TIMEOUT_S (as `zerobus`), ZEROBUS_ARROW_COMPRESSION."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_")

    # IPC body compression, done by the SDK in Rust. Default none: it costs client CPU on
    # every batch, and pays back only where the network, not the client, is the limit
    # (choose lz4 for that: cheap; zstd: smaller, dearer).
    arrow_compression: Literal["none", "lz4", "zstd"] = "none"


class BearerToken(HeadersProvider):
    """The local stack's auth for Arrow streams: the SDK sets the table header itself."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def get_headers(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")]


def zerobus_arrow_type(dtype: DataType, column: str) -> pa.DataType:
    """A column type's Zerobus Arrow form; SchemaNotSupportedError for the ones it lacks."""
    if isinstance(dtype, DecimalType):
        raise SchemaNotSupportedError(
            f"column {column} is {dtype.sql()}: Databricks documents no Arrow form of DECIMAL "
            "for Zerobus Ingest"
        )
    if isinstance(dtype, Primitive):
        if dtype.name == "VARIANT":
            raise SchemaNotSupportedError(
                f"column {column} is VARIANT: Zerobus's Arrow form is a struct of binary "
                "metadata and value, and this tool carries VARIANT as JSON text"
            )
        if dtype.name == "STRING":
            return pa.large_string()
        if dtype.name == "BINARY":
            return pa.large_binary()
        return dtype.arrow()
    if isinstance(dtype, ArrayType):
        item = zerobus_arrow_type(dtype.element, column)
        return pa.list_(pa.field("item", item, dtype.contains_null))
    if isinstance(dtype, MapType):
        return pa.map_(
            pa.field("keys", zerobus_arrow_type(dtype.key, column), False),
            pa.field("values", zerobus_arrow_type(dtype.value, column), dtype.value_contains_null),
        )
    if isinstance(dtype, StructType):
        return pa.struct(
            [pa.field(f.name, zerobus_arrow_type(f.type, column), f.nullable) for f in dtype.fields]
        )
    raise SchemaNotSupportedError(
        f"column {column} has type {dtype.sql()}, which has no Arrow form"
    )


def zerobus_arrow_schema(schema: TableSchema) -> pa.Schema:
    """The Arrow schema an Arrow stream into a table of this schema declares."""
    return pa.schema(
        [pa.field(c.name, zerobus_arrow_type(c.type, c.name), c.nullable) for c in schema.columns]
    )


class _ArrowTable:
    """One table's Arrow schema and stream."""

    def __init__(self, table: TableRef, schema: pa.Schema) -> None:
        self.table = table
        self.schema = schema
        self.stream: ZerobusArrowStream | None = None
        self.lock = asyncio.Lock()


def ipc_wire_size(batch: pa.RecordBatch) -> int:
    """The batch's Arrow IPC message size as the SDK frames it, before compression.

    pyarrow pads each body buffer to 8 bytes; the SDK's Rust IPC writer pads to 64 and
    frames a batch a little differently again (the local stand-in, which counts what
    arrives, sees up to ~64 bytes more per column and batch). An estimate for databricks
    mode, where nothing else counts; compressed streams send less than this.
    """
    size = pa.ipc.get_record_batch_size(batch)
    for column in batch.columns:
        for buf in column.buffers():
            if buf is not None:
                size += -buf.size % 64 - -buf.size % 8
    return size


class ZerobusArrowWriter(DataWriterInterface):
    name = "zerobus-arrow"
    wire_interface = ZEROBUS_ARROW
    counts_payload = True
    label = "Zerobus Ingest (Arrow Flight)"
    family = "zerobus"
    color = "#c2255c"
    client_distributions: ClassVar[tuple[str, ...]] = ("databricks-zerobus-ingest-sdk", "pyarrow")
    settings_class = ZerobusArrowSettings
    config: ZerobusArrowSettings

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.table = self.config.table
        self.ack_timeout_s = self.config.ack_timeout_s
        self.compression = self.config.arrow_compression
        self.endpoint = targets.zerobus_endpoint or self.config.endpoint
        self._sdk: ZerobusSdk | None = None
        self._tables: dict[str, _ArrowTable] = {}
        self.streams_created = 0
        self.last_error: str | None = None
        self._reader: WarehouseReader | None = None

    async def open(self) -> None:
        problem = self._config_problem()
        if problem:
            raise WriterUnavailableError(problem, writer=self.name)
        assert self.endpoint is not None
        self._sdk = ZerobusSdk(
            self.endpoint, self.targets.workspace_url or "", application_name="direct-write-bench"
        )
        if self.targets.mode == "local":
            await self._sdk._inner.set_use_tls(False)  # the local stack speaks plaintext gRPC

    def _config_problem(self) -> str | None:
        if not self.endpoint:
            return "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"
        if self.targets.mode == "databricks":
            return zerobus_auth_problem(self.targets)  # the same service principal rule
        elif self.targets.local_token is None:
            return "the local stack's token is not known"
        return None

    # -- schemas ------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        self._table_state(table)

    def _table_state(self, table: TableRef) -> _ArrowTable:
        state = self._tables.get(table.delta_table)
        if state is not None and state.table == table:
            return state
        try:
            schema = zerobus_arrow_schema(table.schema)
        except SchemaNotSupportedError as exc:
            raise SchemaNotSupportedError(
                f"{self.label} cannot write workload {table.workload}: {exc.message}",
                writer=self.name,
            ) from None
        state = _ArrowTable(table, schema)
        self._tables[table.delta_table] = state
        return state

    # -- streams ------------------------------------------------------------------------

    async def _open_stream(self, state: _ArrowTable) -> ZerobusArrowStream:
        assert self._sdk is not None
        table = state.table.delta_table
        options = ArrowStreamConfigurationOptions(
            recovery_retries=3,
            recovery_backoff_ms=500,
            recovery_timeout_ms=10_000,
            ipc_compression=_COMPRESSION[self.compression],
        )
        try:
            if self.targets.mode == "local":
                assert self.targets.local_token is not None
                headers = BearerToken(self.targets.local_token.get_secret_value())
                stream = await self._sdk.create_arrow_stream_with_headers_provider(
                    table, state.schema, headers, options
                )
            else:
                auth = self.targets.workspace_auth
                credentials = auth.client_credentials() if auth else None
                assert credentials is not None
                client_id, client_secret = credentials
                stream = await self._sdk.create_arrow_stream(
                    table, state.schema, client_id, client_secret, options
                )
        except ZerobusException as exc:
            raise self._translate(exc, table, opening=True) from exc
        self.streams_created += 1
        log.info("zerobus_arrow_stream_opened", writer=self.name, table=table)
        return stream

    async def _current_stream(self, state: _ArrowTable) -> ZerobusArrowStream:
        async with state.lock:
            if state.stream is None:
                state.stream = await self._open_stream(state)
            return state.stream

    async def _discard(self, state: _ArrowTable, stream: ZerobusArrowStream) -> None:
        async with state.lock:
            if state.stream is stream:
                state.stream = None
        await _close_within(stream, CLOSE_TIMEOUT_S)

    # -- writing ------------------------------------------------------------------------

    def _batch(self, state: _ArrowTable, rows: Rows) -> pa.RecordBatch:
        data = rows.data
        if data.schema.equals(state.schema):
            return data
        try:
            return data.select(state.schema.names).cast(state.schema)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            raise WriteFailedError(
                f"cannot cast the batch to the table's Arrow schema: {exc}; nothing was sent",
                writer=self.name,
            ) from exc

    async def write(self, rows: Rows) -> WriteReceipt:
        if self._sdk is None:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        state = self._table_state(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"offset": None})
        batch = self._batch(state, rows)
        size = ipc_wire_size(batch)
        for attempt in (1, 2):
            stream = await self._current_stream(state)
            self.count_payload(table, size)
            try:
                # The send is inside the deadline too: with the in-flight limit reached it
                # waits for acknowledgements.
                async with asyncio.timeout(self.ack_timeout_s):
                    offset = await stream.ingest_batch(batch)
                    await stream.wait_for_offset(offset)
            except (ZerobusException, TimeoutError) as exc:
                await self._discard(state, stream)
                error = self._translate(exc, table, opening=False)
                self.last_error = error.message
                # Not sent again: a bad batch fails the same way on a new stream, and one
                # that was not acknowledged in time may still be committed.
                bad_input = isinstance(exc, NonRetriableException) and _is_bad_input(exc)
                if attempt == 2 or bad_input or isinstance(exc, TimeoutError):
                    raise error from exc
                log.warning(
                    "zerobus_arrow_stream_recreated", writer=self.name, reason=error.message
                )
                continue
            self.last_error = None
            return WriteReceipt(
                rows=len(rows),
                details={
                    "offset": offset,
                    "stream": self.streams_created,
                    "record_format": "arrow",
                    "compression": self.compression,
                    "table": table,
                },
            )
        raise AssertionError("unreachable")

    def _translate(self, exc: BaseException, table: str, *, opening: bool) -> DirectWriteError:
        return zerobus_error(
            exc, writer=self.name, table=table, endpoint=self.endpoint,
            ack_timeout_s=self.ack_timeout_s, opening=opening, kind="Arrow ",
        )  # fmt: skip

    async def availability(self) -> Availability:
        details = self.describe()
        problem = self._config_problem()
        if problem:
            return Availability(False, problem, details)
        if any(state.stream is not None for state in self._tables.values()):
            return Availability(True, None, details)
        assert self.endpoint is not None
        unreachable = await unreachable_reason(self.endpoint, "the Zerobus endpoint")
        return Availability(unreachable is None, unreachable, details)

    def describe(self) -> dict[str, Any]:
        auth = zerobus_auth_description(self.targets)
        open_streams = [t for t, state in self._tables.items() if state.stream is not None]
        return {
            "endpoint": self.endpoint,
            "table": self.table,
            "record_format": "arrow",
            "ipc_compression": self.compression,
            "auth_mode": auth,
            "sdk_version": metadata.version("databricks-zerobus-ingest-sdk"),
            "stream_state": "open" if open_streams else "not opened",
            "open_streams": open_streams,
            "streams_created": self.streams_created,
            "last_error": self.last_error,
        }

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        """Rows of the batch readable in the table, through the SQL warehouse."""
        if self._reader is None:
            self._reader = WarehouseReader(self.targets, self.name)
        return await self._reader.count(table, batch_id)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        states, self._tables = list(self._tables.values()), {}
        for state in states:
            stream, state.stream = state.stream, None
            if stream is not None:
                started = time.perf_counter()
                await _close_within(stream, CLOSE_TIMEOUT_S)
                log.info(
                    "zerobus_arrow_stream_closed",
                    table=state.table.delta_table,
                    ms=round((time.perf_counter() - started) * 1000),
                )


async def _close_within(stream: ZerobusArrowStream, timeout_s: float) -> None:
    """Close the stream, flushing what it holds; give up on a service that does not answer."""
    try:
        async with asyncio.timeout(timeout_s):
            await stream.close()
    except ZerobusException as exc:
        log.warning("zerobus_arrow_close_failed", error=str(exc))
    except TimeoutError:
        log.warning("zerobus_arrow_close_abandoned", reason=f"no answer within {timeout_s:g} s")
