"""Group commit of appends into one Delta table.

Every append waits until the Delta commit that holds its rows has succeeded and is on
disk (its data files, its log entry and their directories fsynced: delta-rs's local
object store does not fsync), so a caller that acknowledges after `append()` returns
acknowledges rows that survive a power loss. Appends that arrive while a commit is in
flight are gathered into the next commit: under load commits grow instead of queueing,
which keeps both throughput and latency steady. When a group commit fails, each of its
appends is committed alone, so only the append that cannot be committed fails, not the
other clients' appends it happened to share a commit with. All commits of a table go
through its one writer, so concurrent producers (Zerobus streams, SQL inserts) never
race each other for a table version.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from deltalake import CommitProperties, DeltaTable, write_deltalake

from emulator.errors import WriterClosedError

log = structlog.get_logger(__name__)


# The commitInfo key under which a commit lists the Volume files COPY INTO loaded in it.
COPIED_FILES_KEY = "dwbench.copyIntoFiles"
# The commitInfo key with a commit's own id: a commit that raised after its log entry was
# written is found by it, and not committed a second time.
COMMIT_ID_KEY = "dwbench.commitId"

# fsync of one file or directory: injectable, so tests can see what was synced.
Sync = Callable[[Path], None]


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its new entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(table_path: Path, version: int) -> Path:
    return table_path / "_delta_log" / f"{version:020d}.json"


def commit_time_us(table_path: Path, version: int) -> int:
    """When a commit became readable, in µs since the epoch: its log entry's modification
    time, which is the Delta protocol's commit timestamp for a table without in-commit
    timestamps. (delta-rs's commitInfo "timestamp" is taken when the write starts, before
    its data files are written: earlier by the whole commit.)"""
    return commit_file(table_path, version).stat().st_mtime_ns // 1000


def read_commit(table_path: Path, version: int) -> list[dict[str, Any]]:
    """The actions of one commit, as its log entry holds them (one JSON object a line)."""
    text = commit_file(table_path, version).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def data_file(table_path: Path, path: str) -> Path | None:
    """The local file an add action's path names: relative to the table and URL-encoded,
    or a file:// URI; None for a file elsewhere (another store)."""
    if "://" not in path:
        return table_path / unquote(path)
    parts = urlsplit(path)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def added_paths(table_path: Path, actions: Sequence[dict[str, Any]]) -> list[Path]:
    """The local data files a commit's add actions name."""
    files = (data_file(table_path, a["add"]["path"]) for a in actions if "add" in a)
    return [f for f in files if f is not None]


def sync_commit(
    table_path: Path, version: int, actions: Sequence[dict[str, Any]], sync: Sync
) -> list[Path]:
    """Make one commit durable: its data files, their directories, its log entry (and the
    checkpoint written with it, if any), then the log directory. Returns what was synced."""
    files = added_paths(table_path, actions)
    log_dir = table_path / "_delta_log"
    synced: list[Path] = []
    for path in files:
        sync(path)
        synced.append(path)
    for directory in sorted({path.parent for path in files}):
        sync(directory)
        synced.append(directory)
    tail = [commit_file(table_path, version)]
    tail += sorted(log_dir.glob(f"{version:020d}.checkpoint*.parquet"))
    if len(tail) > 1 and (log_dir / "_last_checkpoint").exists():
        tail.append(log_dir / "_last_checkpoint")
    for path in (*tail, log_dir):
        sync(path)
        synced.append(path)
    return synced


def copied_files(table: DeltaTable) -> set[str]:
    """Every Volume file COPY INTO loaded into the table, from its commits' metadata."""
    loaded: set[str] = set()
    for commit in table.history():
        listed = commit.get(COPIED_FILES_KEY)
        if isinstance(listed, str):
            loaded.update(json.loads(listed))
    return loaded


class CommitNotDurableError(RuntimeError):
    """A commit landed in the log but could not be fsynced: its rows are not acknowledged
    (nor committed again: they may well be there after a restart)."""

    def __init__(self, table: str, version: int, exc: OSError) -> None:
        super().__init__(
            f"the commit of version {version} of {table} could not be made durable: "
            f"{exc.strerror or exc}"
        )


@dataclass(frozen=True)
class CommitResult:
    """Where an append landed: the table version that made it durable."""

    version: int
    rows_in_commit: int
    files_added: int = 0


@dataclass
class TableWriterStats:
    commits: int = 0
    rows: int = 0
    compactions: int = 0
    vacuumed_files: int = 0
    # Time the commits spent in fsync (what durability costs, without the noise around it).
    fsync_ms: float = 0.0
    last_commit_ms: float = 0.0


@dataclass(frozen=True)
class TableWriterConfig:
    # Commit at once when this many rows are waiting, else after `linger_s`.
    max_rows: int = 200_000
    linger_s: float = 0.002
    # Compact once the table holds this many files smaller than `compact_target_bytes`:
    # counted from the table itself, so a stack restarted often compacts all the same.
    # 50, as Databricks' auto compaction (minNumFiles): delta-rs's cost per commit grows
    # with the files a table holds (~0.1 ms each here), so at 20 commits/s a threshold of
    # 200 spent about twice as long per commit as 50 does.
    compact_min_files: int = 50
    compact_target_bytes: int = 128 * 1024 * 1024
    # Files no version newer than this needs (compacted away, or left by a failed commit)
    # are deleted after this long. An hour: far beyond any read of an older snapshot here
    # (the stack has no time travel, a scan takes seconds) and any write in flight, whose
    # files exist before its commit does; short enough that the data directory does not
    # keep every compacted file for the Delta default of 7 days. 0 only in tests.
    vacuum_retention_hours: int = 1
    # fsync every commit before it is acknowledged. Off only to measure what it costs
    # (`python -m emulator --no-fsync`): an acknowledged row may then be lost on power loss.
    fsync: bool = True


@dataclass
class _Append:
    batch: pa.RecordBatch
    files: Sequence[str]  # Volume files COPY INTO loaded with these rows
    future: asyncio.Future[CommitResult]


class TableWriter:
    def __init__(
        self,
        name: str,
        path: Path,
        schema: pa.Schema,
        config: TableWriterConfig | None = None,
        *,
        sync: Sync = fsync_path,
    ) -> None:
        """`sync`: how a file or directory is fsynced (tests count the calls)."""
        self.name = name
        self.path = path
        self.schema = schema
        self.config = config or TableWriterConfig()
        self.stats = TableWriterStats()
        self._sync = sync
        self._pending: list[_Append] = []
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{name}")
        self._compact_thread = ThreadPoolExecutor(1, thread_name_prefix=f"compact-{name}")
        self._upkeep: asyncio.Future[int] | None = None
        # Small files in the table, as last counted plus those commits added since.
        self._small_files = 0
        self._table = DeltaTable(str(path))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"writer-{name}")
        # At once: a table left with many small files by earlier runs is compacted now.
        self._start_upkeep()

    async def append(
        self, batch: pa.RecordBatch, *, copied_files: Sequence[str] = ()
    ) -> CommitResult:
        """Queue rows for the next commit and return once they are committed.

        `copied_files` (COPY INTO's source files) go into that commit's metadata under
        COPIED_FILES_KEY, so a restarted stack still knows them as loaded."""
        if self._closing:
            raise WriterClosedError(self.name)
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(batch, tuple(copied_files), future))
        self._pending_rows += batch.num_rows
        self._wakeup.set()
        # Shielded: a caller that goes away must not cancel a commit other callers share.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Commit everything queued, then stop. Appends after this raise WriterClosedError."""
        self._closing = True
        self._wakeup.set()
        await self._task
        if self._upkeep is not None:
            await asyncio.gather(self._upkeep, return_exceptions=True)
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
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._commit_thread, self._commit, taken)
            except Exception as exc:
                if len(taken) == 1 or isinstance(exc, CommitNotDurableError):
                    # Alone, there is nothing to retry; not durable, it is committed
                    # already: neither acknowledged nor committed a second time.
                    log.error("commit_failed", table=self.name, error=str(exc))
                    for append in taken:
                        _fail(append, exc)
                    continue
                # One append may be what cannot be committed (a value delta-rs refuses):
                # each is committed alone, so only that one's caller learns of it.
                log.warning(
                    "group_commit_failed_retrying_alone",
                    table=self.name,
                    appends=len(taken),
                    error=str(exc),
                )
                for append in taken:
                    try:
                        alone = await loop.run_in_executor(
                            self._commit_thread, self._commit, [append]
                        )
                    except Exception as alone_exc:
                        log.error("commit_failed", table=self.name, error=str(alone_exc))
                        _fail(append, alone_exc)
                    else:
                        self._committed([append], alone, started)
                continue
            self._committed(taken, result, started)

    def _committed(self, taken: Sequence[_Append], result: CommitResult, started: float) -> None:
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
        for append in taken:
            if not append.future.done():
                append.future.set_result(result)
        self._small_files += result.files_added
        if self._small_files >= self.config.compact_min_files:
            self._start_upkeep()

    def _commit(self, appends: Sequence[_Append]) -> CommitResult:
        """One Delta commit of `appends`, durable (when `fsync`) before it returns."""
        table = pa.Table.from_batches([a.batch for a in appends], schema=self.schema)
        files = sorted({f for a in appends for f in a.files})
        commit_id = uuid.uuid4().hex
        metadata = {COMMIT_ID_KEY: commit_id}
        if files:
            metadata[COPIED_FILES_KEY] = json.dumps(files)
        before = self._table.version()
        try:
            write_deltalake(
                self._table,
                table,
                mode="append",
                commit_properties=CommitProperties(custom_metadata=metadata),
            )
        except Exception:
            # A commit can fail after its log entry was written (in a post-commit step):
            # then it is committed, and committing it again would duplicate its rows.
            self._table = DeltaTable(str(self.path))
            found = self._find_commit(commit_id, before)
            if found is None:
                raise
            log.warning("commit_raised_after_landing", table=self.name, version=found[0])
        else:
            found = self._find_commit(commit_id, before, first=self._table.version())
            if found is None:  # never: write_deltalake returned, so its entry is there
                raise RuntimeError(f"commit {commit_id} of {self.name} is not in its log")
        version, actions = found
        if self.config.fsync:
            synced_from = time.perf_counter()
            try:
                sync_commit(self.path, version, actions, self._sync)
            except OSError as exc:
                raise CommitNotDurableError(self.name, version, exc) from exc
            self.stats.fsync_ms += (time.perf_counter() - synced_from) * 1000
        added = sum(1 for a in actions if "add" in a)
        return CommitResult(version=version, rows_in_commit=table.num_rows, files_added=added)

    def _find_commit(
        self, commit_id: str, after: int, *, first: int | None = None
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """The version and actions of the commit with `commit_id` among those after
        `after` (tried from `first`, where it is expected, then the others)."""
        latest = max(after, self._table.version())
        candidates = list(range(after + 1, latest + 1))
        if first is not None and first in candidates:
            candidates.remove(first)
            candidates.insert(0, first)
        for version in candidates:
            try:
                actions = read_commit(self.path, version)
            except FileNotFoundError:
                continue
            info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            if info.get(COMMIT_ID_KEY) == commit_id:
                return version, actions
        return None

    def _start_upkeep(self) -> None:
        if self._upkeep is not None and not self._upkeep.done():
            return
        loop = asyncio.get_running_loop()
        upkeep = loop.run_in_executor(self._compact_thread, self._keep_up)
        added_before = self._small_files
        self._upkeep = upkeep

        def counted(done: asyncio.Future[int]) -> None:
            # Files committed while the upkeep ran are counted again: at worst the next
            # upkeep comes a little early, and it counts before it compacts.
            if done.cancelled():
                return
            if (exc := done.exception()) is not None:
                log.error("upkeep_failed", table=self.name, error=str(exc))
                return
            self._small_files = done.result() + max(self._small_files - added_before, 0)

        upkeep.add_done_callback(counted)

    def _keep_up(self) -> int:
        """Compaction and vacuum beside appends (see keep_table_up); the small files left."""
        outcome = keep_table_up(self.path, self.name, self.config, self._sync)
        self.stats.compactions += outcome.compacted
        self.stats.vacuumed_files += outcome.vacuumed
        return outcome.small_files_left


@dataclass(frozen=True)
class Upkeep:
    compacted: bool
    vacuumed: int
    small_files_left: int


def keep_table_up(path: Path, name: str, config: TableWriterConfig, sync: Sync) -> Upkeep:
    """Compact the table when it holds `config.compact_min_files` small files, then vacuum
    what no version needs any more. Safe beside blind appends: Delta's conflict check lets
    a compaction commit over them, and one that loses a race is simply tried again later.
    A failure is logged and leaves the table as it was."""
    table = DeltaTable(str(path))
    small = count_small_files(table, config)
    compacted = False
    if small >= config.compact_min_files:
        try:
            metrics = table.optimize.compact(target_size=config.compact_target_bytes)
            if config.fsync:
                version = table.version()
                sync_commit(path, version, read_commit(path, version), sync)
        except Exception as exc:
            log.warning("compaction_failed", table=name, error=str(exc))
        else:
            compacted = True
            log.info(
                "compacted",
                table=name,
                small_files=small,
                files_removed=metrics.get("numFilesRemoved"),
                files_added=metrics.get("numFilesAdded"),
            )
    vacuumed = 0
    try:
        removed = DeltaTable(str(path)).vacuum(
            retention_hours=config.vacuum_retention_hours,
            dry_run=False,
            # Delta refuses less than the table's 7-day default unless told otherwise.
            enforce_retention_duration=False,
            # Also the files of commits that failed: no log entry names them.
            full=True,
        )
    except Exception as exc:
        log.warning("vacuum_failed", table=name, error=str(exc))
    else:
        if removed:
            vacuumed = len(removed)
            log.info("vacuumed", table=name, files=vacuumed)
    return Upkeep(compacted, vacuumed, count_small_files(DeltaTable(str(path)), config))


def count_small_files(table: DeltaTable, config: TableWriterConfig) -> int:
    """Files of the table's current version smaller than `config.compact_target_bytes`."""
    sizes = pa.table(table.get_add_actions()).column("size_bytes")
    return int(pc.sum(pc.less(sizes, config.compact_target_bytes)).as_py() or 0)


def _fail(append: _Append, exc: BaseException) -> None:
    """The append's caller learns its rows were not committed."""
    if not append.future.done():
        append.future.set_exception(exc)
