"""The CDF copy keeps its target compacted as the stack's writers keep theirs: a round
commits every ROUND_EVERY_S, and delta-rs's cost per commit (and a synced table's per
read) grows with the files a table holds. Real tables, a real copy; the threshold low."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.cdf_copy import CdfCopy
from emulator.schema import TableSchema
from emulator.table_writer import TableWriterConfig

SCHEMA = TableSchema.of(("event_id", "STRING"), ("event_time", "TIMESTAMP"))
ROUNDS = 7


def batch(n: int) -> pa.RecordBatch:
    at = dt.datetime(2026, 12, 2, 8, 0, n, tzinfo=dt.UTC)
    return pa.RecordBatch.from_pylist(
        [{"event_id": f"e{n}", "event_time": at}], schema=SCHEMA.to_arrow()
    )


async def wait_until(check, what: str) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within 20 s")


async def test_the_copy_compacts_its_target_and_every_row_is_copied_once(tmp_path: Path) -> None:
    config = TableWriterConfig(linger_s=0, compact_min_files=3)
    catalog = Catalog(tmp_path, config)
    catalog.create_table("main.p.bronze", SCHEMA)
    copy = CdfCopy(catalog, "main.p.bronze", "main.p.silver")
    await copy.start()
    try:
        writer = catalog.writer("main.p.bronze")
        for n in range(ROUNDS):
            await writer.append(batch(n))
            # One round per commit: each adds one file to silver.
            await wait_until(lambda n=n: copy.status.rows_copied == n + 1, f"round {n}")
        await wait_until(lambda: copy.status.compactions >= 1, "a compaction of silver")
    finally:
        await copy.stop()
        await catalog.close()
    silver = DeltaTable(str(catalog.get("main.p.silver").path))
    ids = sorted(silver.to_pyarrow_table().column("event_id").to_pylist())
    assert ids == sorted(f"e{n}" for n in range(ROUNDS))
    assert len(silver.file_uris()) < ROUNDS  # compacted
    # Compactions change no data: the change feed still has each row once, as inserted.
    changes = pa.table(silver.load_cdf(starting_version=1).read_all())  # 1: CDF enabled
    assert sorted(changes.column("event_id").to_pylist()) == ids
    assert set(changes.column("_change_type").to_pylist()) == {"insert"}
    assert copy.describe()["compactions"] == copy.status.compactions
