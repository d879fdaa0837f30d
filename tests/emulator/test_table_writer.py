"""The group-commit table writer and the catalog, on real Delta tables."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from emulator.catalog import Catalog, parse_table_name
from emulator.errors import SchemaMismatchError, TableExistsError, TableNotFoundError
from emulator.schema import TableSchema
from emulator.table_writer import TableWriterConfig

SCHEMA = TableSchema.of(("id", "BIGINT", False), ("producer", "STRING"))


def batch(producer: str, start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {"id": list(range(start, start + n)), "producer": [producer] * n},
        schema=SCHEMA.to_arrow(),
    )


async def test_concurrent_appends_lose_no_commit(tmp_path):
    catalog = Catalog(tmp_path)
    table = catalog.create_table("main.s.t", SCHEMA)
    writer = catalog.writer("main.s.t")

    async def producer(name: str) -> list[int]:
        versions = []
        for k in range(40):
            result = await writer.append(batch(name, k * 10, 10))
            versions.append(result.version)
        return versions

    results = await asyncio.gather(*(producer(f"p{i}") for i in range(8)))
    await catalog.close()
    data = DeltaTable(str(table.path)).to_pyarrow_table()
    assert data.num_rows == 8 * 40 * 10
    for i, versions in enumerate(results):
        assert versions == sorted(versions)  # each producer's commits are in order
        rows = data.filter(pa.compute.equal(data["producer"], f"p{i}"))
        assert sorted(rows["id"].to_pylist()) == list(range(400))
    # Group commit: far fewer table versions than appends.
    assert DeltaTable(str(table.path)).version() < 8 * 40


async def test_append_returns_only_after_rows_are_readable(tmp_path):
    catalog = Catalog(tmp_path)
    table = catalog.create_table("main.s.t", SCHEMA)
    await catalog.writer("main.s.t").append(batch("a", 0, 5))
    assert DeltaTable(str(table.path)).to_pyarrow_table().num_rows == 5
    await catalog.close()


async def test_compaction_runs_beside_appends(tmp_path):
    config = TableWriterConfig(linger_s=0, compact_min_files=10)
    catalog = Catalog(tmp_path, config)
    table = catalog.create_table("main.s.t", SCHEMA)
    writer = catalog.writer("main.s.t")
    for k in range(60):
        await writer.append(batch("a", k, 1))
    await catalog.close()
    dt = DeltaTable(str(table.path))
    assert sorted(dt.to_pyarrow_table()["id"].to_pylist()) == list(range(60))
    assert writer.stats.compactions >= 1
    assert len(dt.file_uris()) < 60
    assert (table.path / "_delta_log" / "_last_checkpoint").exists() or dt.version() < 100


async def test_catalog_survives_restart(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.create_table("Main.Sales.Orders", SCHEMA)
    await catalog.writer("main.sales.orders").append(batch("a", 0, 3))
    await catalog.close()
    again = Catalog(tmp_path)
    assert again.names() == ["main.sales.orders"]
    assert again.get("MAIN.sales.orders").schema == SCHEMA


async def test_appends_after_close_are_refused(tmp_path):
    from emulator.errors import WriterClosedError

    catalog = Catalog(tmp_path)
    catalog.create_table("main.s.t", SCHEMA)
    writer = catalog.writer("main.s.t")
    await writer.close()
    with pytest.raises(WriterClosedError):
        await writer.append(batch("a", 0, 1))


def test_catalog_errors(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.create_table("main.s.t", SCHEMA)
    with pytest.raises(TableExistsError, match="table main.s.t already exists"):
        catalog.create_table("main.s.t", SCHEMA)
    assert catalog.create_table("main.s.t", SCHEMA, if_not_exists=True).name == "main.s.t"
    with pytest.raises(TableNotFoundError, match="table main.s.nope does not exist"):
        catalog.get("main.s.nope")
    with pytest.raises(SchemaMismatchError, match="invalid table name"):
        parse_table_name("main.s.t; DROP")
    assert parse_table_name("t", "main", "default") == "main.default.t"
