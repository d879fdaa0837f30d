"""The local Files API (/Volumes) and COPY INTO, driven by databricks-sdk over real sockets."""

from __future__ import annotations

import datetime as dt
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    AlreadyExists,
    BadRequest,
    NotFound,
    NotImplemented,
    RequestLimitExceeded,
    ResourceAlreadyExists,
    Unauthenticated,
)
from databricks.sdk.service.sql import StatementResponse, StatementState
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.volumes import Volumes
from tests.emulator.statement_support import client, served_statement_app

WAREHOUSE = "local"
MAX_FILE_BYTES = 64 * 1024
STAGE = "/Volumes/main/default/stage"
TABLE_DDL = (
    "CREATE TABLE main.default.{name} "
    "(id BIGINT NOT NULL, name STRING, price DOUBLE, at TIMESTAMP, tags ARRAY<STRING>)"
)


@dataclass
class Stack:
    url: str
    token: str
    data_dir: Path
    w: WorkspaceClient

    def sql(self, statement: str) -> StatementResponse:
        return self.w.statement_execution.execute_statement(
            statement=statement, warehouse_id=WAREHOUSE, wait_timeout="30s"
        )

    def ok(self, statement: str) -> Any:
        resp: Any = self.sql(statement)
        assert resp.status.state == StatementState.SUCCEEDED, resp.status
        return resp

    def table(self) -> str:
        name = f"t_{secrets.token_hex(4)}"
        self.ok(TABLE_DDL.format(name=name))
        return name

    def rows(self, name: str) -> list[dict[str, Any]]:
        path = self.data_dir / "tables" / "main" / "default" / name
        return sorted(DeltaTable(str(path)).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])

    def version(self, name: str) -> int:
        return DeltaTable(str(self.data_dir / "tables" / "main" / "default" / name)).version()

    def stored(self, volume_path: str) -> Path:
        return self.data_dir / "volumes" / volume_path.removeprefix("/Volumes/")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The statement app with the Files API, under uvicorn in a thread of its own."""
    data_dir = tmp_path_factory.mktemp("volumes-stack")
    token = secrets.token_urlsafe(16)
    volumes = Volumes(data_dir, max_file_bytes=MAX_FILE_BYTES)
    with served_statement_app(
        Catalog(data_dir), token, warehouse_id=WAREHOUSE, volumes=volumes
    ) as url:
        yield Stack(url, token, data_dir, client(url, token))


AT = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC)
ROWS = [
    {"id": 1, "name": "tea", "price": 0.1 + 0.2, "at": AT, "tags": ["a", "b"]},
    {"id": 2, "name": None, "price": None, "at": None, "tags": []},
    {"id": 3, "name": "it's", "price": -0.0, "at": AT, "tags": None},
]
ARROW = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("at", pa.timestamp("us", "UTC")),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


def parquet(table: pa.Table) -> io.BytesIO:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    buffer.seek(0)
    return buffer


def failed(resp: Any, error_class: str, sql_state: str) -> str:
    assert resp.status.state == StatementState.FAILED, resp.status
    message: str = resp.status.error.message
    assert message.startswith(f"[{error_class}]"), message
    assert resp.status.sql_state == sql_state
    return message


# -- the Files API ---------------------------------------------------------------------------


def test_upload_metadata_delete(stack):
    path = f"{STAGE}/files/one.bin"
    stack.w.files.upload(path, io.BytesIO(b"\x00\x01payload"), overwrite=True)
    assert stack.stored(path).read_bytes() == b"\x00\x01payload"
    assert stack.w.files.get_metadata(path).content_length == 9
    with pytest.raises(AlreadyExists, match="already exists; upload with overwrite=true"):
        stack.w.files.upload(path, io.BytesIO(b"other"), overwrite=False)
    assert stack.stored(path).read_bytes() == b"\x00\x01payload"
    stack.w.files.upload(path, io.BytesIO(b"replaced"), overwrite=True)
    assert stack.stored(path).read_bytes() == b"replaced"
    stack.w.files.upload(path, io.BytesIO(b"unspecified"))  # "true or unspecified"
    assert stack.stored(path).read_bytes() == b"unspecified"
    assert stack.w.files.download(path).contents.read() == b"unspecified"
    with pytest.raises(Unauthenticated, match="Invalid access token"):
        client(stack.url, "not-the-token").files.download(path).contents.read()
    stack.w.files.delete(path)
    with pytest.raises(NotFound, match=f"The file {path} does not exist"):
        stack.w.files.download(path).contents.read()
    assert not stack.stored(path).exists()
    with pytest.raises(NotFound, match=f"The file {path} does not exist"):
        stack.w.files.delete(path)


def test_volume_names_are_case_insensitive_paths_inside_are_not(stack):
    stack.w.files.upload("/Volumes/Main/Default/Stage/Case/File.txt", io.BytesIO(b"x"))
    assert (stack.data_dir / "volumes/main/default/stage/Case/File.txt").read_bytes() == b"x"
    with pytest.raises(NotFound):
        stack.w.files.delete("/Volumes/main/default/stage/case/file.txt")
    stack.w.files.delete("/Volumes/main/default/stage/Case/File.txt")


def test_wrong_token_is_refused_and_nothing_is_stored(stack):
    path = f"{STAGE}/files/denied.bin"
    with pytest.raises(Unauthenticated, match="Invalid access token"):
        client(stack.url, "not-the-token").files.upload(path, io.BytesIO(b"x"))
    assert not stack.stored(path).exists()
    response = httpx.put(f"{stack.url}/api/2.0/fs/files{path}", content=b"x")
    assert response.status_code == 401
    assert response.json() == {
        "error_code": "UNAUTHENTICATED",
        "message": "No access token was sent.",
    }
    assert not stack.stored(path).exists()


@pytest.mark.parametrize(
    ("raw_path", "expected"),
    [
        ("/Volumes/main/default/stage/%2e%2e/%2e%2e/%2e%2e/%2e%2e/escaped.txt", "'..' segment"),
        ("/Volumes/main/default/stage/a/%2E%2E/b.txt", "'..' segment"),
        ("/Volumes/main/default/stage//tmp/escaped.txt", "an empty, '.' or '..' segment"),
        ("/Volumes/main/default/%2e%2e/x.txt", "does not name a volume"),
        ("/Volumes/main/default/stage/a%5c..%5cb.txt", "backslash"),
        ("/tmp/escaped.txt", "is not in a volume"),
        ("/Workspace/Users/x.txt", "is not in a volume"),
        ("/Volumes/main/default/stage", "is a volume, not a file"),
    ],
)
def test_paths_outside_a_volume_are_refused(stack, raw_path, expected):
    before = sorted(p for p in stack.data_dir.rglob("*") if p.is_file())
    headers = {"Authorization": f"Bearer {stack.token}"}
    # httpx keeps percent-encoded dots as they are, so the server sees what a hostile
    # client sends; the server decodes them.
    response = httpx.put(
        f"{stack.url}/api/2.0/fs/files{raw_path}?overwrite=true", content=b"x", headers=headers
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert expected in body["message"]
    assert sorted(p for p in stack.data_dir.rglob("*") if p.is_file()) == before
    assert not (stack.data_dir.parent / "escaped.txt").exists()


def test_the_sdk_path_with_dot_segments_is_refused(stack):
    # The SDK's HTTP client removes the dot segments itself; what is left is outside any
    # volume, and refused as that.
    with pytest.raises(BadRequest, match="The path '/escaped.txt' is not in a volume"):
        stack.w.files.upload(f"{STAGE}/x/../../../../../escaped.txt", io.BytesIO(b"x"))
    assert not (stack.data_dir / "escaped.txt").exists()


def test_files_over_the_cap_are_refused_and_leave_nothing(stack):
    path = f"{STAGE}/files/big.bin"
    with pytest.raises(RequestLimitExceeded, match=f"files of up to {MAX_FILE_BYTES} bytes"):
        stack.w.files.upload(path, io.BytesIO(b"x" * (MAX_FILE_BYTES + 1)), overwrite=True)
    assert not stack.stored(path).exists()
    assert list(stack.stored(path).parent.glob("*.partial")) == []
    # Without a declared length (chunked), the stream is cut off at the cap too.
    headers = {"Authorization": f"Bearer {stack.token}"}
    response = httpx.put(
        f"{stack.url}/api/2.0/fs/files{path}",
        content=iter([b"y" * 40_000, b"y" * 40_000]),
        headers=headers,
    )
    assert response.status_code == 413 and response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert not stack.stored(path).exists()
    assert list(stack.stored(path).parent.glob(".*")) == []


def test_a_file_where_a_directory_is_needed(stack):
    stack.w.files.upload(f"{STAGE}/blocker", io.BytesIO(b"a file"), overwrite=True)
    with pytest.raises(ResourceAlreadyExists, match=f"{STAGE}/blocker is a file"):
        stack.w.files.upload(f"{STAGE}/blocker/inside.parquet", io.BytesIO(b"x"))
    with pytest.raises(NotFound):
        stack.w.files.delete(f"{STAGE}/blocker/inside.parquet")


def test_multipart_uploads_are_not_served(stack):
    headers = {"Authorization": f"Bearer {stack.token}"}
    url = f"{stack.url}/api/2.0/fs/files{STAGE}/big.parquet?action=initiate-upload"
    response = httpx.post(url, headers=headers)
    assert response.status_code == 501
    assert "does not serve multipart uploads" in response.json()["message"]
    with pytest.raises(NotImplemented):
        stack.w.api_client.do("POST", f"/api/2.0/fs/files{STAGE}/big.parquet")


# -- COPY INTO --------------------------------------------------------------------------------


def staged(stack: Stack, table: pa.Table, name: str | None = None) -> str:
    path = f"{STAGE}/copy/{name or secrets.token_hex(4)}.parquet"
    stack.w.files.upload(path, parquet(table), overwrite=True)
    return path


def test_copy_into_loads_the_file_exactly_and_answers_the_counts(stack):
    name = stack.table()
    path = staged(stack, pa.Table.from_pylist(ROWS, schema=ARROW))
    resp = stack.ok(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET")
    columns = [(c.name, c.type_name.value, c.type_text) for c in resp.manifest.schema.columns]
    assert columns == [
        ("num_affected_rows", "LONG", "BIGINT"),
        ("num_inserted_rows", "LONG", "BIGINT"),
        ("num_skipped_corrupt_files", "LONG", "BIGINT"),
    ]
    assert resp.result.data_array == [["3", "3", "0"]]
    assert stack.rows(name) == ROWS


def test_copy_into_is_idempotent_per_file_unless_forced(stack):
    name = stack.table()
    directory = f"{STAGE}/idem-{secrets.token_hex(3)}"
    data = pa.Table.from_pylist(ROWS, schema=ARROW)
    stack.w.files.upload(f"{directory}/a.parquet", parquet(data))
    stack.w.files.upload(f"{directory}/b.parquet", parquet(data.slice(0, 1)))
    first = stack.ok(
        f"COPY INTO `main`.`default`.`{name}` FROM '{directory}' FILEFORMAT = PARQUET "
        "FILES = ('a.parquet')"
    )
    assert first.result.data_array == [["3", "3", "0"]]
    # The directory: a.parquet was loaded, so only b.parquet is.
    again = stack.ok(f"COPY INTO main.default.{name} FROM '{directory}' FILEFORMAT = PARQUET")
    assert again.result.data_array == [["1", "1", "0"]]
    nothing = stack.ok(f"COPY INTO main.default.{name} FROM '{directory}' FILEFORMAT = PARQUET")
    assert nothing.result.data_array == [["0", "0", "0"]]
    forced = stack.ok(
        f"COPY INTO main.default.{name} FROM '{directory}' FILEFORMAT = PARQUET "
        "COPY_OPTIONS ('force' = 'true', 'mergeSchema' = 'false')"
    )
    assert forced.result.data_array == [["4", "4", "0"]]
    assert [r["id"] for r in stack.rows(name)] == [1, 1, 1, 1, 2, 2, 3, 3]
    # The loaded files are in the table's commits: a stack started again on the same data
    # (here a second catalog over it) still skips them.
    table = Catalog(stack.data_dir).get(f"main.default.{name}")
    assert table.loaded_files() == {f"{directory}/a.parquet", f"{directory}/b.parquet"}


def test_missing_nullable_columns_load_as_null(stack):
    name = stack.table()
    path = staged(stack, pa.table({"id": pa.array([7], pa.int64()), "name": ["only"]}))
    stack.ok(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET")
    assert stack.rows(name) == [{"id": 7, "name": "only", "price": None, "at": None, "tags": None}]


@pytest.mark.parametrize(
    ("data", "difference"),
    [
        (
            pa.table({"id": pa.array([1], pa.int64()), "extra": ["x"]}),
            "the file has column `extra`, which the table does not",
        ),
        (
            pa.table({"id": pa.array([1], pa.int64()), "price": ["1.5"]}),
            "`price` is STRING in the file and DOUBLE in the table",
        ),
        (
            pa.table({"id": pa.array([1], pa.int32())}),
            "`id` is INT in the file and BIGINT in the table",
        ),
        (
            pa.table({"id": pa.array([1], pa.int64()), "at": pa.array([1], pa.timestamp("us"))}),
            "`at` is TIMESTAMP_NTZ in the file and TIMESTAMP in the table",
        ),
        (pa.table({"name": ["no id"]}), "the file has no column `id`, which is NOT NULL"),
    ],
)
def test_a_schema_mismatch_fails_and_writes_nothing(stack, data, difference):
    name = stack.table()
    stack.ok(f"INSERT INTO main.default.{name} (id) VALUES (100)")
    version = stack.version(name)
    path = staged(stack, data)
    message = failed(
        stack.sql(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET"),
        "COPY_INTO_SCHEMA_MISMATCH_WITH_TARGET_TABLE",
        "42KDG",
    )
    assert f"copying {path} into the table `main`.`default`.`{name}`" in message
    assert difference in message and "Nothing was written" in message
    assert [r["id"] for r in stack.rows(name)] == [100] and stack.version(name) == version
    # Not loaded, so a fixed file of the same name is not skipped later.
    stack.w.files.upload(path, parquet(pa.Table.from_pylist(ROWS[:1], schema=ARROW)))
    resp = stack.ok(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET")
    assert resp.result.data_array == [["1", "1", "0"]]


def test_null_in_a_not_null_column_fails_and_writes_nothing(stack):
    name = stack.table()
    path = staged(stack, pa.table({"id": pa.array([1, None], pa.int64())}))
    failed(
        stack.sql(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET"),
        "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
        "23502",
    )
    assert stack.rows(name) == []


def test_a_file_that_is_not_parquet_fails_and_writes_nothing(stack):
    name = stack.table()
    path = f"{STAGE}/copy/not-parquet.parquet"
    stack.w.files.upload(path, io.BytesIO(b"id,name\n1,x\n"), overwrite=True)
    message = failed(
        stack.sql(f"COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET"),
        "FAILED_READ_FILE.NO_HINT",
        "KD001",
    )
    assert f"Error while reading file {path}" in message
    assert stack.rows(name) == []


@pytest.mark.parametrize(
    ("statement", "error_class", "sql_state", "text"),
    [
        (
            "COPY INTO main.default.{name} FROM",
            "PARSE_SYNTAX_ERROR",
            "42601",
            "COPY INTO needs one source",
        ),
        (
            "COPY INTO main.default.{name} FROM '{path}'",
            "PARSE_SYNTAX_ERROR",
            "42601",
            "COPY INTO needs FILEFORMAT = PARQUET",
        ),
        ("COPY INTO", "PARSE_SYNTAX_ERROR", "42601", "Syntax error"),
        (
            "COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = CSV",
            "UNSUPPORTED_FEATURE",
            "0A000",
            "FILEFORMAT = CSV is not supported",
        ),
        (
            "COPY INTO main.default.{name} FROM (SELECT 1) FILEFORMAT = PARQUET",
            None,
            None,
            None,
        ),
        (
            "COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET "
            "COPY_OPTIONS ('mergeSchema' = 'true')",
            "UNSUPPORTED_FEATURE",
            "0A000",
            "COPY_OPTIONS ('mergeSchema' = 'true')",
        ),
        (
            "COPY INTO main.default.{name} FROM '{path}' FILEFORMAT = PARQUET "
            "COPY_OPTIONS ('force' = 'maybe')",
            "INVALID_PARAMETER_VALUE",
            "22023",
            "'force' must be 'true' or 'false'",
        ),
        (
            "COPY INTO main.default.{name} FROM '/tmp/x.parquet' FILEFORMAT = PARQUET",
            "INVALID_PARAMETER_VALUE",
            "22023",
            "is not in a volume",
        ),
        (
            "COPY INTO main.default.{name} FROM '/Volumes/main/default/stage/../../x' "
            "FILEFORMAT = PARQUET",
            "INVALID_PARAMETER_VALUE",
            "22023",
            "'..' segment",
        ),
        (
            "COPY INTO main.default.{name} FROM '{STAGE}/nothing-here' FILEFORMAT = PARQUET",
            "PATH_NOT_FOUND",
            "42K03",
            "Path does not exist: /Volumes/main/default/stage/nothing-here.",
        ),
        (
            "COPY INTO main.default.no_such_table FROM '{path}' FILEFORMAT = PARQUET",
            "TABLE_OR_VIEW_NOT_FOUND",
            "42P01",
            "`main`.`default`.`no_such_table`",
        ),
    ],
)
def test_malformed_copy_into_fails_clearly_and_writes_nothing(
    stack, statement, error_class, sql_state, text
):
    name = stack.table()
    path = staged(stack, pa.Table.from_pylist(ROWS, schema=ARROW))
    resp = stack.sql(statement.format(name=name, path=path, STAGE=STAGE))
    assert resp.status.state == StatementState.FAILED, resp.status
    if error_class is not None:
        message = failed(resp, error_class, sql_state)
        assert text in message, message
    assert stack.rows(name) == []
    assert stack.stored(path).exists()  # COPY INTO never removes its source
