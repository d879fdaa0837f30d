"""The local Statement Execution API, driven by the official databricks-sdk over real sockets."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest, NotFound, Unauthenticated
from databricks.sdk.service.sql import (
    Disposition,
    ExecuteStatementRequestOnWaitTimeout,
    Format,
    ServiceErrorCode,
    StatementParameterListItem,
    StatementResponse,
    StatementState,
)
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.sql_eval import locked_duckdb
from tests.emulator.statement_support import client, served_statement_app

WAREHOUSE = "0123456789abcdef"
SLOW_QUERY = "SELECT sum(a.id * b.id) AS s FROM range(1000000) AS a, range(1000000) AS b"


@dataclass
class Warehouse:
    url: str
    token: str
    data_dir: Path
    w: WorkspaceClient

    def sql(self, statement: str, *params: StatementParameterListItem, **kw: Any) -> Any:
        kw.setdefault("wait_timeout", "30s")
        return self.w.statement_execution.execute_statement(
            statement=statement,
            warehouse_id=WAREHOUSE,
            parameters=list(params) or None,
            **kw,
        )

    def ok(self, statement: str, *params: StatementParameterListItem, **kw: Any) -> Any:
        resp = self.sql(statement, *params, **kw)
        assert resp.status.state == StatementState.SUCCEEDED, resp.status
        return resp

    def delta(self, table: str) -> DeltaTable:
        return DeltaTable(str(self.data_dir / "tables" / "main" / "default" / table))


def param(name: str, value: str | None, type_: str | None = None) -> StatementParameterListItem:
    return StatementParameterListItem(name=name, value=value, type=type_)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """The statement app under uvicorn, in a thread with its own event loop."""
    data_dir = tmp_path_factory.mktemp("sql-stack")
    token = secrets.token_urlsafe(16)
    with served_statement_app(Catalog(data_dir), token, warehouse_id=WAREHOUSE) as url:
        yield Warehouse(url, token, data_dir, client(url, token))


def failed(resp: StatementResponse, error_class: str, sql_state: str) -> str:
    assert resp.status.state == StatementState.FAILED, resp.status
    assert resp.status.error.error_code == ServiceErrorCode.BAD_REQUEST
    assert resp.status.error.message.startswith(f"[{error_class}]"), resp.status.error.message
    assert resp.status.sql_state == sql_state
    return resp.status.error.message


def poll(warehouse: Warehouse, statement_id: str, timeout_s: float = 10) -> StatementResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        resp = warehouse.w.statement_execution.get_statement(statement_id)
        if resp.status.state not in (StatementState.PENDING, StatementState.RUNNING):
            return resp
        assert time.monotonic() < deadline, f"statement still {resp.status.state}"
        time.sleep(0.05)


ALL_TYPES_DDL = """
CREATE TABLE IF NOT EXISTS all_types (
  s STRING NOT NULL COMMENT 'text',
  i INT, l BIGINT, sm SMALLINT, ti TINYINT,
  d DOUBLE, f FLOAT, dec DOUBLE,
  b BOOLEAN, dt DATE, ts TIMESTAMP, n STRING
) USING DELTA COMMENT 'every type' TBLPROPERTIES ('delta.appendOnly' = 'false')
"""
TRICKY = "it's \\ \"q\" `b`\n ünïcødé 😀 '; DROP TABLE all_types; --"
ROWS: list[dict[str, tuple[str | None, str]]] = [
    {
        "s": ("plain", "STRING"),
        "i": ("2147483647", "INT"),
        "l": ("9223372036854775807", "BIGINT"),
        "sm": ("32767", "SMALLINT"),
        "ti": ("127", "TINYINT"),
        "d": ("1.5", "DOUBLE"),
        "f": ("0.25", "FLOAT"),
        "dec": ("12345.678", "DECIMAL(10,3)"),
        "b": ("true", "BOOLEAN"),
        "dt": ("2024-02-29", "DATE"),
        "ts": ("2024-01-02T03:04:05.123456Z", "TIMESTAMP"),
        "n": (None, "STRING"),
    },
    {
        "s": (TRICKY, "STRING"),
        "i": ("-2147483648", "INT"),
        "l": ("-9223372036854775808", "BIGINT"),
        "sm": ("-32768", "SMALLINT"),
        "ti": ("-128", "TINYINT"),
        "d": ("-1e308", "DOUBLE"),
        "f": ("-3.5", "FLOAT"),
        "dec": ("-0.001", "DECIMAL(10,3)"),
        "b": ("false", "BOOLEAN"),
        "dt": ("1970-01-01", "DATE"),
        "ts": ("1999-12-31 23:59:59+05:30", "TIMESTAMP"),
        "n": ("", "STRING"),
    },
    {
        "s": ("nulls", "STRING"),
        **{c: (None, t) for c, t in [("i", "INT"), ("l", "BIGINT"), ("sm", "SMALLINT")]},
        **{c: (None, t) for c, t in [("ti", "TINYINT"), ("d", "DOUBLE"), ("f", "FLOAT")]},
        **{c: (None, t) for c, t in [("dec", "DECIMAL(10,3)"), ("b", "BOOLEAN")]},
        **{c: (None, t) for c, t in [("dt", "DATE"), ("ts", "TIMESTAMP"), ("n", "STRING")]},
    },
]
UTC = dt.UTC


@pytest.fixture(scope="module")
def all_types(warehouse: Warehouse) -> str:
    """Create the table and insert ROWS through named parameters of every type."""
    warehouse.ok(ALL_TYPES_DDL)
    columns = list(ROWS[0])
    tuples, params = [], []
    for r, row in enumerate(ROWS):
        tuples.append("(" + ", ".join(f":{c}{r}" for c in columns) + ")")
        params += [param(f"{c}{r}", value, type_) for c, (value, type_) in row.items()]
    statement = f"INSERT INTO all_types ({', '.join(columns)}) VALUES {', '.join(tuples)}"
    resp = warehouse.ok(statement, *params)
    names = [(c.name, c.type_name.value, c.type_text) for c in resp.manifest.schema.columns]
    assert names == [
        ("num_affected_rows", "LONG", "BIGINT"),
        ("num_inserted_rows", "LONG", "BIGINT"),
    ]
    assert resp.result.data_array == [["3", "3"]]
    return "all_types"


def test_warehouse_is_running(warehouse: Warehouse) -> None:
    info = warehouse.w.warehouses.get(WAREHOUSE)
    assert (info.id, info.state.value) == (WAREHOUSE, "RUNNING")
    assert [wh.id for wh in warehouse.w.warehouses.list()] == [WAREHOUSE]
    with pytest.raises(NotFound):
        warehouse.w.warehouses.get("no-such-warehouse")
    with pytest.raises(NotFound):
        warehouse.w.statement_execution.execute_statement("SELECT 1", "no-such-warehouse")


def test_insert_round_trips_every_type_exactly(warehouse: Warehouse, all_types: str) -> None:
    rows = sorted(warehouse.delta(all_types).to_pyarrow_table().to_pylist(), key=lambda r: r["s"])
    by_s = {r["s"]: r for r in rows}
    assert set(by_s) == {"plain", TRICKY, "nulls"}
    assert by_s["plain"] == {
        "s": "plain",
        "i": 2**31 - 1,
        "l": 2**63 - 1,
        "sm": 2**15 - 1,
        "ti": 127,
        "d": 1.5,
        "f": 0.25,
        "dec": 12345.678,
        "b": True,
        "dt": dt.date(2024, 2, 29),
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "n": None,
    }
    tricky = by_s[TRICKY]
    assert tricky == {
        "s": TRICKY,
        "i": -(2**31),
        "l": -(2**63),
        "sm": -32768,
        "ti": -128,
        "d": -1e308,
        "f": -3.5,
        "dec": -0.001,
        "b": False,
        "dt": dt.date(1970, 1, 1),
        "ts": dt.datetime(1999, 12, 31, 18, 29, 59, tzinfo=UTC),  # +05:30 stored as UTC
        "n": "",
    }
    assert all(v is None for k, v in by_s["nulls"].items() if k != "s")


def test_select_renders_every_type_as_the_api_does(warehouse: Warehouse, all_types: str) -> None:
    resp = warehouse.ok(
        "SELECT * FROM all_types WHERE ti IS NOT NULL AND dt >= :since ORDER BY ti DESC",
        param("since", "1970-01-01", "DATE"),
    )
    columns = resp.manifest.schema.columns
    assert [(c.name, c.position) for c in columns] == [(n, i) for i, n in enumerate(ROWS[0])]
    assert [c.type_name.value for c in columns] == [
        "STRING", "INT", "LONG", "SHORT", "BYTE", "DOUBLE", "FLOAT", "DOUBLE",
        "BOOLEAN", "DATE", "TIMESTAMP", "STRING",
    ]  # fmt: skip
    assert [c.type_text for c in columns] == [
        "STRING", "INT", "BIGINT", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT", "DOUBLE",
        "BOOLEAN", "DATE", "TIMESTAMP", "STRING",
    ]  # fmt: skip
    assert resp.manifest.schema.column_count == 12
    assert resp.manifest.format == Format.JSON_ARRAY
    assert (resp.manifest.total_row_count, resp.manifest.total_chunk_count) == (2, 1)
    assert resp.manifest.truncated is False
    assert (resp.result.chunk_index, resp.result.row_offset, resp.result.row_count) == (0, 0, 2)
    assert resp.result.data_array == [
        [
            "plain", "2147483647", "9223372036854775807", "32767", "127", "1.5", "0.25",
            "12345.678", "true", "2024-02-29", "2024-01-02T03:04:05.123456Z", None,
        ],
        [
            TRICKY, "-2147483648", "-9223372036854775808", "-32768", "-128", "-1.0E308",
            "-3.5", "-0.001", "false", "1970-01-01", "1999-12-31T18:29:59.000Z", "",
        ],
    ]  # fmt: skip


def test_select_with_join_aggregates_and_limit(warehouse: Warehouse) -> None:
    warehouse.ok("CREATE TABLE main.default.items (id INT NOT NULL, cat STRING, price DOUBLE)")
    warehouse.ok("CREATE TABLE default.cats (cat STRING NOT NULL, label STRING)")
    warehouse.ok(
        "INSERT INTO items VALUES (1, 'a', 1.25), (2, 'a', 2.5), (3, 'b', 10.0), (4, NULL, 1.0)"
    )
    warehouse.ok("INSERT INTO cats (label, cat) VALUES ('Apples', 'a'), ('Bananas', 'b')")
    resp = warehouse.ok(
        """
        SELECT c.label, count(*) AS n, sum(i.price) AS total, max(i.id) AS top
        FROM items AS i JOIN cats AS c ON i.cat = c.cat
        WHERE i.price > :floor
        GROUP BY c.label ORDER BY total DESC LIMIT 5
        """,
        param("floor", "1.0", "DOUBLE"),
        catalog="main",
        schema="default",
    )
    types = [(c.name, c.type_name.value) for c in resp.manifest.schema.columns]
    assert types == [("label", "STRING"), ("n", "LONG"), ("total", "DOUBLE"), ("top", "INT")]
    assert resp.result.data_array == [["Bananas", "1", "10.0", "3"], ["Apples", "2", "3.75", "2"]]
    limited = warehouse.ok("SELECT id FROM items ORDER BY id", row_limit=3)
    assert limited.result.data_array == [["1"], ["2"], ["3"]]
    assert limited.manifest.truncated is True


def test_large_result_is_split_into_chunks(warehouse: Warehouse) -> None:
    warehouse.ok("CREATE TABLE big (id BIGINT NOT NULL, label STRING)")
    resp = warehouse.ok("INSERT INTO big SELECT id, concat('row-', id) FROM range(25000)")
    assert resp.result.data_array == [["25000", "25000"]]
    first = warehouse.ok("SELECT id, label FROM big ORDER BY id")
    manifest = first.manifest
    assert (manifest.total_row_count, manifest.total_chunk_count) == (25000, 3)
    assert [(c.chunk_index, c.row_offset, c.row_count) for c in manifest.chunks] == [
        (0, 0, 10000),
        (1, 10000, 10000),
        (2, 20000, 5000),
    ]
    rows, chunk = list(first.result.data_array), first.result
    while chunk.next_chunk_index is not None:
        expected_link = (
            f"/api/2.0/sql/statements/{first.statement_id}/result/chunks/{chunk.next_chunk_index}"
        )
        assert chunk.next_chunk_internal_link == expected_link
        chunk = warehouse.w.statement_execution.get_statement_result_chunk_n(
            first.statement_id, chunk.next_chunk_index
        )
        assert chunk.row_offset == len(rows)
        rows += chunk.data_array
    assert rows == [[str(i), f"row-{i}"] for i in range(25000)]
    polled = warehouse.w.statement_execution.get_statement(first.statement_id)
    assert polled.result.data_array == first.result.data_array
    with pytest.raises(BadRequest):
        warehouse.w.statement_execution.get_statement_result_chunk_n(first.statement_id, 3)


@pytest.fixture(scope="module")
def victims(warehouse: Warehouse) -> str:
    warehouse.ok("CREATE TABLE victims (id INT NOT NULL, tiny TINYINT, name STRING)")
    warehouse.ok("INSERT INTO victims VALUES (1, 1, 'one')")
    return "victims"


@pytest.mark.parametrize(
    ("statement", "params", "error_class", "sql_state", "mentions"),
    [
        ("SELECT * FROM WHERE", [], "PARSE_SYNTAX_ERROR", "42601", "'WHERE'"),
        ("SELEC name FROM victims", [], "PARSE_SYNTAX_ERROR", "42601", "near 'SELEC'"),
        ("", [], "PARSE_EMPTY_STATEMENT", "42617", "empty"),
        ("SELECT * FROM main.default.nope", [], "TABLE_OR_VIEW_NOT_FOUND", "42P01", "`nope`"),
        ("INSERT INTO nope VALUES (1)", [], "TABLE_OR_VIEW_NOT_FOUND", "42P01", "`nope`"),
        ("CREATE TABLE victims (a INT)", [], "TABLE_OR_VIEW_ALREADY_EXISTS", "42P07", "victims"),
        ("SELECT * FROM victims WHERE name = :who", [], "UNBOUND_SQL_PARAMETER", "42P02", "who"),
        (
            "INSERT INTO victims VALUES (2, 2, 'two'), (NULL, 3, 'three')",
            [],
            "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
            "23502",
            "column: id",
        ),
        (
            "INSERT INTO victims (tiny, name) VALUES (:t, :n)",
            [param("t", "5", "TINYINT"), param("n", "x")],
            "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
            "23502",
            "column: id",
        ),
        (
            "INSERT INTO victims VALUES (2, 300, 'x')",
            [],
            "CAST_OVERFLOW_IN_TABLE_INSERT",
            "22003",
            "`tiny`",
        ),
        (
            "INSERT INTO victims VALUES (:id, 1, 'x')",
            [param("id", "2")],
            "INCOMPATIBLE_DATA_FOR_TABLE.CANNOT_SAFELY_CAST",
            "KD000",
            "`id`",
        ),
        (
            "INSERT INTO victims VALUES (:id, 1, 'x')",
            [param("id", "two", "INT")],
            "CAST_INVALID_INPUT",
            "22018",
            "`id`",
        ),
        (
            "INSERT INTO victims VALUES (2, 1)",
            [],
            "INSERT_COLUMN_ARITY_MISMATCH.NOT_ENOUGH_DATA_COLUMNS",
            "21S01",
            "`name`",
        ),
        (
            "INSERT INTO victims (id, nickname) VALUES (2, 'x')",
            [],
            "UNRESOLVED_COLUMN.WITH_SUGGESTION",
            "42703",
            "`nickname`",
        ),
        ("UPDATE victims SET name = 'x'", [], "UNSUPPORTED_FEATURE", "0A000", "local stack"),
        ("SELECT 1; SELECT 2", [], "UNSUPPORTED_FEATURE", "0A000", "local stack"),
    ],
)
def test_failed_statements_carry_databricks_error_classes(
    warehouse: Warehouse,
    victims: str,
    statement: str,
    params: list[StatementParameterListItem],
    error_class: str,
    sql_state: str,
    mentions: str,
) -> None:
    version = warehouse.delta(victims).version()
    message = failed(warehouse.sql(statement, *params), error_class, sql_state)
    assert mentions in message
    table = warehouse.delta(victims)
    assert table.version() == version, "a failed statement must not commit"
    assert table.to_pyarrow_table().to_pylist() == [{"id": 1, "tiny": 1, "name": "one"}]


@pytest.mark.parametrize(
    ("statement", "function"),
    [
        ("SELECT content FROM read_text('/proc/self/environ')", "read_text"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_blob('/etc/hostname')", "read_blob"),
        ("SELECT * FROM read_parquet('{data_dir}/tables/main/default/victims/*.parquet')", None),
        ("SELECT * FROM glob('/etc/*')", None),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT 1 AS x WHERE EXISTS (SELECT * FROM read_text('/etc/passwd'))", "read_text"),
        ("INSERT INTO victims SELECT 9, 9, content FROM read_text('/etc/passwd')", "read_text"),
        ("INSERT INTO victims VALUES (9, 9, (SELECT content FROM read_blob('/etc/passwd')))", None),
    ],
)
def test_host_files_and_settings_are_out_of_reach(
    warehouse: Warehouse, victims: str, statement: str, function: str | None
) -> None:
    """The token opens the catalog's tables, not the host's files (nor DuckDB's settings)."""
    version = warehouse.delta(victims).version()
    resp = warehouse.sql(statement.format(data_dir=warehouse.data_dir))
    assert resp.status.state == StatementState.FAILED, resp.status
    message = resp.status.error.message
    if function is not None:
        assert message == (
            f"[UNRESOLVABLE_TABLE_VALUED_FUNCTION] Could not resolve `{function}` to a "
            "table-valued function. The local stack reads only the tables of its catalog "
            "(and range(...)); file and system table functions are not available. "
            "SQLSTATE: 42883"
        )
    assert "root:" not in message and "PATH=" not in message
    assert warehouse.delta(victims).version() == version


@pytest.mark.parametrize(
    "statement",
    [
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "ATTACH '/tmp/x.duckdb' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "COPY (SELECT 1) TO '/tmp/dwbench-probe.csv'",
        "PRAGMA version",
    ],
)
def test_only_supported_statements_run(warehouse: Warehouse, statement: str) -> None:
    resp = warehouse.sql(statement)
    assert resp.status.state == StatementState.FAILED, resp.status
    assert resp.status.error.message.startswith(("[UNSUPPORTED_FEATURE]", "[PARSE_SYNTAX_ERROR]"))
    assert not Path("/tmp/dwbench-probe.csv").exists()


def test_the_engine_stays_locked_down_for_every_statement() -> None:
    """Even a statement that reached DuckDB could neither read a file nor unlock it."""
    engine = locked_duckdb()
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        engine.cursor().sql("SELECT * FROM read_text('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
        engine.cursor().execute("SET enable_external_access = true")
    assert engine.cursor().sql("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT " + "(" * 5000 + "1" + ")" * 5000,
        "SELECT " + "NOT " * 20000 + "true",
        "SELECT " + "array(" * 3000 + "1" + ")" * 3000,
        "SELECT " + "1 + " * 5000 + "1",
    ],
)
def test_deeply_nested_statements_fail_as_sql(warehouse: Warehouse, statement: str) -> None:
    failed(warehouse.sql(statement), "PARSE_SYNTAX_ERROR", "42601")
    warehouse.ok("SELECT 1")


def test_drop_table(warehouse: Warehouse) -> None:
    warehouse.ok("CREATE SCHEMA IF NOT EXISTS main.default")  # schemas exist implicitly
    warehouse.ok("CREATE TABLE doomed (a INT)")
    path = warehouse.data_dir / "tables" / "main" / "default" / "doomed"
    assert path.exists()
    warehouse.ok("DROP TABLE doomed")
    assert not path.exists()
    failed(warehouse.sql("SELECT * FROM doomed"), "TABLE_OR_VIEW_NOT_FOUND", "42P01")
    failed(warehouse.sql("DROP TABLE doomed"), "TABLE_OR_VIEW_NOT_FOUND", "42P01")
    warehouse.ok("DROP TABLE IF EXISTS doomed")


def test_wrong_or_missing_token_is_refused(warehouse: Warehouse) -> None:
    wrong = secrets.token_urlsafe(16)
    with pytest.raises(Unauthenticated) as caught:
        client(warehouse.url, wrong).statement_execution.execute_statement("SELECT 1", WAREHOUSE)
    assert wrong not in str(caught.value) and warehouse.token not in str(caught.value)
    resp = requests.get(f"{warehouse.url}/api/2.0/sql/warehouses/{WAREHOUSE}", timeout=5)
    assert resp.status_code == 401
    assert resp.json()["error_code"] == "UNAUTHENTICATED"


def test_async_statement_is_polled_until_it_succeeds(warehouse: Warehouse) -> None:
    resp = warehouse.sql("SELECT count(*) AS n FROM range(1000)", wait_timeout="0s")
    assert resp.status.state in (StatementState.PENDING, StatementState.RUNNING)
    assert resp.result is None
    done = poll(warehouse, resp.statement_id)
    assert done.status.state == StatementState.SUCCEEDED
    assert done.result.data_array == [["1000"]]


def test_cancel_stops_a_running_statement(warehouse: Warehouse) -> None:
    resp = warehouse.sql(SLOW_QUERY, wait_timeout="0s")
    time.sleep(0.2)
    warehouse.w.statement_execution.cancel_execution(resp.statement_id)
    assert poll(warehouse, resp.statement_id, timeout_s=5).status.state == StatementState.CANCELED
    with pytest.raises(NotFound):
        warehouse.w.statement_execution.cancel_execution("no-such-statement")


def test_wait_timeout_with_cancel_cancels(warehouse: Warehouse) -> None:
    started = time.monotonic()
    resp = warehouse.sql(
        SLOW_QUERY, wait_timeout="5s", on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CANCEL
    )
    assert resp.status.state == StatementState.CANCELED
    assert 4.5 < time.monotonic() - started < 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wait_timeout": "3s"},
        {"wait_timeout": "51s"},
        {"wait_timeout": "ten"},
        {"disposition": Disposition.EXTERNAL_LINKS},
        {"format": Format.CSV},
        {"row_limit": 0},
        {"parameters": [param(f"p{i}", str(i), "INT") for i in range(257)]},
    ],
)
def test_bad_requests_are_http_400(warehouse: Warehouse, kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        warehouse.w.statement_execution.execute_statement("SELECT 1", WAREHOUSE, **kwargs)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_statement_text_is_limited_to_16_mib(warehouse: Warehouse) -> None:
    filler = "x" * (16 * 1024 * 1024)
    with pytest.raises(BadRequest, match="16 MiB"):
        warehouse.w.statement_execution.execute_statement(f"SELECT '{filler}'", WAREHOUSE)
    ok = warehouse.ok("SELECT length(:s) AS n", param("s", filler[: 1024 * 1024]))
    assert ok.result.data_array == [[str(1024 * 1024)]]


def test_malformed_json_body_is_http_400(warehouse: Warehouse) -> None:
    resp = requests.post(
        f"{warehouse.url}/api/2.0/sql/statements",
        data=b"{not json",
        headers={"Authorization": f"Bearer {warehouse.token}"},
        timeout=5,
    )
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_products_ddl_and_a_full_parameter_batch(warehouse: Warehouse) -> None:
    """The workload of the SQL writer: the shipped DDL, 23 rows x 11 parameters = 253."""
    ddl = (Path(__file__).parents[2] / "sql" / "products_table.sql").read_text()
    warehouse.ok(ddl.replace("main.default.products", "main.default.products_sql"))
    empty = warehouse.ok("SELECT * FROM products_sql")
    assert (empty.manifest.total_row_count, empty.manifest.total_chunk_count) == (0, 0)
    columns = [c.name for c in empty.manifest.schema.columns]
    types = ["STRING"] * 3 + ["DOUBLE", "STRING", "DATE", "DATE", "TIMESTAMP"] + ["STRING"] * 3
    tuples, params = [], []
    for r in range(23):
        tuples.append("(" + ", ".join(f":{c}_{r}" for c in columns) + ")")
        values = [f"rec-{r}", "p-1", "Widget", "9.99", "tools", "2024-01-01", "2024-12-31"]
        values += ["2024-06-01T12:00:00Z", "batch-1", "sql", "x" * 1000]
        params += [param(f"{c}_{r}", v, t) for c, v, t in zip(columns, values, types, strict=True)]
    resp = warehouse.ok(f"INSERT INTO products_sql VALUES {', '.join(tuples)}", *params)
    assert resp.result.data_array == [["23", "23"]]
    table = warehouse.delta("products_sql").to_pyarrow_table()
    assert table.num_rows == 23
    assert sorted(table.column("record_id").to_pylist()) == sorted(f"rec-{r}" for r in range(23))
