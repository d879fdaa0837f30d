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

import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pyarrow as pa
import structlog
from pydantic_settings import SettingsConfigDict
from zerobus.sdk.aio import ZerobusArrowStream
from zerobus.sdk.shared import HeadersProvider
from zerobus.sdk.shared.arrow import ArrowStreamConfigurationOptions, IPCCompression

from dwbench.errors import (
    SchemaNotSupportedError,
    WriteFailedError,
)
from emulator.wire import ZEROBUS_ARROW
from workloads.base import Rows, TableRef
from workloads.schema import TableSchema
from workloads.types import ArrayType, DataType, DecimalType, MapType, Primitive, StructType
from writers.base import Targets
from writers.zerobus import (
    StreamState,
    ZerobusSettings,
    ZerobusStreamWriter,
)

log = structlog.get_logger(__name__)

_COMPRESSION = {
    "none": IPCCompression.NONE,
    "lz4": IPCCompression.LZ4_FRAME,
    "zstd": IPCCompression.ZSTD,
}


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


class _ArrowTable(StreamState):
    """One table's Arrow schema and stream."""

    def __init__(self, table: TableRef, schema: pa.Schema) -> None:
        super().__init__(table)
        self.schema = schema


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


class ZerobusArrowWriter(ZerobusStreamWriter):
    name = "zerobus-arrow"
    wire_interface = ZEROBUS_ARROW
    counts_payload = True
    label = "Zerobus Ingest (Arrow Flight)"
    color = "#c2255c"
    client_distributions: ClassVar[tuple[str, ...]] = ("databricks-zerobus-ingest-sdk", "pyarrow")
    settings_class = ZerobusArrowSettings
    stream_kind = "Arrow "
    config: ZerobusArrowSettings

    def __init__(self, targets: Targets, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(targets, clock=clock)
        self.compression = self.config.arrow_compression

    def _new_state(self, table: TableRef) -> _ArrowTable:
        try:
            schema = zerobus_arrow_schema(table.schema)
        except SchemaNotSupportedError as exc:
            raise SchemaNotSupportedError(
                f"{self.label} cannot write workload {table.workload}: {exc.message}",
                writer=self.name,
            ) from None
        return _ArrowTable(table, schema)

    async def _create(self, state: _ArrowTable, local_token: str | None) -> ZerobusArrowStream:
        assert self._sdk is not None
        table = state.table.delta_table
        options = ArrowStreamConfigurationOptions(
            recovery_retries=3,
            recovery_backoff_ms=500,
            recovery_timeout_ms=10_000,
            ipc_compression=_COMPRESSION[self.compression],
        )
        if local_token is not None:
            return await self._sdk.create_arrow_stream_with_headers_provider(
                table, state.schema, BearerToken(local_token), options
            )
        client_id, client_secret = self._client_credentials()
        return await self._sdk.create_arrow_stream(
            table, state.schema, client_id, client_secret, options
        )

    def _encode(self, state: _ArrowTable, rows: Rows) -> tuple[pa.RecordBatch, int]:
        data = rows.data
        if not data.schema.equals(state.schema):
            try:
                data = data.select(state.schema.names).cast(state.schema)
            except (pa.ArrowException, KeyError, ValueError) as exc:
                raise WriteFailedError(
                    f"cannot cast the batch to the table's Arrow schema: {exc}; nothing was sent",
                    writer=self.name,
                ) from exc
        return data, ipc_wire_size(data)

    async def _send(self, stream: ZerobusArrowStream, payload: pa.RecordBatch) -> int:
        offset = await stream.ingest_batch(payload)
        await stream.wait_for_offset(offset)
        return int(offset)

    def _format(self) -> dict[str, Any]:
        return {"record_format": "arrow", "ipc_compression": self.compression}
