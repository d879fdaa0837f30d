"""Torn Delta log tails (what a power loss can leave) recovered at start, never deleted."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.process import LocalStackProcess
from emulator.schema import TableSchema
from emulator.table_writer import TableWriterConfig, added_paths, read_commit
from tests.conftest import app_settings, run_sql

SCHEMA = TableSchema.of(("id", "BIGINT", False), ("note", "STRING"))
TABLE = "main.s.t"
VERSIONS = 5  # appends, each of ROWS rows: versions 1..5
ROWS = 200


def ids_of(version: int) -> list[int]:
    return list(range(version * 1_000, version * 1_000 + ROWS))


async def build_table(data_dir: Path, *, checkpoint: bool = False) -> Path:
    """A table whose versions 1..VERSIONS each appended ids_of(version)."""
    catalog = Catalog(data_dir, TableWriterConfig(linger_s=0))
    table = catalog.create_table(TABLE, SCHEMA)
    writer = catalog.writer(TABLE)
    for version in range(1, VERSIONS + 1):
        ids = ids_of(version)
        batch = pa.RecordBatch.from_pydict(
            {"id": ids, "note": [f"v{version}"] * len(ids)}, schema=SCHEMA.to_arrow()
        )
        assert (await writer.append(batch)).version == version
    await catalog.close()
    if checkpoint:
        DeltaTable(str(table.path)).create_checkpoint()
    return table.path


def commit_path(path: Path, version: int) -> Path:
    return path / "_delta_log" / f"{version:020d}.json"


def tear_empty(path: Path) -> None:
    commit_path(path, VERSIONS).write_bytes(b"")


def tear_truncated(path: Path) -> None:
    last = commit_path(path, VERSIONS)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])


def tear_checkpoint(path: Path) -> None:
    log_dir = path / "_delta_log"
    (log_dir / f"{VERSIONS:020d}.checkpoint.parquet").write_bytes(b"\x00garbage" * 64)
    (log_dir / "_last_checkpoint").write_bytes(b'{"version": 5, "si')


def expected_ids(last_version: int) -> list[int]:
    return [i for v in range(1, last_version + 1) for i in ids_of(v)]


def table_ids(path: Path) -> list[int]:
    return sorted(DeltaTable(str(path)).to_pyarrow_table()["id"].to_pylist())


# -- in process: the catalog recovers when it opens the data directory ----------------------


@pytest.mark.parametrize(
    ("tear", "checkpoint", "last_version", "problem", "quarantined"),
    [
        (tear_empty, False, 4, "commit of version 5 is empty", ["00000000000000000005.json"]),
        (
            tear_truncated,
            False,
            4,
            "commit of version 5 is cut short (line 2 is not JSON)",
            ["00000000000000000005.json"],
        ),
        (
            tear_checkpoint,
            True,
            5,
            "checkpoint of version 5 is unreadable: ",
            ["00000000000000000005.checkpoint.parquet", "_last_checkpoint"],
        ),
    ],
    ids=["empty", "truncated", "checkpoint"],
)
async def test_a_torn_tail_is_moved_aside_and_the_table_opens(
    tmp_path, tear, checkpoint, last_version, problem, quarantined
):
    path = await build_table(tmp_path, checkpoint=checkpoint)
    tear(path)
    torn = {name: (path / "_delta_log" / name).read_bytes() for name in quarantined}
    synced: list[Path] = []
    catalog = Catalog(tmp_path, sync=synced.append)
    assert catalog.names() == [TABLE]
    [incident] = catalog.incidents
    assert incident["table"] == TABLE
    assert incident["problems"][0].startswith(problem)
    assert incident["recovered"] is True
    assert incident["recovered_version"] == last_version
    assert incident["removed_versions"] == ([] if last_version == VERSIONS else [VERSIONS])
    quarantine = tmp_path / incident["quarantine"]
    assert incident["quarantine"].startswith("quarantine/")
    # Moved, not deleted: byte for byte in the quarantine, under the table's own path.
    for name in quarantined:
        moved = quarantine / "tables" / "main" / "s" / "t" / "_delta_log" / name
        assert moved.read_bytes() == torn[name]
        assert not (path / "_delta_log" / name).exists()
    assert path / "_delta_log" in synced  # the move is durable before anything reuses it
    assert json.loads((quarantine / "incident.json").read_text()) == incident
    assert table_ids(path) == expected_ids(last_version)
    # The table takes commits again, at the freed version.
    batch = pa.RecordBatch.from_pydict({"id": [7], "note": ["after"]}, schema=SCHEMA.to_arrow())
    assert (await catalog.writer(TABLE).append(batch)).version == last_version + 1
    await catalog.close()
    assert table_ids(path) == sorted([*expected_ids(last_version), 7])
    # A second start finds nothing more to do.
    assert Catalog(tmp_path).incidents == []


async def test_a_commit_whose_data_file_is_missing_is_not_kept(tmp_path):
    path = await build_table(tmp_path)
    [lost] = added_paths(path, read_commit(path, VERSIONS))
    lost.unlink()
    catalog = Catalog(tmp_path)
    [incident] = catalog.incidents
    assert incident["problems"] == [
        f"commit of version 5: its data file {lost.name} is missing",
    ]
    assert incident["recovered_version"] == 4
    assert table_ids(path) == expected_ids(4)


async def test_a_commit_cut_at_a_line_end_is_not_kept(tmp_path):
    # Cut after its commitInfo line: valid JSON, but the commit lost its add action.
    path = await build_table(tmp_path)
    last = commit_path(path, VERSIONS)
    last.write_bytes(last.read_bytes().splitlines(keepends=True)[0])
    [incident] = Catalog(tmp_path).incidents
    assert incident["problems"] == ["commit of version 5 is cut short (0 of 1 add actions)"]
    assert table_ids(path) == expected_ids(4)


async def test_the_commits_after_a_torn_one_go_with_their_data_files(tmp_path):
    path = await build_table(tmp_path)
    [fifth] = added_paths(path, read_commit(path, VERSIONS))
    torn = commit_path(path, VERSIONS - 1)
    torn.write_bytes(torn.read_bytes()[:-40])
    [incident] = Catalog(tmp_path).incidents
    assert incident["removed_versions"] == [4, 5]
    assert incident["recovered_version"] == 3
    moved = tmp_path / incident["quarantine"] / fifth.relative_to(tmp_path)
    assert moved.is_file() and not fifth.exists()
    assert f"tables/main/s/t/{fifth.name}" in incident["quarantined"]
    assert table_ids(path) == expected_ids(3)


def test_a_table_without_a_whole_first_commit_is_moved_aside_whole(tmp_path):
    catalog = Catalog(tmp_path)
    table = catalog.create_table(TABLE, SCHEMA)
    commit_path(table.path, 0).write_bytes(b'{"commitInfo":')
    again = Catalog(tmp_path)
    assert again.names() == []
    [incident] = again.incidents
    assert incident["recovered"] is False
    assert incident["recovered_version"] is None
    assert incident["quarantined"] == ["tables/main/s/t"]
    assert not table.path.exists()
    assert (tmp_path / incident["quarantine"] / "tables" / "main" / "s" / "t").is_dir()
    # The name is free again.
    again.create_table(TABLE, SCHEMA)


async def test_a_table_with_nothing_whole_to_read_from_is_set_aside_whole(tmp_path):
    # A garbage checkpoint, and the commits before it gone (as Delta's log cleanup leaves
    # an old table): nothing to read the table from.
    path = await build_table(tmp_path, checkpoint=True)
    for version in range(VERSIONS):
        commit_path(path, version).unlink()
    tear_checkpoint(path)
    catalog = Catalog(tmp_path)
    assert catalog.names() == []
    [incident] = catalog.incidents
    assert incident["recovered"] is False
    assert incident["problems"][0].startswith("checkpoint of version 5 is unreadable: ")
    assert incident["problems"][1:] == [
        "commit of version 0 is missing",
        "_last_checkpoint is not JSON",
    ]
    assert incident["quarantined"] == ["tables/main/s/t"]
    kept = tmp_path / incident["quarantine"] / "tables" / "main" / "s" / "t"
    assert (kept / "_delta_log" / f"{VERSIONS:020d}.json").exists()
    assert (kept / "_delta_log" / f"{VERSIONS:020d}.checkpoint.parquet").exists()
    assert len(list(kept.glob("*.parquet"))) == VERSIONS  # the data files, all kept
    assert not path.exists()
    catalog.create_table(TABLE, SCHEMA)


def test_a_table_whose_creation_never_committed_is_set_aside(tmp_path):
    # Killed between the table's directory and its first commit.
    (tmp_path / "tables" / "main" / "s" / "t" / "_delta_log").mkdir(parents=True)
    catalog = Catalog(tmp_path)
    assert catalog.names() == []
    [incident] = catalog.incidents
    assert incident["recovered"] is False
    assert incident["problems"][0].startswith("the table does not open (")
    assert "/tmp" not in json.dumps(incident)  # no absolute paths in what is shown
    catalog.create_table(TABLE, SCHEMA)


async def test_a_whole_table_is_left_alone(tmp_path):
    path = await build_table(tmp_path, checkpoint=True)
    before = sorted(p.name for p in (path / "_delta_log").iterdir())
    assert Catalog(tmp_path).incidents == []
    assert sorted(p.name for p in (path / "_delta_log").iterdir()) == before
    assert not (tmp_path / "quarantine").exists()


# -- the real stack: it starts, serves the rows, and says what it did -----------------------


def status(endpoints: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def select_ids(endpoints: dict[str, Any]) -> list[int]:
    resp = run_sql(endpoints, f"SELECT id FROM {TABLE} ORDER BY id")
    return [int(row[0]) for row in resp.result.data_array or []]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tear", "checkpoint", "last_version"),
    [(tear_empty, False, 4), (tear_truncated, False, 4), (tear_checkpoint, True, 5)],
    ids=["empty", "truncated", "checkpoint"],
)
def test_the_stack_starts_on_a_torn_tail_and_serves_the_complete_versions(
    tmp_path, tear, checkpoint, last_version
):
    data_dir = tmp_path / "data"
    path = asyncio.run(build_table(data_dir, checkpoint=checkpoint))
    tear(path)
    # Recovery does not depend on fsync; one variant runs as the durability bench's
    # unsafe comparison does, to see that the flag reaches the writers.
    unsafe = tear is tear_checkpoint
    args = ["--no-postgres", *(["--no-fsync"] if unsafe else [])]
    stack = LocalStackProcess(data_dir, token=secrets.token_urlsafe(16), args=args)
    endpoints = stack.start()
    try:
        assert select_ids(endpoints) == expected_ids(last_version)
        body = status(endpoints)
        [incident] = body["incidents"]
        assert incident["table"] == TABLE and incident["recovered_version"] == last_version
        assert body["fsync"] is (not unsafe)
        if tear is tear_truncated:
            # The app's debug page shows the stack's incidents too.
            from tests.app_server import AppServer

            with AppServer(app_settings(endpoints)) as app, app.client() as http:
                debug = http.get("/debug/stack")
            assert debug.status_code == 200, debug.text
            assert debug.json()["incidents"] == [incident]
            assert str(data_dir.resolve()) not in json.dumps(debug.json())
    finally:
        assert stack.stop() == 0
    log_text = (data_dir / "local-stack.log").read_text()
    assert "table_recovered" in log_text
