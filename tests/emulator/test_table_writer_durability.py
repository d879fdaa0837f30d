"""The table writer under bad luck: a group commit one append breaks, and fsync before ack."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from databricks.sdk.service.sql import StatementState
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.schema import TableSchema
from emulator.table_writer import (
    CommitNotDurableError,
    TableWriter,
    TableWriterConfig,
    added_paths,
    read_commit,
)
from tests.emulator.statement_support import client, served_statement_app

SCHEMA = TableSchema.of(("id", "BIGINT", False), ("producer", "STRING"), ("day", "DATE"))
# 2^31-1 days: a date32 Arrow holds, and delta-rs panics on while computing file stats.
POISON_DAY = 2**31 - 1


def batch(producer: str, start: int, n: int, day: int = 19_000) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "id": list(range(start, start + n)),
            "producer": [producer] * n,
            "day": pa.array([day] * n, pa.date32()),
        },
        schema=SCHEMA.to_arrow(),
    )


def new_table(path: Path, **config: str) -> None:
    DeltaTable.create(str(path), schema=SCHEMA.to_delta(), configuration=config or None)


class CountingSync:
    """Records every path it is asked to fsync, and whether the appends were done then."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.acked_while_syncing: list[bool] = []
        self.watched: list[asyncio.Task[object]] = []
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> None:
        assert path.exists(), f"asked to fsync {path}, which does not exist"
        with self._lock:
            self.paths.append(path)
            self.acked_while_syncing.extend(task.done() for task in self.watched)


async def test_a_group_commit_one_append_breaks_fails_only_that_append(tmp_path):
    # A long linger: the nine appends below all wait for the same group commit.
    catalog = Catalog(tmp_path, TableWriterConfig(linger_s=0.2))
    path = catalog.create_table("main.s.t", SCHEMA).path
    writer = catalog.writer("main.s.t")
    good = [asyncio.create_task(writer.append(batch(f"p{i}", i * 100, 100))) for i in range(8)]
    bad = asyncio.create_task(writer.append(batch("poison", 10_000, 3, day=POISON_DAY)))
    results = await asyncio.gather(*good, return_exceptions=True)
    with pytest.raises(Exception, match="overflowed"):
        await bad
    assert all(not isinstance(r, BaseException) for r in results), results
    # Each valid append was committed on its own after the group commit failed.
    versions = sorted(r.version for r in results if not isinstance(r, BaseException))
    assert versions == list(range(1, 9))
    # The writer goes on: the next append commits.
    after = await writer.append(batch("later", 5_000, 5))
    await catalog.close()
    assert after.version == 9
    data = DeltaTable(str(path)).to_pyarrow_table()
    ids = sorted(data["id"].to_pylist())
    assert ids == list(range(800)) + list(range(5_000, 5_005))
    for i in range(8):
        rows = data.filter(pa.compute.equal(data["producer"], f"p{i}"))
        assert sorted(rows["id"].to_pylist()) == list(range(i * 100, i * 100 + 100))
    assert data.filter(pa.compute.equal(data["producer"], "poison")).num_rows == 0
    # And SQL reads the table whole.
    token = "t" * 20
    with served_statement_app(Catalog(tmp_path), token) as url:
        resp = await asyncio.to_thread(
            client(url, token).statement_execution.execute_statement,
            statement="SELECT producer, count(*), min(day) FROM main.s.t "
            "GROUP BY producer ORDER BY producer",
            warehouse_id="local",
            wait_timeout="30s",
        )
    assert resp.status.state == StatementState.SUCCEEDED, resp.status
    assert resp.result.data_array == [
        ["later", "5", "2022-01-08"],
        *([f"p{i}", "100", "2022-01-08"] for i in range(8)),
    ]


async def test_every_commit_is_fsynced_before_it_is_acknowledged(tmp_path):
    path = tmp_path / "t"
    new_table(path, **{"delta.checkpointInterval": "2"})
    sync = CountingSync()
    writer = TableWriter(
        "main.s.t", path, SCHEMA.to_arrow(), TableWriterConfig(linger_s=0.05), sync=sync
    )
    tasks = [asyncio.create_task(writer.append(batch(f"p{i}", i * 10, 10))) for i in range(4)]
    sync.watched = list(tasks)
    first = await asyncio.gather(*tasks)
    assert {r.version for r in first} == {1}  # one group commit
    assert len(sync.acked_while_syncing) > 4 and not any(sync.acked_while_syncing)
    sync.watched = []
    second = await writer.append(batch("q", 100, 10))
    await writer.close()
    assert second.version == 2

    log_dir = path / "_delta_log"
    for version in (1, 2):
        files = added_paths(path, read_commit(path, version))
        assert files, f"version {version} added no files"
        for file in files:
            assert file in sync.paths
            # A file is synced before the log entry that makes it part of the table.
            assert sync.paths.index(file) < sync.paths.index(log_dir / f"{version:020d}.json")
    assert path in sync.paths  # the data files' directory
    assert sync.paths.count(log_dir) == 2  # once per commit, after its entry
    # Version 1 wrote a checkpoint (interval 2): it is synced with its commit.
    assert log_dir / f"{1:020d}.checkpoint.parquet" in sync.paths
    assert log_dir / "_last_checkpoint" in sync.paths
    assert sync.paths[-1] == log_dir


async def test_without_fsync_nothing_is_synced(tmp_path):
    path = tmp_path / "t"
    new_table(path)
    sync = CountingSync()
    config = TableWriterConfig(linger_s=0, fsync=False)
    writer = TableWriter("main.s.t", path, SCHEMA.to_arrow(), config, sync=sync)
    await writer.append(batch("a", 0, 3))
    await writer.close()
    assert sync.paths == []
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 3


async def test_a_commit_that_cannot_be_synced_is_not_acknowledged_nor_committed_again(tmp_path):
    path = tmp_path / "t"
    new_table(path)

    def failing_sync(_: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    writer = TableWriter(
        "main.s.t", path, SCHEMA.to_arrow(), TableWriterConfig(linger_s=0.05), sync=failing_sync
    )
    tasks = [asyncio.create_task(writer.append(batch(f"p{i}", i * 10, 10))) for i in range(3)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await writer.close()
    message = "the commit of version 1 of main.s.t could not be made durable: Input/output error"
    assert [str(r) for r in results] == [message] * 3
    assert all(isinstance(r, CommitNotDurableError) for r in results)
    # Not retried one by one: the rows are in the table once.
    assert DeltaTable(str(path)).version() == 1
    assert sorted(DeltaTable(str(path)).to_pyarrow_table()["id"].to_pylist()) == list(range(30))


async def test_a_new_table_is_durable_with_the_directories_that_lead_to_it(tmp_path):
    sync = CountingSync()
    catalog = Catalog(tmp_path, sync=sync)
    table = catalog.create_table("main.s.t", TableSchema.of(("id", "BIGINT")))
    log_dir = table.path / "_delta_log"
    assert sync.paths == [
        log_dir / f"{0:020d}.json",
        log_dir,
        table.path,
        tmp_path / "tables" / "main" / "s",
        tmp_path / "tables" / "main",
        tmp_path / "tables",
    ]
    await catalog.close()


# -- upkeep across restarts: compaction from the table's file count, vacuum after retention --


def parquet_on_disk(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.parquet")}


def active_files(path: Path) -> set[str]:
    return {Path(uri).name for uri in DeltaTable(str(path)).file_uris()}


async def write_small_files(catalog: Catalog, name: str, n: int, start: int = 0) -> None:
    writer = catalog.writer(name)
    for k in range(start, start + n):
        await writer.append(batch("a", k, 1))


async def test_many_small_files_are_compacted_after_a_restart_and_vacuumed_later(tmp_path):
    name = "main.s.t"
    # Runs that never reach the threshold on their own: three runs of 10 small files.
    few = TableWriterConfig(linger_s=0, compact_min_files=1_000)
    for run in range(3):
        catalog = Catalog(tmp_path, few)
        if run == 0:
            catalog.create_table(name, SCHEMA)
        await write_small_files(catalog, name, 10, start=run * 10)
        await catalog.close()
    path = catalog.get(name).path
    assert len(active_files(path)) == 30

    # The next start counts the table's 30 small files against a threshold of 20: it
    # compacts before any append; the compacted-away files stay for the retention (1 h).
    sync = CountingSync()
    catalog = Catalog(tmp_path, TableWriterConfig(linger_s=0, compact_min_files=20), sync=sync)
    writer = catalog.writer(name)
    await catalog.close()
    assert writer.stats.compactions == 1 and writer.stats.vacuumed_files == 0
    [compacted] = active_files(path)
    assert path / compacted in sync.paths  # the compaction's commit is durable too
    assert len(parquet_on_disk(path)) == 31
    assert sorted(DeltaTable(str(path)).to_pyarrow_table()["id"].to_pylist()) == list(range(30))

    # A stray file a failed commit left, older than the retention, and one being written.
    stray_old, stray_new = path / "part-stray-old.parquet", path / "part-stray-new.parquet"
    for stray in (stray_old, stray_new):
        stray.write_bytes(b"not referenced by any commit")
    two_hours_ago = time.time() - 7_200
    os.utime(stray_old, (two_hours_ago, two_hours_ago))
    catalog = Catalog(tmp_path, TableWriterConfig(linger_s=0, vacuum_retention_hours=1))
    writer = catalog.writer(name)
    await catalog.close()
    assert writer.stats.vacuumed_files == 1  # the old stray; the 30 compacted are < 1 h old
    assert not stray_old.exists() and stray_new.exists()
    # Once the retention has passed (0 h here), vacuum deletes everything no version needs.
    catalog = Catalog(tmp_path, TableWriterConfig(linger_s=0, vacuum_retention_hours=0))
    writer = catalog.writer(name)
    await catalog.close()
    assert writer.stats.compactions == 0  # one small file: nothing to compact
    assert writer.stats.vacuumed_files == 31  # the 30 compacted away and the new stray
    assert parquet_on_disk(path) == active_files(path)
    assert sorted(DeltaTable(str(path)).to_pyarrow_table()["id"].to_pylist()) == list(range(30))
