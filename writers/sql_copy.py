"""The COPY INTO writer: each batch as a Parquet file in a Unity Catalog volume, loaded by
`COPY INTO` through a SQL warehouse.

A write encodes the batch once as Parquet in memory (pyarrow; SQL_COPY_COMPRESSION, zstd
by default), uploads it with databricks-sdk's Files API (`w.files.upload`) to
`<SQL_COPY_VOLUME>/dwbench-staging/<batch>-<uuid>.parquet`, and runs

    COPY INTO `cat`.`sch`.`tbl` FROM '<staging directory>'
      FILEFORMAT = PARQUET FILES = ('<file name>')

through the Statement Execution API, on the SQL writer's statement path. It is durable when
the statement SUCCEEDED and reported num_inserted_rows equal to the batch's row count (any
other count is a failure). The staged file is deleted afterwards, whether the load worked
or not; a delete that fails is a warning in the receipt (and in the error of a failed
write), never silent. COPY INTO skips files it loaded before, and every staged file has a
new name, so a batch is loaded once.

In local mode the local stack serves the volume (`/Volumes/main/default/dwbench_staging`
unless SQL_COPY_VOLUME says otherwise) and runs the COPY INTO.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from databricks.sdk.errors import NotFound
from pydantic_settings import SettingsConfigDict

from dwbench.errors import DirectWriteError, SchemaNotSupportedError, WriteFailedError
from workloads.base import Rows, TableRef
from workloads.types import Primitive
from writers.base import Targets, WriteReceipt, WriterSettings
from writers.sql import SqlWriter, quote_table

log = structlog.get_logger(__name__)

LOCAL_VOLUME = "/Volumes/main/default/dwbench_staging"
STAGING_DIRECTORY = "dwbench-staging"
_VOLUME = re.compile(r"/Volumes/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_VARIANT = Primitive("VARIANT")


class SqlCopySettings(WriterSettings):
    """SQL_COPY_TABLE, SQL_COPY_VOLUME, SQL_COPY_COMPRESSION (the warehouse is the sql writer's)."""

    model_config = SettingsConfigDict(env_prefix="SQL_COPY_")

    table: str = "main.default.products"
    # The volume the Parquet files are staged in: /Volumes/<catalog>/<schema>/<volume>.
    volume: str | None = None
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = "zstd"


class SqlCopyWriter(SqlWriter):
    name = "sql-copy"
    label = "SQL warehouse (COPY INTO)"
    family = "sql"
    color = "#0e7490"
    client_distributions = ("databricks-sdk", "pyarrow")
    settings_class = SqlCopySettings  # type: ignore[assignment]
    config: SqlCopySettings  # type: ignore[assignment]

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.volume = (self.config.volume or (LOCAL_VOLUME if self.local else "")).rstrip("/")
        self.compression = self.config.compression
        self.staging = f"{self.volume}/{STAGING_DIRECTORY}"

    def _config_problem(self) -> str | None:
        if not self.volume and not self.local:
            return (
                "set SQL_COPY_VOLUME to the Unity Catalog volume to stage Parquet files in "
                "(/Volumes/<catalog>/<schema>/<volume>; the service principal needs READ "
                "VOLUME and WRITE VOLUME on it)"
            )
        if not _VOLUME.fullmatch(self.volume):
            return (
                f"SQL_COPY_VOLUME must be a volume path /Volumes/<catalog>/<schema>/<volume> "
                f"of letters, digits, '_' and '-', got {self.volume!r}"
            )
        return super()._config_problem()

    def _details(self) -> dict[str, Any]:
        return {
            **super()._details(),
            "volume": self.volume,
            "staging": self.staging,
            "compression": self.compression,
        }

    def check(self, table: TableRef) -> None:
        """As the SQL writer, and no VARIANT: a Parquet column does not load into one."""
        super().check(table)
        for col, dtype in table.schema.types():
            if dtype == _VARIANT:
                raise SchemaNotSupportedError(
                    f"{self.label} cannot write workload {table.workload}: column {col.name} "
                    "holds VARIANT, and a Parquet file has no column type that COPY INTO "
                    "loads into a VARIANT column",
                    writer=self.name,
                )

    async def write(self, rows: Rows) -> WriteReceipt:
        if len(rows) == 0:
            return WriteReceipt(rows=0, details={"statement_ids": [], "statements": 0})
        self._require_open()
        self.check(rows.table)
        data = await asyncio.to_thread(self._parquet, rows.data)
        file_name = self._staged_name(rows)
        path = f"{self.staging}/{file_name}"
        statement = (
            f"COPY INTO {quote_table(rows.table.delta_table)} FROM '{self.staging}' "
            f"FILEFORMAT = PARQUET FILES = ('{file_name}')"
        )
        details: dict[str, Any] = {
            "staged_file": path,
            "parquet_bytes": len(data),
            "compression": self.compression,
            "statements": 1,
        }
        self.count_payload(rows.table.delta_table, len(data) + len(statement.encode()))
        try:
            try:
                await self._call(self._upload, path, data)
            except DirectWriteError as exc:
                exc.message = f"staging {path} with the Files API failed: {exc.message}"
                exc.args = (exc.message,)
                raise
            result = await self._call(self._run, statement)
            inserted = _inserted_rows(result.rows)
            if inserted != len(rows):
                raise WriteFailedError(
                    f"COPY INTO (statement {result.statement_id}) loaded {inserted} rows of "
                    f"{path}, expected {len(rows)}; the batch is not reported as written",
                    writer=self.name,
                )
        except DirectWriteError as exc:
            warning = await self._delete_staged(path)
            if warning:
                exc.message = f"{exc.message}; {warning}"
                exc.args = (exc.message,)
            log.warning(
                "sql_copy_failed", writer=self.name, batch_id=rows.batch_id, error=exc.message
            )
            raise
        warning = await self._delete_staged(path)
        details["statement_ids"] = [result.statement_id]
        if warning:
            details["staging_warning"] = warning
        log.debug("sql_copy_write", writer=self.name, batch_id=rows.batch_id, rows=len(rows))
        return WriteReceipt(rows=len(rows), details=details)

    def _staged_name(self, rows: Rows) -> str:
        """A new file name for every write (COPY INTO skips a name it loaded before)."""
        return f"{_UNSAFE.sub('_', rows.batch_id)[:60]}-{uuid.uuid4().hex}.parquet"

    def _parquet(self, data: pa.RecordBatch) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(
            pa.Table.from_batches([data]),
            buffer,
            compression=self.compression,
            coerce_timestamps="us",
            allow_truncated_timestamps=False,
        )
        return buffer.getvalue()

    def _upload(self, path: str, data: bytes) -> None:
        assert self._client is not None
        # A new name each time: overwrite=False makes a clash an error, not a lost file.
        self._client.files.upload(path, io.BytesIO(data), overwrite=False)

    def _delete(self, path: str) -> None:
        assert self._client is not None
        # Not there (the upload failed before it was stored): nothing is left behind.
        with contextlib.suppress(NotFound):
            self._client.files.delete(path)

    async def _delete_staged(self, path: str) -> str | None:
        """Delete the staged file; a warning when that fails (the file stays behind)."""
        if self._client is None:
            return f"the staged file {path} was not deleted: the writer was closed"
        try:
            await self._call(self._delete, path)
        except DirectWriteError as exc:
            log.warning("sql_copy_staged_file_left", writer=self.name, error=exc.message)
            return f"the staged file {path} could not be deleted (Files API): {exc.message}"
        return None


def _inserted_rows(rows: list[list[Any]]) -> int:
    """num_inserted_rows of COPY INTO's one-row result (num_affected_rows,
    num_inserted_rows, num_skipped_corrupt_files)."""
    if not rows or len(rows[0]) < 2 or not str(rows[0][1]).isdigit():
        raise WriteFailedError(f"COPY INTO answered without row counts: {rows[:1]!r}")
    return int(rows[0][1])
