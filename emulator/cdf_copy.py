"""The copy of a Change-Data-Feed-less table into a CDF-enabled one, as a streaming job does.

A Zerobus target table has no Change Data Feed, so the serving path copies it: on Databricks
a Structured Streaming job (`readStream.table(bronze)` -> `writeStream.toTable(silver)`),
here this service, in the local stack. It reads the source's commits in order, straight
from the Delta log (the rows each commit *added* with `dataChange`, so compactions are
skipped, as Delta's streaming source skips them), and appends them to the target in one
commit per round. The last source version copied is recorded in that same commit's
metadata (COPIED_THROUGH_KEY): a restarted copy resumes after it, and a round is never
applied twice, because progress and rows land in one atomic commit. The target is kept up
as the stack's tables are (`keep_table_up`: compacted once it holds the catalog's
`compact_min_files` small files, in a thread of its own beside the rounds, then vacuumed):
a round commits every ROUND_EVERY_S, and delta-rs's cost per commit, and the synced table's
per read, grows with the files a table holds.

Each round stamps the freshness hops it sees, from each row's event time: "bronze" (the
source commit's timestamp: its log entry's modification time, when it became readable) and
"silver" (when the target commit returned). Histograms are
HdrHistogram's standard encoding, which any HDR reader (the app's) decodes and merges.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog
from deltalake import CommitProperties, DeltaTable, write_deltalake
from hdrh.histogram import HdrHistogram

from emulator.catalog import Catalog
from emulator.table_writer import (
    Upkeep,
    commit_time_us,
    count_small_files,
    keep_table_up,
    read_commit,
)

log = structlog.get_logger(__name__)

COPIED_THROUGH_KEY = "dwbench.copiedThroughSourceVersion"
CDF_PROPERTY = "delta.enableChangeDataFeed"
MAX_VERSIONS_PER_ROUND = 200
# Rounds start at most this often (a streaming job's trigger interval): each takes every
# new commit, so under load rounds grow rather than commits multiply.
ROUND_EVERY_S = 0.1


class HopHistogram:
    """Microseconds from event time to a hop, HdrHistogram (1 µs .. 1 h, 3 digits)."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, 3_600_000_000, 3)

    def record_array(self, lag_us: Any) -> None:
        for value in lag_us.tolist():  # numpy int64 array; hdrh has no bulk record
            self.hist.record_value(min(max(int(value), 1), 3_600_000_000))

    def encode(self) -> str | None:
        if self.hist.get_total_count() == 0:
            return None
        encoded: bytes = self.hist.encode()
        return encoded.decode()


def lag_us(event_time: pa.ChunkedArray | pa.Array, at_us: int | pa.Array) -> Any:
    """at - event_time in microseconds, as a numpy array (nulls dropped)."""
    micros = pc.cast(pc.cast(event_time, pa.timestamp("us", tz="UTC")), pa.int64())
    at = at_us if isinstance(at_us, pa.Array) else pa.scalar(at_us, pa.int64())
    return pc.drop_null(pc.subtract(at, micros)).to_numpy(zero_copy_only=False)


def now_us() -> int:
    return time.time_ns() // 1000


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class CopyStatus:
    state: str = "STARTING"
    last_copied_source_version: int | None = None
    source_version: int | None = None
    target_version: int | None = None
    rows_copied: int = 0
    rounds: int = 0
    last_round_end_us: int | None = None
    compactions: int = 0
    message: str | None = None
    hops: dict[str, HopHistogram] = field(
        default_factory=lambda: {"bronze": HopHistogram(), "silver": HopHistogram()}
    )


class CdfCopy:
    """source (any Delta table of the catalog) -> target (created with CDF enabled)."""

    def __init__(
        self, catalog: Catalog, source: str, target: str, *, time_column: str = "event_time"
    ) -> None:
        self.catalog = catalog
        self.source = catalog.get(source)
        self.target_name = target
        self.time_column = time_column
        self.status = CopyStatus()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._target: DeltaTable | None = None
        self._target_path: Path | None = None
        # Small files in the target, as last counted plus those rounds added since; the
        # upkeep (compaction, vacuum) runs in its own thread.
        self._small_files = 0
        self._upkeep_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"compact-{target}"
        )
        self._upkeep: concurrent.futures.Future[Upkeep] | None = None
        self._reload_target = False

    def spec(self) -> dict[str, Any]:
        return {"source": self.source.name, "target": self.target_name}

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        self._task = asyncio.create_task(self._run(), name=f"cdf-copy-{self.target_name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await asyncio.to_thread(self._upkeep_pool.shutdown, wait=True)
        self.status.state = "STOPPED"

    def reset_freshness(self) -> None:
        self.status.hops = {"bronze": HopHistogram(), "silver": HopHistogram()}

    def describe(self) -> dict[str, Any]:
        s = self.status
        return {
            **self.spec(),
            "state": s.state,
            "last_copied_source_version": s.last_copied_source_version,
            "source_version": s.source_version,
            "source_latest_version": self._latest_source_version(),
            "target_version": s.target_version,
            "rows_copied": s.rows_copied,
            "rounds": s.rounds,
            "compactions": s.compactions,
            "last_round_end": iso(s.last_round_end_us),
            "message": s.message,
            "freshness": {hop: h.encode() for hop, h in s.hops.items()},
        }

    def _latest_source_version(self) -> int | None:
        """The newest commit of the source (the next log files after the last copied)."""
        log_dir = self.source.path / "_delta_log"
        v = self.status.last_copied_source_version
        v = -1 if v is None else v
        while (log_dir / f"{v + 1:020d}.json").exists():
            v += 1
        return None if v < 0 else v

    # -- the work, in a thread ---------------------------------------------------------

    def _prepare(self) -> None:
        target = self.catalog.create_table(self.target_name, self.source.schema, if_not_exists=True)
        table = target.delta()
        if table.metadata().configuration.get(CDF_PROPERTY) != "true":
            table.alter.set_table_properties({CDF_PROPERTY: "true"})
        self._target = DeltaTable(str(target.path))
        self._target_path = target.path
        self._small_files = count_small_files(self._target, self.catalog.writer_config)
        self.status.last_copied_source_version = _copied_through(self._target)
        self.status.target_version = self._target.version()
        log.info(
            "cdf_copy.started",
            source=self.source.name,
            target=self.target_name,
            resume_after=self.status.last_copied_source_version,
        )

    async def _run(self) -> None:
        self.status.state = "RUNNING"
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._round)
            except Exception as exc:  # reported in the status; the next round tries again
                self.status.state, self.status.message = "FAILED", str(exc)[:500]
                log.error("cdf_copy.round_failed", target=self.target_name, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            self.status.state, self.status.message = "RUNNING", None
            await asyncio.sleep(max(0.0, ROUND_EVERY_S - (time.monotonic() - started)))

    def _round(self) -> bool:
        """Copy the next source commits; False when there was none."""
        log_dir = self.source.path / "_delta_log"
        done = self.status.last_copied_source_version
        first = 0 if done is None else done + 1
        versions: list[int] = []
        v = first
        while len(versions) < MAX_VERSIONS_PER_ROUND and (log_dir / f"{v:020d}.json").exists():
            versions.append(v)
            v += 1
        if not versions:
            return False
        self.status.source_version = versions[-1]
        tables: list[pa.Table] = []
        commit_us: list[pa.Array] = []
        for version in versions:
            added = _added_files(log_dir / f"{version:020d}.json")
            committed_us = commit_time_us(self.source.path, version)
            for path in added:
                part = pq.read_table(self.source.path / unquote(path))
                part = part.select(self.source.schema.to_arrow().names).cast(
                    self.source.schema.to_arrow()
                )
                tables.append(part)
                commit_us.append(pa.array([committed_us] * part.num_rows, pa.int64()))
        assert self._target is not None and self._target_path is not None
        if self._reload_target:
            # Compacted meanwhile: a fresh load costs less than catching up on the rewrite.
            self._reload_target = False
            self._target = DeltaTable(str(self._target_path))
        last = versions[-1]
        rows = pa.concat_tables(tables) if tables else None
        if rows is None or rows.num_rows == 0:
            # Nothing added (table creation, compactions): progress is kept in memory only;
            # after a restart these versions are read again, harmlessly.
            self.status.last_copied_source_version = last
            return True
        write_deltalake(
            self._target,
            rows,
            mode="append",
            commit_properties=CommitProperties(custom_metadata={COPIED_THROUGH_KEY: str(last)}),
        )
        end = now_us()
        s = self.status
        s.last_copied_source_version = last
        s.target_version = self._target.version()
        actions = read_commit(self._target_path, s.target_version)
        self._small_files += sum(1 for action in actions if "add" in action)
        self._keep_target_up()
        s.rows_copied += rows.num_rows
        s.rounds += 1
        s.last_round_end_us = end
        if self.time_column in rows.column_names:
            times = rows.column(self.time_column)
            s.hops["bronze"].record_array(lag_us(times, pa.concat_arrays(commit_us)))
            s.hops["silver"].record_array(lag_us(times, end))
        return True

    def _keep_target_up(self) -> None:
        config = self.catalog.writer_config
        if self._small_files < config.compact_min_files:
            return
        if self._upkeep is not None and not self._upkeep.done():
            return
        assert self._target_path is not None
        counted = self._small_files
        upkeep = self._upkeep_pool.submit(
            keep_table_up, self._target_path, self.target_name, config, self.catalog.sync
        )
        self._upkeep = upkeep

        def done(future: concurrent.futures.Future[Upkeep]) -> None:
            if (exc := future.exception()) is not None:
                log.error("cdf_copy.upkeep_failed", target=self.target_name, error=str(exc))
                return
            outcome = future.result()
            self.status.compactions += outcome.compacted
            # Files rounds added while it ran are counted again on top of what it left.
            self._small_files = outcome.small_files_left + max(self._small_files - counted, 0)
            self._reload_target = outcome.compacted

        upkeep.add_done_callback(done)


def _added_files(commit: Path) -> list[str]:
    """The data files a commit added (dataChange)."""
    added: list[str] = []
    for line in commit.read_text().splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "add" in action and action["add"].get("dataChange", True):
            added.append(action["add"]["path"])
    return added


def _copied_through(table: DeltaTable) -> int | None:
    """The last source version a committed round copied, from the target's commits."""
    for commit in table.history():  # newest first
        value = commit.get(COPIED_THROUGH_KEY)
        if value is not None:
            return int(value)
    return None
