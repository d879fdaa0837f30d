"""The SQL writer against the local stack's Statement Execution API, over real sockets.

Rows are read back from the Delta files by an independent reader (deltalake).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from dwbench.errors import RequestTooLargeError, WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from tests.conftest import local_targets
from workloads.products import COLUMNS, ProductRecord, build_records, new_batch_id, sample_items
from writers.base import Targets
from writers.sql import (
    MAX_PARAMETERS,
    ROWS_PER_STATEMENT,
    SqlParameter,
    SqlWriter,
    connector_parameter,
    insert_statements,
    quote_table,
)

AT = dt.datetime(2026, 11, 21, 12, 30, 45, 123456, tzinfo=dt.UTC)


def delta_rows(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    path = Path(endpoints["data_dir"], "tables", *table.split("."))
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: r["record_id"])


def records(count: int, *, description_bytes: int = 0) -> list[ProductRecord]:
    items = sample_items(count, seed=7, description_bytes=description_bytes)
    return build_records(items, batch_id=new_batch_id(), source="sql", processed_at=AT)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def writer(local_stack: dict[str, Any], products_table: str) -> AsyncIterator[SqlWriter]:
    w = SqlWriter(local_targets(local_stack, sql_table=products_table))
    await w.open()
    yield w
    await w.close()


# -- rows land exactly ---------------------------------------------------------------------


async def test_rows_round_trip_exactly(local_stack, products_table, writer):
    base = records(6)
    tricky = [
        base[0]._replace(product_name="O'Brien's \"best\" \\ tea; DROP TABLE x; --"),
        base[1]._replace(description="emoji 😀🚀 and ünïcødé, 中文, tab\tnewline\n"),
        base[2]._replace(sale_start_date=None, sale_stop_date=None, description=None),
        base[3]._replace(product_price=0.1 + 0.2, category="free text: a, b"),
        base[4]._replace(product_price=1e12, description=""),
        base[5]._replace(processed_at=dt.datetime(1999, 12, 31, 23, 59, 59, 999999)),
    ]
    receipt = await writer.write(tricky)
    assert receipt.rows == 6
    assert receipt.details["statements"] == 1
    assert len(receipt.details["statement_ids"]) == 1
    expected = [r.as_dict() for r in tricky]
    # A naive processed_at is UTC.
    expected[5]["processed_at"] = expected[5]["processed_at"].replace(tzinfo=dt.UTC)
    assert delta_rows(local_stack, products_table) == sorted(expected, key=lambda r: r["record_id"])
    assert await writer.count_rows(tricky[0].batch_id) == 6


async def test_100_rows_are_chunked_under_the_parameter_limit(local_stack, products_table, writer):
    rows = records(100)
    receipt = await writer.write(rows)
    assert receipt.rows == 100
    assert receipt.details["statements"] == 5  # 23 + 23 + 23 + 23 + 8
    ids = receipt.details["statement_ids"]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert delta_rows(local_stack, products_table) == [r.as_dict() for r in rows]
    assert await writer.count_rows(rows[0].batch_id) == 100
    assert await writer.count_rows("no-such-batch") == 0


async def test_sequential_writes_that_poll_for_the_result(local_stack, products_table, writer):
    writer.max_concurrency = 1
    writer.wait_timeout_s = 0  # the API answers at once; the writer polls get_statement
    rows = records(30)
    receipt = await writer.write(rows)
    assert receipt.rows == 30 and receipt.details["statements"] == 2
    assert delta_rows(local_stack, products_table) == [r.as_dict() for r in rows]


async def test_empty_write_sends_nothing(writer):
    receipt = await writer.write([])
    assert receipt.rows == 0 and receipt.details == {"statement_ids": [], "statements": 0}


async def test_a_huge_description_is_written_alone(local_stack, products_table, writer):
    rows = records(4)
    # 1,000,000 characters is the input cap; as JSON (\ud83d\ude00) one emoji takes 12 bytes.
    rows[1] = rows[1]._replace(description="😀" * 1_000_000)
    receipt = await writer.write(rows)
    assert receipt.rows == 4 and receipt.details["statements"] == 3
    stored = delta_rows(local_stack, products_table)
    assert stored == [r.as_dict() for r in rows]


async def test_a_record_too_large_for_one_statement_is_refused_up_front(
    local_stack, products_table, writer
):
    rows = records(30)
    rows[25] = rows[25]._replace(description="😀" * 1_500_000)  # ~18 MB as JSON
    with pytest.raises(RequestTooLargeError, match=rf"record {rows[25].record_id} needs .* MiB"):
        await writer.write(rows)
    assert delta_rows(local_stack, products_table) == []


# -- failures ------------------------------------------------------------------------------


async def test_failed_statement_raises_with_the_warehouse_message(local_stack, products_table):
    missing = products_table + "_missing"
    writer = SqlWriter(local_targets(local_stack, sql_table=missing))
    await writer.open()
    rows = records(3)
    with pytest.raises(WriteFailedError) as info:
        await writer.write(rows)
    message = info.value.message
    assert "[TABLE_OR_VIEW_NOT_FOUND]" in message
    assert "FAILED" in message
    assert "0 of 3 rows were committed" in message
    assert info.value.writer == "sql"
    assert delta_rows(local_stack, products_table) == []


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_later_failure_reports_what_was_committed(
    local_stack, products_table, writer, concurrency
):
    writer.max_concurrency = concurrency
    rows = records(100)
    # Row 50 is in the third statement; NULL in a NOT NULL column fails that statement.
    rows[50] = rows[50]._replace(product_name=None)  # type: ignore[arg-type]
    with pytest.raises(WriteFailedError) as info:
        await writer.write(rows)
    message = info.value.message
    assert "DELTA_NOT_NULL_CONSTRAINT_VIOLATED" in message
    assert "(statement 3 of 5)" in message
    stored = delta_rows(local_stack, products_table)
    # The message tells exactly how many rows are in the table, and they are whole statements.
    assert f"{len(stored)} of 100 rows were committed before the write stopped" in message
    assert f"the other {100 - len(stored)} rows are not reported as written" in message
    assert rows[50].record_id not in {r["record_id"] for r in stored}
    if concurrency == 1:
        assert len(stored) == 2 * ROWS_PER_STATEMENT
        assert stored == [r.as_dict() for r in rows[: 2 * ROWS_PER_STATEMENT]]


async def test_a_statement_past_its_deadline_is_not_reported_written(writer):
    writer.wait_timeout_s = 0
    writer.statement_timeout_s = 0.0
    with pytest.raises(WriteFailedError, match="did not finish within 0 s") as info:
        await writer.write(records(3))
    assert "rows may still be committed" in info.value.message
    assert "0 of 3 rows were committed" in info.value.message


async def test_unreachable_server_is_unavailable_quickly(local_stack, products_table):
    targets = dataclasses.replace(
        local_targets(local_stack, sql_table=products_table),
        workspace_url=f"http://127.0.0.1:{closed_port()}",
    )
    writer = SqlWriter(targets)
    started = time.monotonic()
    await writer.open()  # opening builds the client; it does not need the server
    assert time.monotonic() - started < 10

    started = time.monotonic()
    with pytest.raises(WriterUnavailableError, match="connection refused") as info:
        await writer.write(records(2))
    assert time.monotonic() - started < 10
    assert "cannot reach the SQL API at http://127.0.0.1:" in info.value.message

    started = time.monotonic()
    availability = await writer.availability()
    assert time.monotonic() - started < 10
    assert not availability.available
    assert availability.reason is not None and "connection refused" in availability.reason
    await writer.close()


async def test_wrong_token_is_unavailable_without_showing_the_token(local_stack, products_table):
    wrong = "wrong-token-" + local_stack["token"][::-1]
    targets = dataclasses.replace(
        local_targets(local_stack, sql_table=products_table), local_token=SecretStr(wrong)
    )
    writer = SqlWriter(targets)
    await writer.open()
    availability = await writer.availability()
    assert not availability.available
    assert availability.reason is not None and "401" in availability.reason
    assert wrong not in repr(availability) and local_stack["token"] not in repr(availability)
    with pytest.raises(WriterUnavailableError) as info:
        await writer.write(records(1))
    assert "rejected the credentials" in info.value.message
    assert wrong not in str(info.value) and wrong not in info.value.message
    await writer.close()


async def test_connector_driver_needs_databricks(local_stack, products_table):
    writer = SqlWriter(local_targets(local_stack, sql_table=products_table, sql_driver="connector"))
    expected = (
        "the connector driver needs a Databricks SQL warehouse; local mode supports statement-api"
    )
    with pytest.raises(WriterUnavailableError, match=expected):
        await writer.open()
    availability = await writer.availability()
    assert not availability.available and availability.reason == expected
    assert availability.details["driver"] == "connector"


@pytest.mark.parametrize(
    "table",
    ["products", "main.products", "main.default.products; DROP TABLE x", "a.b.c.d", "a.b.`c`"],
)
async def test_table_name_must_be_three_plain_identifiers(local_stack, table):
    writer = SqlWriter(local_targets(local_stack, sql_table=table))
    with pytest.raises(WriterUnavailableError, match="SQL_TABLE must be a three-part name"):
        await writer.open()


# -- availability and configuration --------------------------------------------------------


async def test_availability_on_the_local_stack(local_stack, products_table, writer):
    availability = await writer.availability()
    assert availability.available and availability.reason is None
    assert availability.details == {
        "host": local_stack["api_url"],
        "warehouse_id": local_stack["warehouse_id"],
        "table": products_table,
        "driver": "statement-api",
        "auth": "pat (local token)",
        "warehouse_name": "Local SQL warehouse",
        "warehouse_state": "RUNNING",
    }


async def test_databricks_mode_names_the_missing_variable():
    settings = Settings(
        app_mode="databricks",
        databricks_host="adb-123.4.azuredatabricks.net",
        databricks_client_id="abcd1234-5678-90ef",
        databricks_client_secret=SecretStr("dose-very-secret"),
    )
    writer = SqlWriter(Targets(mode="databricks", settings=settings))
    with pytest.raises(WriterUnavailableError, match="set DATABRICKS_WAREHOUSE_ID"):
        await writer.open()
    availability = await writer.availability()
    assert not availability.available
    assert availability.details["auth"] == "oauth-m2m (client_id=abcd***)"
    assert availability.details["host"] == "https://adb-123.4.azuredatabricks.net"
    assert "dose-very-secret" not in repr(availability)


async def test_write_before_open_is_unavailable(local_stack, products_table):
    writer = SqlWriter(local_targets(local_stack, sql_table=products_table))
    with pytest.raises(WriterUnavailableError, match="not open"):
        await writer.write(records(1))


# -- statement building (shared by both drivers) --------------------------------------------


def test_statements_stay_under_the_parameter_limit():
    rows = records(47)
    statements = insert_statements(quote_table("main.default.products"), rows)
    assert [s.rows for s in statements] == [23, 23, 1]
    for statement in statements:
        assert len(statement.parameters) == statement.rows * len(COLUMNS) <= MAX_PARAMETERS
        names = [p.name for p in statement.parameters]
        assert names == [f"p{i}" for i in range(len(names))]
        assert all(f":{name}" in statement.sql for name in names)
        assert statement.sql.startswith(
            f"INSERT INTO `main`.`default`.`products` ({', '.join(COLUMNS)}) VALUES (:p0, :p1,"
        )
    # Values never reach the SQL text.
    assert rows[0].product_name not in statements[0].sql


def test_statements_split_on_payload_size():
    # 1,000,000 characters (the input cap) each: 8 rows fit the 8 MiB budget of a statement.
    rows = [r._replace(description="x" * 1_000_000) for r in records(10)]
    statements = insert_statements(quote_table("main.default.products"), rows)
    assert [s.rows for s in statements] == [8, 2]
    # JSON escapes count: as \ud83d\ude00 an emoji takes 12 bytes, so such a row goes alone.
    rows[3] = rows[3]._replace(description="😀" * 1_000_000)
    statements = insert_statements(quote_table("main.default.products"), rows)
    assert [s.rows for s in statements] == [3, 1, 6]


def test_parameter_text_is_typed():
    assert SqlParameter("p", "DOUBLE", 499.99).text == "499.99"
    assert SqlParameter("p", "DATE", dt.date(2026, 2, 3)).text == "2026-02-03"
    stamp = dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert SqlParameter("p", "TIMESTAMP", stamp).text == "2026-01-01T12:00:00.000000+00:00"
    assert SqlParameter("p", "STRING", None).text is None


def test_connector_parameters_are_typed_natively():
    rows = records(1)
    statement = insert_statements(quote_table("main.default.products"), rows)[0]
    params = [connector_parameter(p) for p in statement.parameters]
    tspark = [p.as_tspark_param(named=True) for p in params]
    assert [t.name for t in tspark] == [f"p{i}" for i in range(len(COLUMNS))]
    assert [t.type for t in tspark] == [
        "STRING",
        "STRING",
        "STRING",
        "DOUBLE",
        "STRING",
        "DATE",
        "DATE",
        "TIMESTAMP",
        "STRING",
        "STRING",
        "VOID",  # description is None: NULL goes as VOID
    ]
    assert tspark[1].value.stringValue == rows[0].product_id
