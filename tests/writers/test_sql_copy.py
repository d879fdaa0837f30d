"""The COPY INTO writer against the local stack: Parquet staged with the Files API, loaded by
COPY INTO through the Statement Execution API, read back exactly with deltalake."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from dwbench.errors import SchemaNotSupportedError, WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from tests.conftest import local_targets, workspace_client
from tests.writers.test_sql import AT, assert_stored_exactly, new_table, stored
from workloads import products, telemetry
from workloads.base import Rows, TableRef, default_table
from workloads.inputs import build_rows, new_batch_id
from workloads.schema import TableSchema
from writers import WRITERS, writer_metadata
from writers.base import Targets
from writers.sql import SqlSettings
from writers.sql_copy import LOCAL_VOLUME, STAGING_DIRECTORY, SqlCopySettings, SqlCopyWriter


def staging_dir(endpoints: dict[str, Any], volume: str = LOCAL_VOLUME) -> Path:
    return Path(
        endpoints["data_dir"], "volumes", volume.removeprefix("/Volumes/"), "dwbench-staging"
    )


def staged_files(endpoints: dict[str, Any], volume: str = LOCAL_VOLUME) -> list[str]:
    directory = staging_dir(endpoints, volume)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def product_rows(table: TableRef, count: int) -> Rows:
    items = products.sample_items(count, seed=11)
    return build_rows(
        products.WORKLOAD,
        items,
        batch_id=new_batch_id(),
        source="sql-copy",
        processed_at=AT,
        table=table,
    )


def a_volume() -> str:
    return f"/Volumes/main/default/stage_{secrets.token_hex(3)}"


@pytest.fixture
def products_ref(local_stack: dict[str, Any]) -> TableRef:
    return new_table(local_stack, products.SCHEMA, "products", id_column="record_id")


@pytest.fixture
async def writer(local_stack: dict[str, Any]) -> AsyncIterator[SqlCopyWriter]:
    # A volume of its own, so that files other tests leave cannot hide in the checks.
    w = SqlCopyWriter(
        local_targets(local_stack, **{"sql-copy": SqlCopySettings(volume=a_volume())})
    )
    await w.open()
    yield w
    await w.close()


# -- rows land exactly, and the staged files go ------------------------------------------


async def test_products_round_trip_exactly_and_the_staged_file_is_gone(
    local_stack, products_ref, writer
):
    rows = product_rows(products_ref, 25)
    receipt = await writer.write(rows)
    assert receipt.rows == 25
    details = receipt.details
    assert details["statements"] == 1 and len(details["statement_ids"]) == 1
    assert details["compression"] == "zstd" and details["parquet_bytes"] > 0
    assert details["staged_file"].startswith(f"{writer.volume}/{STAGING_DIRECTORY}/")
    assert "staging_warning" not in details
    assert_stored_exactly(local_stack, rows)
    assert staged_files(local_stack, writer.volume) == []
    assert await writer.count_rows(products_ref, rows.batch_id) == 25
    assert await writer.count_rows(products_ref, "no-such-batch") == 0


async def test_telemetry_round_trip_exactly(local_stack, writer):
    table = new_table(local_stack, telemetry.SCHEMA, "telemetry", id_column="event_id")
    fleet = telemetry.FleetRows(
        table, telemetry.Fleet(40, seed=3), clock=lambda: 1_780_000_000_123_457
    )
    first = Rows(table, fleet(0, 300, "batch-one", "sql-copy"), "batch-one")
    second = Rows(table, fleet(1, 200, "batch-two", "sql-copy"), "batch-two")
    assert first.data.column("order_id").null_count > 0
    assert (await writer.write(first)).rows == 300
    assert (await writer.write(second)).rows == 200
    assert_stored_exactly(local_stack, first, second)
    assert staged_files(local_stack, writer.volume) == []
    assert await writer.count_rows(table, "batch-one") == 300


@pytest.mark.parametrize("compression", ["snappy", "none", "gzip", "lz4", "zstd"])
async def test_each_compression_is_used_and_loads_the_same_rows(
    local_stack, products_ref, compression
):
    config = SqlCopySettings(volume=a_volume(), compression=compression)
    writer = SqlCopyWriter(local_targets(local_stack, **{"sql-copy": config}))
    await writer.open()
    try:
        rows = product_rows(products_ref, 8)
        encoded = pq.ParquetFile(io.BytesIO(writer._parquet(rows.data)))
        codec = encoded.metadata.row_group(0).column(0).compression
        assert codec == {"none": "UNCOMPRESSED"}.get(compression, compression.upper())
        assert (await writer.write(rows)).details["compression"] == compression
        assert_stored_exactly(local_stack, rows)
    finally:
        await writer.close()


async def test_empty_write_stages_nothing(local_stack, products_ref, writer):
    receipt = await writer.write(product_rows(products_ref, 0))
    assert receipt.rows == 0 and receipt.details == {"statement_ids": [], "statements": 0}
    assert staged_files(local_stack, writer.volume) == []


# -- failures: clear errors, nothing written, nothing left staged ---------------------------


async def test_wrong_token_is_unavailable_and_writes_nothing(local_stack, products_ref):
    wrong = "not-the-" + local_stack["token"]
    targets = dataclasses.replace(local_targets(local_stack), local_token=SecretStr(wrong))
    writer = SqlCopyWriter(targets)
    await writer.open()
    try:
        availability = await writer.availability()
        assert not availability.available
        assert "rejected the credentials (HTTP 401)" in (availability.reason or "")
        with pytest.raises(WriterUnavailableError) as info:
            await writer.write(product_rows(products_ref, 3))
        assert "rejected the credentials (HTTP 401)" in info.value.message
        assert wrong not in info.value.message and wrong not in repr(availability)
    finally:
        await writer.close()
    assert stored(local_stack, products_ref) == []
    assert staged_files(local_stack) == []


async def test_unknown_table_fails_and_the_staged_file_is_deleted(local_stack, writer):
    table = default_table("products", products.SCHEMA, delta_table="main.default.never_created_abc")
    with pytest.raises(WriteFailedError) as info:
        await writer.write(product_rows(table, 3))
    message = info.value.message
    assert "[TABLE_OR_VIEW_NOT_FOUND]" in message
    assert "`main`.`default`.`never_created_abc`" in message
    assert "could not be deleted" not in message
    assert staged_files(local_stack, writer.volume) == []


async def test_a_table_of_another_schema_fails_and_nothing_is_written(local_stack, writer):
    # The table says price is a STRING; the workload sends DOUBLE.
    ddl = products.SCHEMA.delta_ddl("main.default.x")
    other = TableSchema.from_ddl(ddl.replace("product_price DOUBLE", "product_price STRING"))
    assert other != products.SCHEMA
    created = new_table(local_stack, other, "products_str", id_column="record_id")
    table = dataclasses.replace(created, schema=products.SCHEMA)
    with pytest.raises(WriteFailedError) as info:
        await writer.write(product_rows(table, 4))
    message = info.value.message
    assert "[COPY_INTO_SCHEMA_MISMATCH_WITH_TARGET_TABLE]" in message
    assert "`product_price` is DOUBLE in the file and STRING in the table" in message
    assert stored(local_stack, created) == []
    assert staged_files(local_stack, writer.volume) == []


async def test_a_failed_upload_leaves_the_table_unchanged(local_stack, products_ref, writer):
    first = product_rows(products_ref, 5)
    await writer.write(first)
    path = Path(local_stack["data_dir"], "tables", *products_ref.delta_table.split("."))
    version = DeltaTable(str(path)).version()
    # Another volume, with a file where its staging directory should be: the Files API
    # refuses the upload.
    config = SqlCopySettings(volume=a_volume())
    blocked = SqlCopyWriter(local_targets(local_stack, **{"sql-copy": config}))
    w = workspace_client(local_stack)
    w.files.upload(blocked.staging, io.BytesIO(b"in the way"), overwrite=True)
    await blocked.open()
    try:
        with pytest.raises(WriteFailedError) as info:
            await blocked.write(product_rows(products_ref, 7))
        message = info.value.message
        assert message.startswith(f"staging {blocked.staging}/")
        assert f"{blocked.staging} is a file, not a directory" in message
        assert "could not be deleted" not in message
        assert_stored_exactly(local_stack, first)
        assert DeltaTable(str(path)).version() == version
    finally:
        await blocked.close()
        w.files.delete(blocked.staging)


class FixedNameCopyWriter(SqlCopyWriter):
    """Stages every write under one name, so COPY INTO skips the second as loaded before."""

    def _staged_name(self, rows: Rows) -> str:
        return "always-the-same.parquet"


async def test_a_row_count_other_than_the_batch_is_a_failure(local_stack, products_ref):
    config = SqlCopySettings(volume=a_volume())
    writer = FixedNameCopyWriter(local_targets(local_stack, **{"sql-copy": config}))
    await writer.open()
    try:
        first = product_rows(products_ref, 6)
        assert (await writer.write(first)).rows == 6
        with pytest.raises(WriteFailedError) as info:
            await writer.write(product_rows(products_ref, 6))
        message = info.value.message
        assert message.startswith("COPY INTO (statement ")
        assert (
            f"loaded 0 rows of {writer.staging}/always-the-same.parquet, expected 6; the batch "
            "is not reported as written"
        ) in message
        assert_stored_exactly(local_stack, first)
        assert staged_files(local_stack, writer.volume) == []
    finally:
        await writer.close()


# -- what it refuses, settings and availability --------------------------------------------


def databricks_targets(**config: Any) -> Targets:
    settings = Settings(
        app_mode="databricks",
        databricks_host="https://adb-1.example.com",
        databricks_client_id="sp",
        databricks_client_secret="secret-value",
    )
    return Targets(
        mode="databricks",
        settings=settings,
        workspace_url="https://adb-1.example.com",
        writer_settings={
            # The warehouse is the sql writer's setting, shared by every SQL writer.
            "sql": SqlSettings(warehouse_id=config.pop("warehouse_id", None)),
            "sql-copy": SqlCopySettings(**config),
        },
    )


@pytest.mark.parametrize("mode", ["local", "databricks"])
def test_variant_is_refused_before_anything_is_written(local_stack, mode):
    targets = (
        local_targets(local_stack)
        if mode == "local"
        else databricks_targets(volume="/Volumes/c/s/v")
    )
    schema = TableSchema.from_ddl("id BIGINT, payload VARIANT, batch_id STRING, source STRING")
    table = default_table("doc", schema, delta_table="main.default.docs")
    with pytest.raises(SchemaNotSupportedError, match="column payload holds VARIANT"):
        SqlCopyWriter(targets).check(table)


async def test_databricks_mode_needs_a_volume():
    writer = SqlCopyWriter(databricks_targets(warehouse_id="w1"))
    availability = await writer.availability()
    assert not availability.available
    assert (availability.reason or "").startswith(
        "set SQL_COPY_VOLUME to the Unity Catalog volume to stage Parquet files in"
    )
    with pytest.raises(WriterUnavailableError, match="set SQL_COPY_VOLUME"):
        await writer.open()


async def test_a_volume_that_is_not_a_volume_path_is_refused():
    writer = SqlCopyWriter(databricks_targets(warehouse_id="w1", volume="/Volumes/c/s/v/'; --"))
    availability = await writer.availability()
    assert availability.reason == (
        "SQL_COPY_VOLUME must be a volume path /Volumes/<catalog>/<schema>/<volume> of "
        "letters, digits, '_' and '-', got \"/Volumes/c/s/v/'; --\""
    )


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("SQL_COPY_VOLUME", "/Volumes/cat/sch/vol")
    monkeypatch.setenv("SQL_COPY_COMPRESSION", "snappy")
    monkeypatch.setenv("SQL_COPY_TABLE", "main.bench.copied")
    config = SqlCopySettings()
    assert (config.volume, config.compression, config.table) == (
        "/Volumes/cat/sch/vol",
        "snappy",
        "main.bench.copied",
    )
    monkeypatch.setenv("SQL_COPY_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="compression"):
        SqlCopySettings()


async def test_availability_on_the_local_stack_names_the_volume(local_stack, writer):
    availability = await writer.availability()
    assert availability.available, availability.reason
    details = availability.details
    assert details["volume"] == writer.volume
    assert details["staging"] == f"{writer.volume}/dwbench-staging"
    assert details["compression"] == "zstd"
    assert SqlCopyWriter(local_targets(local_stack)).volume == LOCAL_VOLUME


def test_it_is_registered_and_listed(client):
    assert "sql-copy" in WRITERS
    assert writer_metadata("sql-copy")["label"] == "SQL warehouse (COPY INTO)"
    listed = {w["name"]: w for w in client.get("/api/v1/writers").json()}
    assert listed["sql-copy"]["label"] == "SQL warehouse (COPY INTO)"
    assert listed["sql-copy"]["family"] == "sql"


class DeleteRefusingProxy:
    """The local stack behind a forwarding proxy that refuses Files API deletes (403), as a
    workspace would for a principal allowed to upload but not to delete."""

    def __init__(self, upstream: str) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.upstream = upstream
        self.refused: list[str] = []

        async def forward(request: Request) -> Response:
            if request.method == "DELETE" and request.url.path.startswith("/api/2.0/fs/files"):
                self.refused.append(request.url.path.removeprefix("/api/2.0/fs/files"))
                return JSONResponse(
                    {"error_code": "PERMISSION_DENIED", "message": "no DELETE on this volume"},
                    status_code=403,
                )
            async with httpx.AsyncClient(base_url=self.upstream, timeout=60) as http:
                answer = await http.request(
                    request.method,
                    request.url.path,
                    params=request.query_params,
                    content=await request.body(),
                    headers={k: v for k, v in request.headers.items() if k != "host"},
                )
            headers = {
                k: v
                for k, v in answer.headers.items()
                if k not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return Response(answer.content, status_code=answer.status_code, headers=headers)

        methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
        app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
        self.server = AppServerLike(app)


class AppServerLike:
    """An ASGI app under uvicorn on a loopback socket, in a thread of its own."""

    def __init__(self, app: Any) -> None:
        import socket
        import threading

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])), daemon=True
        )

    def __enter__(self) -> str:
        import time

        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


async def test_a_failed_delete_is_a_warning_in_the_receipt(local_stack, products_ref):
    proxy = DeleteRefusingProxy(local_stack["api_url"])
    with proxy.server as url:
        config = SqlCopySettings(volume=a_volume())
        targets = dataclasses.replace(
            local_targets(local_stack, **{"sql-copy": config}), workspace_url=url
        )
        writer = SqlCopyWriter(targets)
        await writer.open()
        try:
            rows = product_rows(products_ref, 4)
            receipt = await writer.write(rows)
        finally:
            await writer.close()
    assert receipt.rows == 4
    staged = receipt.details["staged_file"]
    assert proxy.refused == [staged]
    warning = receipt.details["staging_warning"]
    assert warning.startswith(f"the staged file {staged} could not be deleted (Files API): ")
    assert "no DELETE on this volume" in warning
    assert_stored_exactly(local_stack, rows)
    # The file is still there, and the receipt says so.
    assert staged_files(local_stack, writer.volume) == [staged.rsplit("/", 1)[1]]
