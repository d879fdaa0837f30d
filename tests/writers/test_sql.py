"""The SQL writer against the local stack's Statement Execution API, over real sockets.

Rows are read back from the Delta files by an independent reader (deltalake), and compared
exactly: timestamps to the microsecond, floating point numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import secrets
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from dwbench.auth import resolve_workspace_auth
from dwbench.errors import (
    InvalidSchemaError,
    RequestTooLargeError,
    SchemaNotSupportedError,
    WriteFailedError,
    WriterUnavailableError,
)
from dwbench.settings import Settings
from tests.conftest import local_targets, run_sql
from tests.writers.exact_values import exact
from workloads import products, telemetry
from workloads.base import Rows, TableRef, default_table
from workloads.inputs import build_rows, new_batch_id
from workloads.schema import TableSchema
from writers.base import Targets
from writers.sql import (
    MAX_STATEMENT_BYTES,
    STATEMENT_BUDGET_BYTES,
    SqlWriter,
    insert_statements,
    quote_table,
    text_bytes,
)

AT = dt.datetime(2026, 11, 21, 12, 30, 45, 123456, tzinfo=dt.UTC)
# Before literals: 11 columns x 23 rows = 253 of the 256 parameters a statement may carry.
ROWS_PER_STATEMENT_WITH_PARAMETERS = 23


def new_table(
    endpoints: dict[str, Any], schema: TableSchema, name: str, **options: Any
) -> TableRef:
    """A fresh Delta table of the schema, created through the SQL API from its derived DDL."""
    full = f"main.default.{name}_{secrets.token_hex(3)}"
    run_sql(endpoints, schema.delta_ddl(full))
    return default_table(name, schema, delta_table=full, **options)


def stored(endpoints: dict[str, Any], table: TableRef) -> list[dict[str, Any]]:
    catalog, schema, name = table.delta_table.split(".")
    path = f"{endpoints['data_dir']}/tables/{catalog}/{schema}/{name}"
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    key = table.id_column or table.schema.names[0]
    return sorted(rows, key=lambda r: r[key])


def as_written(rows: Rows) -> list[dict[str, Any]]:
    key = rows.table.id_column or rows.table.schema.names[0]
    return sorted(rows.data.to_pylist(), key=lambda r: r[key])


def assert_stored_exactly(endpoints: dict[str, Any], *batches: Rows) -> None:
    expected = sorted(
        (row for rows in batches for row in as_written(rows)),
        key=lambda r: r[batches[0].table.id_column or batches[0].table.schema.names[0]],
    )
    assert exact(stored(endpoints, batches[0].table)) == exact(expected)


def product_rows(table: TableRef, count: int, *, description_bytes: int = 0) -> Rows:
    items = products.sample_items(count, seed=7, description_bytes=description_bytes)
    return build_rows(
        products.WORKLOAD,
        items,
        batch_id=new_batch_id(),
        source="sql",
        processed_at=AT,
        table=table,
    )


def with_values(rows: Rows, column: str, values: dict[int, Any]) -> Rows:
    """The rows with some values of one column replaced (row index -> value)."""
    data = rows.data
    index = data.schema.get_field_index(column)
    current = data.column(index).to_pylist()
    for i, value in values.items():
        current[i] = value
    field = data.schema.field(index)
    array = pa.array(current, type=field.type)
    return dataclasses.replace(rows, data=data.set_column(index, field, array))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def products_ref(local_stack: dict[str, Any]) -> TableRef:
    return new_table(local_stack, products.SCHEMA, "products", id_column="record_id")


@pytest.fixture
async def writer(local_stack: dict[str, Any]) -> AsyncIterator[SqlWriter]:
    w = SqlWriter(local_targets(local_stack))
    await w.open()
    yield w
    await w.close()


# -- rows land exactly ---------------------------------------------------------------------


async def test_products_round_trip_exactly(local_stack, products_ref, writer):
    rows = product_rows(products_ref, 6)
    rows = with_values(
        rows, "product_name", {0: "O'Brien's \"best\" \\ tea'); DROP TABLE x; --", 5: "${env:HOME}"}
    )
    rows = with_values(
        rows, "description", {1: "emoji 😀🚀 and ünïcødé, 中文, tab\tnewline\n", 4: ""}
    )
    rows = with_values(rows, "sale_start_date", {2: None, 3: dt.date(1, 1, 1)})
    rows = with_values(rows, "sale_stop_date", {2: None, 3: dt.date(9999, 12, 31)})
    rows = with_values(rows, "product_price", {3: 0.1 + 0.2, 4: 1e12, 5: 5e-324})
    rows = with_values(
        rows, "processed_at", {5: dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)}
    )
    receipt = await writer.write(rows)
    assert receipt.rows == 6
    assert receipt.details["statements"] == 1
    assert len(receipt.details["statement_ids"]) == 1
    assert_stored_exactly(local_stack, rows)
    assert await writer.count_rows(products_ref, rows.batch_id) == 6
    assert await writer.count_rows(products_ref, "no-such-batch") == 0


async def test_telemetry_round_trip_exactly(local_stack, writer):
    table = new_table(local_stack, telemetry.SCHEMA, "telemetry", id_column="event_id")
    fleet = telemetry.FleetRows(
        table, telemetry.Fleet(40, seed=3), clock=lambda: 1_780_000_000_123_457
    )
    first = Rows(table, fleet(0, 300, "batch-one", "sql"), "batch-one")
    second = Rows(table, fleet(1, 200, "batch-two", "sql"), "batch-two")
    assert first.data.column("order_id").null_count > 0  # drivers without an order
    assert (await writer.write(first)).rows == 300
    assert (await writer.write(second)).rows == 200
    # FLOAT speeds and headings, DOUBLE positions, TINYINT batteries, µs event times.
    assert_stored_exactly(local_stack, first, second)
    assert await writer.count_rows(table, "batch-one") == 300
    assert await writer.count_rows(table, "batch-two") == 200


COMPLEX_DDL = """
CREATE TABLE main.default.deliveries (
  id BIGINT NOT NULL,
  batch_id STRING,
  source STRING,
  placed_at TIMESTAMP_NTZ COMMENT 'local time of the restaurant',
  tags ARRAY<STRING>,
  counts MAP<STRING, INT>,
  route STRUCT<
    name: STRING NOT NULL,
    stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE, at: TIMESTAMP, note: STRING>>
  >,
  total DECIMAL(10,2),
  weight FLOAT,
  payload BINARY,
  paid BOOLEAN,
  due DATE,
  left_null STRING,
  left_null_too ARRAY<INT>
) USING DELTA
"""


async def test_complex_types_round_trip_exactly(local_stack, writer):
    schema = TableSchema.from_ddl(COMPLEX_DDL)
    table = new_table(local_stack, schema, "deliveries", id_column="id")
    stop = {"lat": 37.7749, "lon": -122.4194, "at": AT, "note": "ring twice, it's 'B'"}
    rows = [
        {
            "id": 1,
            "placed_at": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
            "tags": ["vegan", "it's \\ hot", "😀"],
            "counts": [("fries", 2), ("shakes", None)],
            "route": {"name": "north", "stops": [stop, {**stop, "lat": None, "note": None}, None]},
            "total": Decimal("12345678.90"),
            "weight": -0.0,
            "payload": b"\x00\xff",
            "paid": True,
            "due": dt.date(9999, 12, 31),
        },
        {
            "id": 2,
            "placed_at": dt.datetime(1, 1, 1),
            "tags": [],
            "counts": [],
            "route": {"name": "empty", "stops": []},
            "total": Decimal("-0.01"),
            "weight": math.nan,
            "payload": b"",
            "paid": False,
            "due": dt.date(1, 1, 1),
        },
        {"id": 3, "weight": math.inf, "tags": [None], "route": None},
        {"id": 4, "weight": -math.inf, "counts": [("only", -(2**31))]},
    ]
    for row in rows:
        row.update(batch_id="complex", source="sql")
    data = pa.RecordBatch.from_pylist(
        [{**dict.fromkeys(schema.names), **row} for row in rows], schema=schema.arrow()
    )
    batch = Rows(table, data, "complex")
    receipt = await writer.write(batch)
    assert receipt.rows == 4 and receipt.details["statements"] == 1
    assert_stored_exactly(local_stack, batch)
    got = stored(local_stack, table)
    assert all(r["left_null"] is None and r["left_null_too"] is None for r in got)
    assert await writer.count_rows(table, "complex") == 4


async def test_sequential_writes_that_poll_for_the_result(local_stack, products_ref, writer):
    writer.max_concurrency = 1
    writer.wait_timeout_s = 0  # the API answers at once; the writer polls get_statement
    rows = product_rows(products_ref, 30)
    writer.statement_budget_bytes = insert_statements(rows)[0].bytes // 2 + 1000
    receipt = await writer.write(rows)
    assert receipt.rows == 30 and receipt.details["statements"] == 2
    assert_stored_exactly(local_stack, rows)


async def test_empty_write_sends_nothing(products_ref, writer):
    receipt = await writer.write(product_rows(products_ref, 0))
    assert receipt.rows == 0 and receipt.details == {"statement_ids": [], "statements": 0}


# -- as many rows per statement as the limit allows ----------------------------------------


async def test_10000_rows_of_1_kib_take_a_twentieth_of_the_statements(
    local_stack, products_ref, writer
):
    rows = product_rows(products_ref, 10_000, description_bytes=1024)
    receipt = await writer.write(rows)
    assert receipt.rows == 10_000
    before = math.ceil(10_000 / ROWS_PER_STATEMENT_WITH_PARAMETERS)  # 435
    assert receipt.details["statements"] * 20 <= before
    assert receipt.details["statements"] == 1  # about 12.5 MB of SQL
    assert len(set(receipt.details["statement_ids"])) == receipt.details["statements"]
    assert await writer.count_rows(products_ref, rows.batch_id) == 10_000
    assert len(stored(local_stack, products_ref)) == 10_000


def test_statements_fill_up_to_the_budget_evenly():
    rows = product_rows(products.TABLE, 100, description_bytes=1000)
    whole = insert_statements(rows)
    assert [s.rows for s in whole] == [100]
    budget = whole[0].bytes // 3  # about 34 rows
    statements = insert_statements(rows, budget_bytes=budget)
    assert [s.rows for s in statements] == [25, 25, 25, 25]  # 4 even statements, not 34+34+32
    for statement in statements:
        assert statement.bytes == text_bytes(statement.sql) <= budget
        assert statement.sql.startswith(
            "INSERT INTO `main`.`default`.`products` (`record_id`, `product_id`, "
        )
    assert whole[0].bytes <= STATEMENT_BUDGET_BYTES < MAX_STATEMENT_BYTES


def test_sizes_count_the_text_as_it_travels():
    # As JSON (\ud83d\ude00) an emoji takes 12 bytes, a backslash 2, a newline 2.
    assert text_bytes("😀") == 12 and text_bytes("\\") == 2 and text_bytes("\n") == 2
    assert text_bytes("ü") == 6 and text_bytes("a") == 1
    rows = product_rows(products.TABLE, 10, description_bytes=1000)
    rows = with_values(rows, "description", {3: "😀" * 100_000})
    statements = insert_statements(rows, budget_bytes=1_000_000)
    assert [s.rows for s in statements] == [3, 1, 6]  # the emoji row's 1.2 MB goes alone


async def test_a_row_over_the_budget_but_under_the_limit_goes_alone(
    local_stack, products_ref, writer
):
    rows = product_rows(products_ref, 4)
    # 1,350,000 emoji: 16.2 MB as the API receives them, 5.4 MB of UTF-8.
    rows = with_values(rows, "description", {1: "😀" * 1_350_000})
    receipt = await writer.write(rows)
    assert receipt.rows == 4 and receipt.details["statements"] == 3
    assert_stored_exactly(local_stack, rows)


async def test_a_row_too_large_for_one_statement_is_refused_up_front(
    local_stack, products_ref, writer
):
    rows = product_rows(products_ref, 30)
    rows = with_values(rows, "description", {25: "😀" * 1_500_000})  # ~18 MB as JSON
    record_id = rows.data.column("record_id")[25].as_py()
    with pytest.raises(
        RequestTooLargeError, match=rf"row 25 \(record_id {record_id}\) needs .* MiB"
    ):
        await writer.write(rows)
    assert stored(local_stack, products_ref) == []


# -- what the writer refuses before writing ------------------------------------------------


async def test_variant_is_refused_locally_and_rendered_for_databricks(local_stack, writer):
    schema = TableSchema.from_ddl("id INT, doc VARIANT")
    table = default_table("docs", schema)
    with pytest.raises(SchemaNotSupportedError, match="column doc holds VARIANT"):
        writer.check(table)
    data = pa.RecordBatch.from_pylist([{"id": 1, "doc": '{"a": 1}'}], schema=schema.arrow())
    with pytest.raises(SchemaNotSupportedError):
        await writer.write(Rows(table, data, "b"))
    settings = Settings(app_mode="databricks")
    SqlWriter(Targets(mode="databricks", settings=settings)).check(table)  # no error
    sql = insert_statements(Rows(table, data, "b"))[0].sql
    assert sql.endswith("""VALUES (1, PARSE_JSON('{"a": 1}'))""")


def test_every_other_type_is_accepted(local_stack):
    writer = SqlWriter(local_targets(local_stack))
    for workload in (products.WORKLOAD, telemetry.WORKLOAD):
        writer.check(workload.table)
    writer.check(default_table("deliveries", TableSchema.from_ddl(COMPLEX_DDL)))


def test_names_spark_would_substitute_are_refused(local_stack):
    writer = SqlWriter(local_targets(local_stack))
    for ddl in ("`a${x}` INT", "s STRUCT<`b${y}`: INT>"):
        with pytest.raises(SchemaNotSupportedError, match=r"'\$\{'"):
            writer.check(default_table("odd", TableSchema.from_ddl(ddl)))


@pytest.mark.parametrize(
    "name",
    ["products", "main.products", "main.default.products; DROP TABLE x", "a.b.c.d", "a.b.`c`"],
)
async def test_table_name_must_be_three_plain_identifiers(products_ref, writer, name):
    with pytest.raises(InvalidSchemaError, match="three-part table name"):
        quote_table(name)
    rows = product_rows(products_ref, 2)
    bad = dataclasses.replace(rows, table=dataclasses.replace(products_ref, delta_table=name))
    with pytest.raises(InvalidSchemaError, match="three-part table name"):
        await writer.write(bad)


async def test_count_rows_needs_a_batch_column(local_stack, writer):
    table = new_table(local_stack, TableSchema.from_ddl("id INT, note STRING"), "untagged")
    with pytest.raises(NotImplementedError, match="has no batch column"):
        await writer.count_rows(table, "any")


# -- failures ------------------------------------------------------------------------------


async def test_failed_statement_raises_with_the_warehouse_message(
    local_stack, products_ref, writer
):
    missing = products_ref.with_tables(delta_table=products_ref.delta_table + "_missing")
    with pytest.raises(WriteFailedError) as info:
        await writer.write(product_rows(missing, 3))
    message = info.value.message
    assert "[TABLE_OR_VIEW_NOT_FOUND]" in message
    assert "FAILED" in message
    assert "0 of 3 rows are known to be committed" in message
    assert info.value.writer == "sql"
    assert stored(local_stack, products_ref) == []


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_later_failure_reports_what_was_committed(
    local_stack, products_ref, writer, concurrency
):
    writer.max_concurrency = concurrency
    rows = product_rows(products_ref, 100)
    # Five statements of 20 rows (the 1,000 bytes are room for each statement's head).
    writer.statement_budget_bytes = insert_statements(rows)[0].bytes // 5 + 1000
    # NULL in a NOT NULL column fails the statement that holds row 50.
    rows = with_values(rows, "product_name", {50: None})
    statements = insert_statements(rows, budget_bytes=writer.statement_budget_bytes)
    assert [s.rows for s in statements] == [20, 20, 20, 20, 20]
    ends = [sum(s.rows for s in statements[: i + 1]) for i in range(len(statements))]
    failing = next(i for i, end in enumerate(ends) if end > 50)
    with pytest.raises(WriteFailedError) as info:
        await writer.write(rows)
    message = info.value.message
    assert "DELTA_NOT_NULL_CONSTRAINT_VIOLATED" in message
    assert f"(statement {failing + 1} of 5)" in message
    got = stored(local_stack, products_ref)
    # The message tells exactly how many rows are in the table, and they are whole statements.
    assert f"{len(got)} of 100 rows are known to be committed" in message
    assert f"the other {100 - len(got)} rows are not reported as written" in message
    assert rows.data.column("record_id")[50].as_py() not in {r["record_id"] for r in got}
    if concurrency == 1:
        committed = ends[failing - 1]
        assert exact(got) == exact(as_written(rows)[:committed])


async def test_a_statement_past_its_deadline_is_not_reported_written(products_ref, writer):
    writer.wait_timeout_s = 0
    writer.statement_timeout_s = 0.0
    with pytest.raises(WriteFailedError, match="did not finish within 0 s") as info:
        await writer.write(product_rows(products_ref, 3))
    assert "rows may still be committed" in info.value.message
    assert "0 of 3 rows are known to be committed" in info.value.message


async def test_unreachable_server_is_unavailable_quickly(local_stack, products_ref):
    targets = dataclasses.replace(
        local_targets(local_stack), workspace_url=f"http://127.0.0.1:{closed_port()}"
    )
    writer = SqlWriter(targets)
    started = time.monotonic()
    await writer.open()  # opening builds the client; it does not need the server
    assert time.monotonic() - started < 10

    started = time.monotonic()
    with pytest.raises(WriterUnavailableError, match="connection refused") as info:
        await writer.write(product_rows(products_ref, 2))
    assert time.monotonic() - started < 10
    assert "cannot reach the SQL API at http://127.0.0.1:" in info.value.message

    started = time.monotonic()
    availability = await writer.availability()
    assert time.monotonic() - started < 10
    assert not availability.available
    assert availability.reason is not None and "connection refused" in availability.reason
    await writer.close()


async def test_wrong_token_is_unavailable_without_showing_the_token(local_stack, products_ref):
    wrong = "wrong-token-" + local_stack["token"][::-1]
    targets = dataclasses.replace(local_targets(local_stack), local_token=SecretStr(wrong))
    writer = SqlWriter(targets)
    await writer.open()
    availability = await writer.availability()
    assert not availability.available
    assert availability.reason is not None and "401" in availability.reason
    assert wrong not in repr(availability) and local_stack["token"] not in repr(availability)
    with pytest.raises(WriterUnavailableError) as info:
        await writer.write(product_rows(products_ref, 1))
    assert "rejected the credentials" in info.value.message
    assert wrong not in str(info.value) and wrong not in info.value.message
    await writer.close()


# -- availability and configuration --------------------------------------------------------


async def test_availability_on_the_local_stack(local_stack, writer):
    availability = await writer.availability()
    assert availability.available and availability.reason is None
    assert availability.details == {
        "host": local_stack["api_url"],
        "warehouse_id": local_stack["warehouse_id"],
        "table": "main.default.products",
        "auth": "pat (local token)",
        "warehouse_name": "Local SQL warehouse",
        "warehouse_state": "RUNNING",
    }


async def test_databricks_mode_names_the_missing_variable(local_stack):
    # A workspace that is the local stack's API, reached with a personal access token.
    settings = Settings(
        app_mode="databricks",
        databricks_host=local_stack["api_url"],
        databricks_token=SecretStr(local_stack["token"]),
    )
    auth = resolve_workspace_auth(settings)
    writer = SqlWriter(
        Targets(mode="databricks", settings=settings, workspace_url=auth.host, workspace_auth=auth)
    )
    with pytest.raises(WriterUnavailableError, match="set DATABRICKS_WAREHOUSE_ID"):
        await writer.open()
    availability = await writer.availability()
    assert not availability.available
    assert availability.details["auth"] == "pat (DATABRICKS_TOKEN)"
    assert availability.details["host"] == local_stack["api_url"]
    assert local_stack["token"] not in repr(availability)


async def test_databricks_mode_without_credentials_says_why():
    problem = "no Databricks credentials: set DATABRICKS_HOST and DATABRICKS_TOKEN"
    settings = Settings(app_mode="databricks")
    writer = SqlWriter(Targets(mode="databricks", settings=settings, auth_problem=problem))
    with pytest.raises(WriterUnavailableError) as caught:
        await writer.open()
    assert caught.value.message == problem
    assert (await writer.availability()).reason == problem


async def test_write_before_open_is_unavailable(local_stack, products_ref):
    writer = SqlWriter(local_targets(local_stack))
    with pytest.raises(WriterUnavailableError, match="not open"):
        await writer.write(product_rows(products_ref, 1))
