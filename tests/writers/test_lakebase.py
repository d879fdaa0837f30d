"""The Lakebase writer against the local stack's embedded PostgreSQL: real sockets, real auth.

Rows are read back with psycopg's binary loaders, so floats come back bit for bit (the
text form of a real is rounded), timestamps to the microsecond and jsonb as JSON values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from dwbench.errors import SchemaNotSupportedError, WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from emulator.postgres import superuser_conninfo
from tests.conftest import local_targets
from workloads import products, telemetry
from workloads.base import Rows, TableRef, default_table
from workloads.inputs import build_rows, new_batch_id
from workloads.schema import TableSchema
from writers.base import Targets
from writers.lakebase import (
    POOL_MAX_SIZE,
    DatabaseCredentialProvider,
    LakebaseSettings,
    LakebaseWriter,
    parse_table,
)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
UTC = dt.UTC


@pytest.fixture
def admin(local_stack: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    """The stack's superuser (over its private socket; the writer role is no superuser),
    for setting up roles and reading back."""
    conninfo = superuser_conninfo(Path(local_stack["data_dir"]) / "postgres")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A fresh Postgres table name, dropped afterwards."""
    name = f"public.lakebase_{secrets.token_hex(4)}"
    yield name
    admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*name.split("."))))


async def open_writer(targets: Targets, **kwargs: Any) -> LakebaseWriter:
    writer = LakebaseWriter(targets, **kwargs)
    await writer.open()
    return writer


@pytest.fixture(params=["copy", "insert"])
async def writer(local_stack: dict[str, Any], request: Any) -> AsyncIterator[Any]:
    writer = await open_writer(
        local_targets(local_stack, lakebase=LakebaseSettings(write_mode=request.param))
    )
    yield writer
    await writer.close()


def products_in(name: str) -> TableRef:
    return products.TABLE.with_tables(postgres_table=name)


def product_rows(ref: TableRef, count: int, *, seed: int = 0, **kwargs: Any) -> Rows:
    items = products.sample_items(count, seed=seed, **kwargs)
    return build_rows(
        products.WORKLOAD, items, batch_id=new_batch_id(), source="lakebase", table=ref
    )


def read_back(admin: psycopg.Connection[Any], ref: TableRef, batch_id: str) -> list[dict[str, Any]]:
    """The batch's rows as stored, by id, through binary loaders (exact values)."""
    assert ref.batch_column and ref.id_column
    query = sql.SQL("SELECT {} FROM {} WHERE {} = %s ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c.name) for c in ref.schema.columns),
        sql.Identifier(*ref.postgres_table.split(".")),
        sql.Identifier(ref.batch_column),
        sql.Identifier(ref.id_column),
    )
    with admin.cursor(binary=True, row_factory=dict_row) as cur:
        return cur.execute(query, [batch_id]).fetchall()


def expected(rows: Rows) -> list[dict[str, Any]]:
    assert rows.table.id_column
    return sorted(rows.data.to_pylist(), key=lambda row: row[rows.table.id_column])


def columns_of(admin: psycopg.Connection[Any], name: str) -> list[tuple[str, str, bool]]:
    """(name, type, NOT NULL) of a table's columns, in order, from the catalog."""
    return admin.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [name],
    ).fetchall()


def type_name(admin: psycopg.Connection[Any], name: str) -> str:
    """A type as the catalog shows it (timestamptz: timestamp with time zone)."""
    row = admin.execute("SELECT format_type(to_regtype(%s), NULL)", [name]).fetchone()
    assert row is not None and row[0] is not None, name
    return str(row[0])


def indexes_of(admin: psycopg.Connection[Any], name: str) -> list[tuple[bool, bool, list[str]]]:
    """(primary, unique, columns) of a table's indexes."""
    rows = admin.execute(
        "SELECT i.indisprimary, i.indisunique, array_agg(a.attname ORDER BY k.n) "
        "FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s::regclass GROUP BY i.indexrelid, i.indisprimary, i.indisunique",
        [name],
    ).fetchall()
    return sorted(rows)


# -- tables ---------------------------------------------------------------------------------


async def test_prepare_creates_the_table_from_the_schema_and_is_available(writer, admin, table):
    ref = products_in(table)
    await writer.prepare(ref)
    assert columns_of(admin, table) == [
        (c.name, type_name(admin, c.type.postgres()), not c.nullable)
        for c in products.SCHEMA.columns
    ]
    assert columns_of(admin, table)[7] == ("processed_at", "timestamp with time zone", False)
    assert indexes_of(admin, table) == [(False, False, ["batch_id"]), (True, True, ["record_id"])]
    state = await writer.availability()
    assert state.available, state.reason
    assert state.details["table"] == "public.products"  # LAKEBASE_TABLE, the default
    assert state.details["tables"] == [table]
    assert state.details["auth"] == "password (local)"
    assert state.details["write_mode"] == writer.write_mode
    password = conninfo_to_dict(writer.targets.postgres_dsn.get_secret_value())["password"]
    assert password not in repr(state)
    await writer.prepare(ref)  # once per table: nothing to do
    again = await open_writer(writer.targets)
    await again.prepare(ref)  # the table exists: checked, not created
    await again.close()
    await again.close()  # twice is fine


async def test_the_derived_products_ddl_is_sql_products_postgres_sql(local_stack, admin, table):
    """The file is for setting Lakebase up by hand; the writer derives the same table."""
    writer = await open_writer(local_targets(local_stack))
    try:
        await writer.prepare(products_in(table))
    finally:
        await writer.close()
    scratch = f"scratch_{secrets.token_hex(4)}"
    text = (SQL_DIR / "products_postgres.sql").read_text()
    assert text.count("public.products") == 2  # the table, and the index's table
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
    try:
        admin.execute(text.replace("public.products", f"{scratch}.products").encode())
        from_file = f"{scratch}.products"
        assert columns_of(admin, from_file) == columns_of(admin, table)
        assert indexes_of(admin, from_file) == indexes_of(admin, table)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(scratch)))


async def test_a_table_the_writer_cannot_create_is_used_as_it_is(local_stack, admin, login_role):
    """Without CREATE on the schema, an existing table that fits is written into."""
    name = f"public.granted_{secrets.token_hex(4)}"
    ident = sql.Identifier(*name.split("."))
    admin.execute(products.SCHEMA.postgres_ddl(name, primary_key="record_id").encode())
    admin.execute(
        sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(ident, sql.Identifier(login_role))
    )
    try:
        writer, _ = await open_role_writer(local_stack, admin, login_role)
        try:
            ref = products_in(name)
            rows = product_rows(ref, 30, seed=2)
            assert (await writer.write(rows)).rows == 30  # prepared lazily, without DDL
            assert read_back(admin, ref, rows.batch_id) == expected(rows)
            # And a missing table in the same schema cannot be created: the server says so.
            with pytest.raises(WriteFailedError, match="42501.*permission denied"):
                await writer.prepare(products_in(f"public.missing_{secrets.token_hex(4)}"))
        finally:
            await writer.close()
    finally:
        admin.execute(sql.SQL("DROP TABLE {}").format(ident))


async def test_an_existing_table_that_does_not_fit_is_refused(writer, admin, table):
    # Binary COPY would put a double's eight bytes into product_price whatever its type.
    ddl = products.SCHEMA.postgres_ddl(table).replace('"product_price" double precision', "x int")
    admin.execute(ddl.replace('"description" text', '"description" varchar(10)').encode())
    admin.execute(
        sql.SQL("ALTER TABLE {} ALTER processed_at TYPE timestamp").format(
            sql.Identifier(*table.split("."))
        )
    )
    ref = products_in(table)
    message = (
        f"{table} exists but does not fit workload products: product_price is missing; "
        "processed_at is timestamp without time zone, not timestamptz. Nothing was written"
    )
    with pytest.raises(WriteFailedError) as caught:
        await writer.prepare(ref)
    assert caught.value.message == message
    with pytest.raises(WriteFailedError) as caught:
        await writer.write(product_rows(ref, 3))
    assert caught.value.message == message


async def test_concurrent_first_writes_create_the_table_once(writer, admin, table):
    ref = products_in(table)
    batches = [product_rows(ref, 20, seed=i) for i in range(6)]
    receipts = await asyncio.gather(*(writer.write(rows) for rows in batches))
    assert [r.rows for r in receipts] == [20] * 6
    assert [await writer.count_rows(ref, rows.batch_id) for rows in batches] == [20] * 6


async def test_writers_of_several_clients_create_a_fresh_table_once(local_stack, admin, table):
    # Each writer has its own pool, as each client of a run does in its own process: their
    # CREATE TABLEs meet in the server, where IF NOT EXISTS alone lets all but one fail.
    ref = products_in(table)
    writers = [await open_writer(local_targets(local_stack)) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(*(w.prepare(ref) for w in writers), return_exceptions=True)
        assert outcomes == [None] * 4
        batches = [product_rows(ref, 10, seed=i) for i in range(4)]
        receipts = await asyncio.gather(
            *(w.write(b) for w, b in zip(writers, batches, strict=True))
        )
        assert [r.rows for r in receipts] == [10] * 4
    finally:
        for w in writers:
            await w.close()
    (count,) = admin.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[misc]
    assert count == 40
    assert len(indexes_of(admin, table)) == 2  # the primary key and the batch index, once


async def test_table_and_column_names_are_checked(writer):
    assert parse_table("Public.Products") == ("public", "products")
    for bad in ("products", "a.b.c", "public.products; drop table x", 'public."x"', "1a.b"):
        with pytest.raises(SchemaNotSupportedError, match="schema.table"):
            parse_table(bad)
    with pytest.raises(SchemaNotSupportedError, match="schema.table"):
        writer.check(products_in("public.x-y"))
    with pytest.raises(SchemaNotSupportedError, match="schema.table"):
        await writer.write(product_rows(products_in("public.x-y"), 1))
    for name in ('say "hi"', "x" * 64):
        schema = TableSchema.from_columns([{"name": name, "type": "INT"}])
        with pytest.raises(SchemaNotSupportedError, match="cannot be a Postgres column name"):
            writer.check(default_table("odd", schema))
    writer.check(products.TABLE)
    writer.check(telemetry.TABLE)


async def test_counting_needs_a_batch_column(writer):
    schema = TableSchema.from_ddl("id BIGINT, value STRING")
    with pytest.raises(NotImplementedError, match="no batch column"):
        await writer.count_rows(default_table("plain", schema), "some-batch")


# -- values ---------------------------------------------------------------------------------


def tricky_products(ref: TableRef, batch_id: str) -> Rows:
    """Values that break naive encodings: quotes, escapes, unicode, NULLs, odd time zones."""
    at = dt.datetime(2026, 3, 29, 1, 59, 59, 999_995, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
    texts = [
        "O'Brien's \"best\" watch",
        "tab\there, newline\nthere, backslash \\ and \\N",
        "ünïcödé — 日本語 — 🚀 — e\u0301",
        ",;|\r\n",
        "",
    ]
    rows = [
        {
            "record_id": f"{batch_id}-{i:06d}",
            "product_id": f"P{i}",
            "product_name": text or "x",
            "product_price": [0.0, 0.1, 1e12, 123.456789012345, 2.5e-300][i],
            "category": text or "other",
            "sale_start_date": None if i == 2 else dt.date(1970 + 20 * i, 1, 1),
            "sale_stop_date": None if i == 2 else [dt.date(9999, 12, 31), dt.date(1, 1, 1)][i % 2],
            "processed_at": None if i == 3 else at + dt.timedelta(microseconds=i),
            "batch_id": batch_id,
            "source": "lakebase",
            "description": None if i % 2 else text * 3,
        }
        for i, text in enumerate(texts)
    ]
    return Rows(ref, pa.RecordBatch.from_pylist(rows, schema=products.SCHEMA.arrow()), batch_id)


async def test_products_land_with_exact_values(writer, admin, table):
    ref = products_in(table)
    rows = tricky_products(ref, new_batch_id())
    receipt = await writer.write(rows)
    assert receipt.rows == 5
    if writer.write_mode == "copy":
        assert receipt.details == {"mode": "copy", "rows_copied": 5, "transaction": "committed"}
    else:
        assert receipt.details == {"mode": "insert", "rows_inserted": 5, "transaction": "committed"}
    stored = read_back(admin, ref, rows.batch_id)
    assert stored == expected(rows)
    at = stored[4]["processed_at"]
    assert at.tzinfo is not None and at.microsecond == 999_999
    assert at.astimezone(UTC) == dt.datetime(2026, 3, 28, 20, 29, 59, 999_999, tzinfo=UTC)
    assert stored[1]["product_price"] == 0.1 and stored[4]["product_price"] == 2.5e-300
    assert stored[3]["processed_at"] is None and stored[2]["sale_start_date"] is None
    assert await writer.count_rows(ref, rows.batch_id) == 5


async def test_a_large_products_batch_in_one_transaction(writer, admin, table):
    ref = products_in(table)
    rows = product_rows(ref, 2_000, seed=3, description_bytes=100)
    assert (await writer.write(rows)).rows == 2_000
    assert await writer.count_rows(ref, rows.batch_id) == 2_000
    assert read_back(admin, ref, rows.batch_id) == expected(rows)
    empty = build_rows(products.WORKLOAD, [], batch_id=new_batch_id(), source="t", table=ref)
    assert (await writer.write(empty)).rows == 0


async def test_telemetry_lands_with_exact_values(writer, admin, table):
    ref = telemetry.TABLE.with_tables(postgres_table=table)
    batch_id = new_batch_id()
    data = telemetry.WORKLOAD.batches(seed=4, drivers=50)(0, 500, batch_id, "lakebase")
    rows = Rows(ref, data, batch_id)
    assert (await writer.write(rows)).rows == 500
    stored = read_back(admin, ref, batch_id)
    assert stored == expected(rows)
    assert any(row["order_id"] is None for row in stored)  # nullable columns left null
    assert {type(row["speed_mps"]) for row in stored} == {float}  # real, read back exactly
    assert columns_of(admin, table)[10] == ("battery_pct", "smallint", False)


EVERY_TYPE = """
CREATE TABLE main.default.every_type (
  id BIGINT NOT NULL,
  tiny TINYINT,
  small SMALLINT,
  whole INT,
  ratio FLOAT,
  flag BOOLEAN,
  blob BINARY,
  day DATE,
  local_at TIMESTAMP_NTZ,
  price DECIMAL(10,2),
  tags ARRAY<STRING>,
  counts MAP<STRING, INT>,
  detail STRUCT<name: STRING NOT NULL, items: ARRAY<STRUCT<sku: STRING, qty: INT,
    weight: DOUBLE, due: DATE, unit_price: DECIMAL(6,3), raw: BINARY>>>,
  doc VARIANT,
  batch_id STRING
) USING DELTA
"""


def every_type_rows(ref: TableRef, batch_id: str) -> Rows:
    full = {
        "id": 1,
        "tiny": -128,
        "small": 32_767,
        "whole": -2_147_483_648,
        "ratio": 0.1,  # a float32: 0.100000001490116...
        "flag": True,
        "blob": b"\x00\xffbytes\x00",
        "day": dt.date(2024, 2, 29),
        "local_at": dt.datetime(1999, 12, 31, 23, 59, 59, 123_457),
        "price": decimal.Decimal("-12345678.90"),
        "tags": ["a", None, "", "ünï"],
        "counts": [("one", 1), ("none", None)],
        "detail": {
            "name": "order",
            "items": [
                {
                    "sku": "X-1",
                    "qty": 3,
                    "weight": 0.1,
                    "due": dt.date(2026, 1, 2),
                    "unit_price": decimal.Decimal("1.250"),
                    "raw": b"\x01\x02",
                },
                {"sku": None, "qty": None, "weight": None, "due": None, "unit_price": None},
            ],
        },
        "doc": '{"nested": {"list": [1, 2.5, "three", null]}, "flag": false}',
        "batch_id": batch_id,
    }
    nulls = {"id": 2, "batch_id": batch_id, "detail": {"name": "empty", "items": []}}
    schema = ref.schema.arrow()
    return Rows(ref, pa.RecordBatch.from_pylist([full, nulls], schema=schema), batch_id)


async def test_every_type_through_a_table_derived_from_ddl(writer, admin, table):
    schema = TableSchema.from_ddl(EVERY_TYPE)
    ref = default_table("every_type", schema, postgres_table=table, id_column="id")
    rows = every_type_rows(ref, new_batch_id())
    assert (await writer.write(rows)).rows == 2
    assert [(name, kind) for name, kind, _ in columns_of(admin, table)] == [
        ("id", "bigint"),
        ("tiny", "smallint"),
        ("small", "smallint"),
        ("whole", "integer"),
        ("ratio", "real"),
        ("flag", "boolean"),
        ("blob", "bytea"),
        ("day", "date"),
        ("local_at", "timestamp without time zone"),
        ("price", "numeric(10,2)"),
        ("tags", "jsonb"),
        ("counts", "jsonb"),
        ("detail", "jsonb"),
        ("doc", "jsonb"),
        ("batch_id", "text"),
    ]
    full, nulls = read_back(admin, ref, rows.batch_id)
    assert full == {
        "id": 1,
        "tiny": -128,
        "small": 32_767,
        "whole": -2_147_483_648,
        "ratio": float(pa.scalar(0.1, pa.float32()).as_py()),
        "flag": True,
        "blob": b"\x00\xffbytes\x00",
        "day": dt.date(2024, 2, 29),
        "local_at": dt.datetime(1999, 12, 31, 23, 59, 59, 123_457),
        "price": decimal.Decimal("-12345678.90"),
        "tags": ["a", None, "", "ünï"],
        "counts": {"one": 1, "none": None},
        "detail": {
            "name": "order",
            "items": [
                {
                    "sku": "X-1",
                    "qty": 3,
                    "weight": 0.1,
                    "due": "2026-01-02",
                    "unit_price": "1.250",
                    "raw": "AQI=",
                },
                {
                    "sku": None,
                    "qty": None,
                    "weight": None,
                    "due": None,
                    "unit_price": None,
                    "raw": None,
                },
            ],
        },
        "doc": {"nested": {"list": [1, 2.5, "three", None]}, "flag": False},
        "batch_id": rows.batch_id,
    }
    assert full["ratio"] != 0.1 and str(full["price"]) == "-12345678.90"
    assert nulls == {
        **{c.name: None for c in schema.columns},
        "id": 2,
        "detail": {"name": "empty", "items": []},
        "batch_id": rows.batch_id,
    }
    # Null jsonb columns are SQL NULL, not JSON null.
    count = admin.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE tags IS NULL AND doc IS NULL").format(
            sql.Identifier(*table.split("."))
        )
    ).fetchone()
    assert count == (1,)


# -- failures -------------------------------------------------------------------------------


def with_value(rows: Rows, column: str, index: int, value: Any) -> Rows:
    """The rows with one value replaced."""
    data = rows.data
    position = data.schema.get_field_index(column)
    values = data.column(column).to_pylist()
    values[index] = value
    array = pa.array(values, type=data.schema.field(column).type)
    return Rows(
        rows.table, data.set_column(position, data.schema.field(column), array), rows.batch_id
    )


async def test_text_with_a_nul_fails_clearly_and_nothing_is_written(writer, admin, table):
    ref = products_in(table)
    rows = with_value(product_rows(ref, 10, seed=6), "product_name", 9, "nul\x00byte")
    with pytest.raises(WriteFailedError) as caught:
        await writer.write(rows)
    assert caught.value.message == (
        "column product_name, row 9, holds a NUL character, which Postgres cannot store in "
        f"text or jsonb; nothing of the batch was written into {table}"
    )
    assert await writer.count_rows(ref, rows.batch_id) == 0
    # Nested text too, wherever it sits.
    schema = TableSchema.from_ddl(EVERY_TYPE)
    nested_table = table + "_nested"
    nested = default_table("every_type", schema, postgres_table=nested_table, id_column="id")
    good = every_type_rows(nested, new_batch_id())
    try:
        for column, value, where in [
            ("tags", ["ok", "a\x00b"], "column tags[]"),
            ("counts", [("k\x00", 1)], "column counts (a key)"),
            ("detail", {"name": "n", "items": [{"sku": "\x00"}]}, "column detail.items[].sku"),
            ("doc", '{"a": "\x00"}', "column doc, row 1,"),
        ]:
            with pytest.raises(WriteFailedError, match=re.escape(f"{where} holds a NUL")):
                await writer.write(with_value(good, column, 1, value))
        assert await writer.count_rows(nested, good.batch_id) == 0
        # A slice that leaves the NUL out is fine.
        bad = with_value(good, "tags", 1, ["a\x00b"])
        sliced = Rows(nested, bad.data.slice(0, 1), good.batch_id)
        assert (await writer.write(sliced)).rows == 1
    finally:
        admin.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*nested_table.split(".")))
        )


async def test_a_duplicate_record_id_fails_the_whole_batch(writer, table):
    ref = products_in(table)
    rows = product_rows(ref, 300, seed=5)
    duplicated = Rows(ref, pa.concat_batches([rows.data, rows.data.slice(150, 1)]), rows.batch_id)
    with pytest.raises(WriteFailedError) as caught:
        await writer.write(duplicated)
    message = caught.value.message
    assert "23505" in message and "UniqueViolation" in message and "record_id" in message
    assert f"into {table}" in message and "no rows of the batch were written" in message
    assert await writer.count_rows(ref, rows.batch_id) == 0
    # The connection went back to the pool healthy; the same rows without the duplicate land.
    assert (await writer.write(rows)).rows == 300
    # Writing a committed batch again is refused and changes nothing.
    with pytest.raises(WriteFailedError, match="23505"):
        await writer.write(rows)
    assert await writer.count_rows(ref, rows.batch_id) == 300


async def test_a_value_postgres_refuses_fails_the_whole_batch(writer, table):
    schema = TableSchema.from_ddl(EVERY_TYPE)
    ref = default_table("every_type", schema, postgres_table=table, id_column="id")
    rows = with_value(every_type_rows(ref, new_batch_id()), "doc", 1, '{"not": json}')
    with pytest.raises(WriteFailedError) as caught:
        await writer.write(rows)
    message = caught.value.message
    assert "22P02" in message and "json" in message
    assert "no rows of the batch were written" in message
    assert await writer.count_rows(ref, rows.batch_id) == 0


async def test_a_batch_without_a_column_of_its_table_is_refused(writer, table):
    ref = products_in(table)
    rows = product_rows(ref, 3)
    short = Rows(ref, rows.data.drop_columns(["category"]), rows.batch_id)
    with pytest.raises(WriteFailedError, match="cannot convert the batch.*nothing was written"):
        await writer.write(short)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_server_is_unavailable_and_says_why(local_stack):
    password = "very-secret-" + secrets.token_hex(8)
    port = closed_port()
    dsn = f"postgresql://dwbench:{password}@127.0.0.1:{port}/dwbench"
    writer = LakebaseWriter(local_targets({**local_stack, "postgres_dsn": dsn}))
    with pytest.raises(WriterUnavailableError) as caught:
        await writer.open()
    message = caught.value.message
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert password not in message
    state = await writer.availability()
    assert not state.available and state.reason == message
    assert state.details["port"] == port and password not in repr(state)
    with pytest.raises(WriterUnavailableError, match="not open"):
        await writer.write(product_rows(products.TABLE, 3))
    with pytest.raises(WriterUnavailableError, match="not open"):
        await writer.prepare(products.TABLE)
    await writer.close()


async def test_databricks_mode_says_what_is_missing():
    targets = Targets(
        mode="databricks",
        settings=Settings(app_mode="databricks"),
        writer_settings={"lakebase": LakebaseSettings(host="instance.database.example.com")},
    )
    writer = LakebaseWriter(targets)
    with pytest.raises(WriterUnavailableError) as caught:
        await writer.open()
    message = caught.value.message
    assert message == "PGDATABASE, PGUSER, LAKEBASE_INSTANCE_NAME not set"


async def test_databricks_mode_without_workspace_credentials_says_why():
    problem = "no Databricks credentials: set DATABRICKS_HOST and DATABRICKS_TOKEN"
    lakebase = LakebaseSettings(
        host="instance.database.example.com",
        database="databricks_postgres",
        user="someone@example.com",
        instance_name="my-instance",
    )
    targets = Targets(
        mode="databricks",
        settings=Settings(app_mode="databricks"),
        auth_problem=problem,
        writer_settings={"lakebase": lakebase},
    )
    with pytest.raises(WriterUnavailableError) as caught:
        await LakebaseWriter(targets).open()
    assert caught.value.message == problem


async def test_databricks_mode_insists_on_tls_and_asks_the_provider(local_stack):
    pg = conninfo_to_dict(local_stack["postgres_dsn"])
    settings = Settings(
        app_mode="databricks",
        databricks_host="https://workspace.example.invalid",
        databricks_client_id="app-sp",
        databricks_client_secret="sp-secret",
    )
    lakebase = LakebaseSettings(
        host=pg["host"],
        port=int(pg["port"]),
        database=pg["dbname"],
        user=pg["user"],
        sslmode="disable",  # Lakebase needs TLS whatever the variable says
        instance_name="my-instance",
    )
    provider = RotatingPassword("oauth-token-" + secrets.token_hex(8))
    writer = LakebaseWriter(
        Targets(mode="databricks", settings=settings, writer_settings={"lakebase": lakebase}),
        password_provider=provider,
    )
    with pytest.raises(WriterUnavailableError, match="SSL") as caught:  # the local server has none
        await writer.open()
    assert provider.served == [provider.current]
    assert provider.current not in caught.value.message
    state = await writer.availability()
    assert not state.available
    assert state.details["sslmode"] == "require"
    assert state.details["auth"] == (
        "oauth token via generate_database_credential (instance my-instance)"
    )


# -- token rotation ---------------------------------------------------------------------------


class RotatingPassword:
    """A password provider whose value the test changes, as Lakebase's tokens change."""

    def __init__(self, password: str) -> None:
        self.current = password
        self.served: list[str] = []

    async def __call__(self) -> str:
        self.served.append(self.current)
        return self.current


def set_password(admin: psycopg.Connection[Any], role: str, password: str) -> None:
    verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    admin.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(verifier.decode())
        )
    )


@pytest.fixture
def login_role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A role of its own with a schema of its own, so the stack's password stays untouched."""
    role = f"dwb_rotation_{secrets.token_hex(4)}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin.execute(
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(role), sql.Identifier(role)
        )
    )
    yield role
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
    )
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def role_dsn(local_stack: dict[str, Any], role: str, password: str) -> str:
    params = conninfo_to_dict(local_stack["postgres_dsn"])
    return make_conninfo(**{**params, "user": role, "password": password})


def backend_starts(admin: psycopg.Connection[Any], role: str) -> list[dt.datetime]:
    rows = admin.execute(
        "SELECT backend_start FROM pg_stat_activity WHERE usename = %s", [role]
    ).fetchall()
    return [row[0] for row in rows]


async def test_new_pooled_connections_use_the_rotated_password(local_stack, admin, login_role):
    role = login_role
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    set_password(admin, role, old)
    provider = RotatingPassword(old)
    # The DSN carries no usable password: every connection asks the provider.
    targets = local_targets({**local_stack, "postgres_dsn": role_dsn(local_stack, role, "unused")})
    ref = products_in(f"{role}.products")
    writer = await open_writer(targets, password_provider=provider, max_lifetime_s=0.5)
    try:
        batches = [product_rows(ref, 50, seed=i) for i in range(4)]
        await writer.write(batches[0])
        assert set(provider.served) == {old}

        set_password(admin, role, new)
        provider.current = new
        rotated_at = admin.execute("SELECT now()").fetchone()[0]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(role_dsn(local_stack, role, old), connect_timeout=5).close()

        # Pooled connections outlive their max_lifetime only until they are returned: the
        # next writes retire them, and their replacements log in with the new password.
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + 10
        for rows in batches[1:]:
            assert (await writer.write(rows)).rows == 50
        while True:
            starts = backend_starts(admin, role)
            if starts and all(start > rotated_at for start in starts):
                break
            assert time.monotonic() < deadline, f"old connections remain: {starts}"
            await writer.count_rows(ref, new_batch_id())  # takes and returns a connection
            await asyncio.sleep(0.05)
        assert new in provider.served
        assert provider.served[provider.served.index(new) :] == [new] * (
            len(provider.served) - provider.served.index(new)
        )
        assert (await writer.availability()).available
        for rows in batches:
            assert await writer.count_rows(ref, rows.batch_id) == 50
    finally:
        await writer.close()

    # A writer still holding the old password is refused, and says why without showing it.
    stale = LakebaseWriter(targets, password_provider=RotatingPassword(old))
    with pytest.raises(WriterUnavailableError, match="password authentication failed") as caught:
        await stale.open()
    assert old not in caught.value.message and new not in caught.value.message


async def open_role_writer(
    local_stack: dict[str, Any],
    admin: psycopg.Connection[Any],
    role: str,
    *,
    pool_max_size: int = POOL_MAX_SIZE,
    lakebase: LakebaseSettings | None = None,
) -> tuple[LakebaseWriter, str]:
    """A writer logging in as `role` with a fresh password."""
    password = secrets.token_urlsafe(16)
    set_password(admin, role, password)
    endpoints = {**local_stack, "postgres_dsn": role_dsn(local_stack, role, password)}
    targets = local_targets(endpoints, lakebase=lakebase or LakebaseSettings())
    return await open_writer(targets, pool_max_size=pool_max_size), password


async def test_a_pooled_connection_the_server_ended_is_replaced_before_the_write(
    local_stack, admin, login_role
):
    """The server ends the writer's idle sessions (57P01, as a restart does): the pool's
    check sees it and connects anew, so the next write does not fail."""
    role = login_role
    ref = products_in(f"{role}.products")
    writer, _ = await open_role_writer(local_stack, admin, role)
    try:
        first, second = product_rows(ref, 20, seed=1), product_rows(ref, 20, seed=2)
        await writer.write(first)
        ended = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", [role]
        ).fetchall()
        assert ended, "the writer holds no pooled connection"
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        for _ in range(100):  # until the backends have exited (their FATAL sent)
            pids = {r[0] for r in ended}
            if not any(psutil.pid_exists(p) for p in pids):
                break
            await asyncio.sleep(0.05)
        assert (await writer.write(second)).rows == 20
        assert (await writer.availability()).available
        assert await writer.count_rows(ref, first.batch_id) == 20
        assert await writer.count_rows(ref, second.batch_id) == 20
    finally:
        await writer.close()


async def test_a_connection_lost_mid_write_fails_the_write_then_the_pool_recovers(
    local_stack, admin, login_role
):
    role = login_role
    ref = products_in(f"{role}.products")
    writer, password = await open_role_writer(local_stack, admin, role, pool_max_size=1)
    try:
        first, second = product_rows(ref, 20, seed=1), product_rows(ref, 20, seed=2)
        await writer.write(first)
        # Its one connection, in use by a write, ended by the server mid-transaction.
        (backend,) = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", [role]
        ).fetchone() or (None,)
        assert backend is not None
        os.kill(backend, signal.SIGSTOP)
        write = asyncio.create_task(writer.write(second))
        await asyncio.sleep(0.3)
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        os.kill(backend, signal.SIGCONT)
        with pytest.raises(WriterUnavailableError, match="did not commit") as caught:
            await write
        assert password not in caught.value.message
        assert (await writer.availability()).available
        assert (await writer.write(second)).rows == 20
        assert await writer.count_rows(ref, first.batch_id) == 20
        assert await writer.count_rows(ref, second.batch_id) == 20
    finally:
        await writer.close()


async def test_a_server_that_stops_answering_fails_the_write_in_bounded_time(
    local_stack, admin, login_role
):
    role = login_role
    ref = products_in(f"{role}.products")
    writer, _ = await open_role_writer(
        local_stack, admin, role, pool_max_size=1, lakebase=LakebaseSettings(write_timeout_s=1.0)
    )
    frozen: list[int] = []
    try:
        first, second, third = (product_rows(ref, n, seed=n) for n in (20, 20, 7))
        await writer.write(first)
        # Freeze this writer's server process (its one pooled connection), mid-session.
        frozen = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s", [role]
            ).fetchall()
        ]
        assert len(frozen) == 1
        os.kill(frozen[0], signal.SIGSTOP)
        with pytest.raises(WriteFailedError) as caught:
            await writer.write(second)
        server = conninfo_to_dict(local_stack["postgres_dsn"])
        assert caught.value.message == (
            f"copy: no answer from {server['host']}:{server['port']} within 1 s; "
            "the transaction was cancelled and did not commit"
        )
        os.kill(frozen.pop(), signal.SIGCONT)

        assert (await writer.write(third)).rows == 7
        assert await writer.count_rows(ref, first.batch_id) == 20
        assert await writer.count_rows(ref, second.batch_id) == 0
        assert await writer.count_rows(ref, third.batch_id) == 7
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        await writer.close()


# -- the Databricks credential provider, with an in-repo stand-in for the SDK client ----------


class FakeDatabaseAPI:
    """What the provider uses of `WorkspaceClient.database`, answering like the service."""

    def __init__(self, clock: list[float], lifetime_s: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.calls: list[dict[str, Any]] = []

    def generate_database_credential(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        expires = dt.datetime.fromtimestamp(self.clock[0] + self.lifetime_s, dt.UTC)
        return SimpleNamespace(
            token=f"token-{len(self.calls)}",
            expiration_time=expires.isoformat().replace("+00:00", "Z"),
        )


async def test_credentials_are_reused_briefly_and_never_past_expiry():
    now = [1_000_000.0]
    api = FakeDatabaseAPI(now)
    provider = DatabaseCredentialProvider(
        SimpleNamespace(database=api), "my-instance", reuse_s=300, clock=lambda: now[0]
    )
    assert await asyncio.gather(provider(), provider(), provider()) == ["token-1"] * 3
    assert len(api.calls) == 1
    assert api.calls[0]["instance_names"] == ["my-instance"] and api.calls[0]["request_id"]
    now[0] += 299
    assert await provider() == "token-1"
    now[0] += 2
    assert await provider() == "token-2"
    assert api.calls[1]["request_id"] != api.calls[0]["request_id"]
    # A token close to its expiry is not handed out again.
    api.lifetime_s = 200
    now[0] += 1000
    assert await provider() == "token-3"
    assert await provider() == "token-4"


async def test_a_failing_credential_call_is_unavailable():
    class Refusing:
        def generate_database_credential(self, **kwargs: Any) -> Any:
            raise PermissionError("PERMISSION_DENIED: not allowed on instance")

    provider = DatabaseCredentialProvider(SimpleNamespace(database=Refusing()), "inst")
    with pytest.raises(WriterUnavailableError, match="PERMISSION_DENIED"):
        await provider()


class ConversionWatcher(LakebaseWriter):
    """Converts a batch only once the event loop has run a callback meanwhile: converting
    on the loop itself would wait for that callback in vain."""

    async def watch(self) -> None:
        import threading

        self.loop_ran = threading.Event()
        loop = asyncio.get_running_loop()
        self._tick = loop.call_later(0.01, self.loop_ran.set)

    def _values(self, plan: Any, rows: Rows) -> list[list[Any]]:
        if not self.loop_ran.wait(10):
            raise AssertionError("the batch was converted on the event loop")
        return super()._values(plan, rows)


async def test_a_big_batch_is_converted_off_the_event_loop(local_stack, admin, table):
    writer = ConversionWatcher(
        local_targets(local_stack, lakebase=LakebaseSettings(write_mode="copy"))
    )
    await writer.open()
    try:
        ref = products_in(table)
        await writer.prepare(ref)
        rows = product_rows(ref, 600, description_bytes=1_000)  # past 512 KiB as Arrow
        assert rows.data.nbytes >= 512 * 1024
        await writer.watch()
        assert (await writer.write(rows)).rows == 600
        assert len(read_back(admin, ref, rows.batch_id)) == 600
    finally:
        await writer.close()
