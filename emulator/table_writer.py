"""Group commit of appends into one Delta table.

Every append waits until the Delta commit that holds its rows has succeeded, so a
caller that acknowledges after `append()` returns acknowledges durable rows. Appends
that arrive while a commit is in flight are gathered into the next commit: under load
commits grow instead of queueing, which keeps both throughput and latency steady.
All commits of a table go through its one writer, so concurrent producers (Zerobus
streams, SQL inserts) never race each other for a table version.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import structlog
from deltalake import CommitProperties, DeltaTable, write_deltalake

from emulator.errors import WriterClosedError

log = structlog.get_logger(__name__)


# The commitInfo key under which a commit lists the Volume files COPY INTO loaded in it.
COPIED_FILES_KEY = "dwbench.copyIntoFiles"


def copied_files(table: DeltaTable) -> set[str]:
    """Every Volume file COPY INTO loaded into the table, from its commits' metadata."""
    loaded: set[str] = set()
    for commit in table.history():
        listed = commit.get(COPIED_FILES_KEY)
        if isinstance(listed, str):
            loaded.update(json.loads(listed))
    return loaded


@dataclass(frozen=True)
class CommitResult:
    """Where an append landed: the table version that made it durable."""

    version: int
    rows_in_commit: int


@dataclass
class TableWriterStats:
    commits: int = 0
    rows: int = 0
    compactions: int = 0
    last_commit_ms: float = 0.0


@dataclass(frozen=True)
class TableWriterConfig:
    # Commit at once when this many rows are waiting, else after `linger_s`.
    max_rows: int = 200_000
    linger_s: float = 0.002
    # Compact small files once this many commits have added files since the last compaction.
    compact_every_commits: int = 500
    compact_target_bytes: int = 128 * 1024 * 1024


class TableWriter:
    def __init__(
        self,
        name: str,
        path: Path,
        schema: pa.Schema,
        config: TableWriterConfig | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.schema = schema
        self.config = config or TableWriterConfig()
        self.stats = TableWriterStats()
        self._pending: list[tuple[pa.RecordBatch, asyncio.Future[CommitResult]]] = []
        self._pending_rows = 0
        # Volume files COPY INTO loaded with the pending rows: recorded in the same commit.
        self._pending_files: list[str] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{name}")
        self._compact_thread = ThreadPoolExecutor(1, thread_name_prefix=f"compact-{name}")
        self._compaction: asyncio.Future[None] | None = None
        self._commits_since_compaction = 0
        self._table = DeltaTable(str(path))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"writer-{name}")

    async def append(
        self, batch: pa.RecordBatch, *, copied_files: Sequence[str] = ()
    ) -> CommitResult:
        """Queue rows for the next commit and return once they are committed.

        `copied_files` (COPY INTO's source files) go into that commit's metadata under
        COPIED_FILES_KEY, so a restarted stack still knows them as loaded."""
        if self._closing:
            raise WriterClosedError(self.name)
        self._pending_files.extend(copied_files)
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        self._pending_rows += batch.num_rows
        self._wakeup.set()
        # Shielded: a caller that goes away must not cancel a commit other callers share.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Commit everything queued, then stop. Appends after this raise WriterClosedError."""
        self._closing = True
        self._wakeup.set()
        await self._task
        if self._compaction is not None:
            await asyncio.gather(self._compaction, return_exceptions=True)
        self._commit_thread.shutdown(wait=True)
        self._compact_thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                continue
            if self._pending_rows < self.config.max_rows and not self._closing:
                await asyncio.sleep(self.config.linger_s)
            self._wakeup.clear()
            taken, self._pending, self._pending_rows = self._pending, [], 0
            files, self._pending_files = self._pending_files, []
            batches = [batch for batch, _ in taken]
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(
                    self._commit_thread, self._commit, batches, files
                )
            except Exception as exc:  # every waiter learns its rows were not committed
                log.error("commit_failed", table=self.name, error=str(exc))
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.commits += 1
            self.stats.rows += result.rows_in_commit
            self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
            log.debug(
                "committed",
                table=self.name,
                version=result.version,
                rows=result.rows_in_commit,
                appends=len(taken),
                ms=round(self.stats.last_commit_ms, 1),
            )
            for _, future in taken:
                if not future.done():
                    future.set_result(result)
            self._commits_since_compaction += 1
            self._maybe_compact()

    def _commit(self, batches: Sequence[pa.RecordBatch], files: Sequence[str] = ()) -> CommitResult:
        table = pa.Table.from_batches(batches, schema=self.schema)
        properties = (
            CommitProperties(custom_metadata={COPIED_FILES_KEY: json.dumps(sorted(files))})
            if files
            else None
        )
        write_deltalake(self._table, table, mode="append", commit_properties=properties)
        return CommitResult(version=self._table.version(), rows_in_commit=table.num_rows)

    def _maybe_compact(self) -> None:
        if self._commits_since_compaction < self.config.compact_every_commits:
            return
        if self._compaction is not None and not self._compaction.done():
            return
        self._commits_since_compaction = 0
        loop = asyncio.get_running_loop()
        self._compaction = loop.run_in_executor(self._compact_thread, self._compact)

    def _compact(self) -> None:
        # Runs beside appends: Delta's conflict check lets a compaction commit over blind
        # appends, and a compaction that loses a race is simply tried again later.
        try:
            metrics = DeltaTable(str(self.path)).optimize.compact(
                target_size=self.config.compact_target_bytes
            )
        except Exception as exc:
            log.warning("compaction_failed", table=self.name, error=str(exc))
            return
        self.stats.compactions += 1
        log.info(
            "compacted",
            table=self.name,
            files_removed=metrics.get("numFilesRemoved"),
            files_added=metrics.get("numFilesAdded"),
        )
