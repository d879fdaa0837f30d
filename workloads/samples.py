"""Sample rows to replay (`--rows-from FILE`): JSON lines, CSV or Parquet, checked against
the schema up front (a bad row fails with its line number and the column), then cycled,
with fresh ids in the id column and the batch columns filled per batch.

JSON lines take the JSON forms of the input model (`workloads.inputs`); CSV takes text
that Arrow casts to each column's type (empty = NULL; complex types cannot come from CSV);
Parquet columns are matched by name and cast.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from dwbench.errors import InvalidSchemaError
from workloads.base import BatchMaker, TableRef
from workloads.generate import PooledRows
from workloads.inputs import NUL_RULE
from workloads.schema import Column, TableSchema
from workloads.types import MapType

MAX_SAMPLE_ROWS = 1_000_000


def read_samples(path: Path, schema: TableSchema) -> pa.Table:
    """The file's rows as an Arrow table of the schema; InvalidSchemaError on a bad row."""
    if not path.is_file():
        raise InvalidSchemaError(f"--rows-from {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        table = _read_jsonl(path, schema)
    elif suffix == ".csv":
        table = _read_csv(path, schema)
    elif suffix in (".parquet", ".pq"):
        table = _read_parquet(path, schema)
    else:
        raise InvalidSchemaError(
            f"--rows-from {path.name}: unknown format; use .jsonl, .csv or .parquet"
        )
    if table.num_rows == 0:
        raise InvalidSchemaError(f"--rows-from {path.name}: the file has no rows")
    return table


def _read_jsonl(path: Path, schema: TableSchema) -> pa.Table:
    from workloads.base import Workload
    from workloads.inputs import input_model

    # A model over every column: sample rows carry the whole row.
    holder = Workload(
        name="samples",
        label="samples",
        description="",
        schema=schema,
        table=TableRef("samples", schema, "main.default.samples", "public.samples"),
        source=lambda **_: None,  # type: ignore[arg-type, return-value]
        input_columns=schema.names,
    )
    model = input_model(holder)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except (ValueError, RecursionError) as exc:  # a number past the digit limit, too
                problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
                raise InvalidSchemaError(
                    f"{path.name} line {number}: not JSON: {problem}"
                ) from None
            try:
                item = model.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(map(str, first["loc"])) or "the row"
                raise InvalidSchemaError(
                    f"{path.name} line {number}: column {where}: {first['msg']}",
                    column=str(first["loc"][0]) if first["loc"] else None,
                ) from None
            rows.append(item.model_dump(by_alias=True))
            if len(rows) > MAX_SAMPLE_ROWS:
                raise InvalidSchemaError(f"{path.name}: more than {MAX_SAMPLE_ROWS:,} rows")
    arrays = []
    for col in schema.columns:
        values = [row.get(col.name) for row in rows]
        if isinstance(col.type, MapType):
            values = [None if v is None else list(v.items()) for v in values]
        arrays.append(pa.array(values, type=col.type.arrow()))
    return pa.Table.from_arrays(arrays, schema=schema.arrow())


def _read_csv(path: Path, schema: TableSchema) -> pa.Table:
    complex_columns = [c.name for c in schema.columns if c.type.is_complex]
    if complex_columns:
        raise InvalidSchemaError(
            f"{path.name}: CSV cannot carry {', '.join(complex_columns)} (nested types); "
            "use JSON lines or Parquet"
        )
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        unknown = [h for h in header if schema.column(h) is None]
        if unknown:
            raise InvalidSchemaError(
                f"{path.name} line 1: {', '.join(unknown)} not columns of the schema",
                column=unknown[0],
            )
        texts: dict[str, list[str | None]] = {c.name: [] for c in schema.columns}
        by_header = {h: schema.require(h, "column").name for h in header}
        for row in reader:
            for col in schema.columns:
                texts[col.name].append(None)
            for h, value in row.items():
                if h is None:
                    raise InvalidSchemaError(f"{path.name} line {reader.line_num}: extra fields")
                texts[by_header[h]][-1] = value if value != "" else None
    arrays = [_cast_text(path, col, texts[col.name]) for col in schema.columns]
    return pa.Table.from_arrays(arrays, schema=schema.arrow())


def _cast_text(path: Path, col: Column, values: list[str | None]) -> pa.Array:
    target = col.type.arrow()
    try:
        array = pa.array(values, pa.string()).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for number, value in enumerate(values, start=2):  # line 1 is the header
            try:
                pa.array([value], pa.string()).cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InvalidSchemaError(
                    f"{path.name} line {number}: column {col.name}: {value!r} is not "
                    f"{col.type.sql()}",
                    column=col.name,
                ) from None
        raise
    _check_nulls(path, col, array, first_line=2)
    _check_nul_characters(path, col, array, first_line=2)
    return array


def _check_nulls(
    path: Path, col: Column, array: pa.Array | pa.ChunkedArray, first_line: int
) -> None:
    if not col.nullable and array.null_count:
        row = array.is_null().index(True).as_py()
        raise InvalidSchemaError(
            f"{path.name} line {row + first_line}: column {col.name} is NOT NULL but has no value",
            column=col.name,
        )


def _check_nul_characters(
    path: Path, col: Column, array: pa.Array | pa.ChunkedArray, first_line: int
) -> None:
    """The input model's rule for STRING columns (`workloads.inputs.NUL_RULE`), here too."""
    if not pa.types.is_string(array.type) or not len(array):
        return
    found = pc.match_substring(array, "\0")
    if pc.any(found).as_py():
        row = pc.index(found, True).as_py()
        raise InvalidSchemaError(
            f"{path.name} line {row + first_line}: column {col.name}: {NUL_RULE}",
            column=col.name,
        )


def _read_parquet(path: Path, schema: TableSchema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidSchemaError(f"{path.name}: not a Parquet file: {exc}") from None
    names = {n.lower(): n for n in table.schema.names}
    unknown = [n for n in table.schema.names if schema.column(n) is None]
    if unknown:
        raise InvalidSchemaError(
            f"{path.name}: {', '.join(unknown)} not columns of the schema", column=unknown[0]
        )
    arrays = []
    for col in schema.columns:
        source = names.get(col.name.lower())
        if source is None:
            array: pa.ChunkedArray | pa.Array = pa.nulls(table.num_rows, col.type.arrow())
        else:
            try:
                array = table.column(source).cast(col.type.arrow())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidSchemaError(
                    f"{path.name}: column {col.name} ({table.schema.field(source).type}) does "
                    f"not fit {col.type.sql()}: {exc}",
                    column=col.name,
                ) from None
        _check_nulls(path, col, array, first_line=1)
        _check_nul_characters(path, col, array, first_line=1)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema.arrow())


def sample_source(table: TableRef, path: Path) -> Callable[..., BatchMaker]:
    pool = read_samples(path, table.schema)  # checked now: a bad file fails at registration

    def source(
        *, seed: int = 0, record_bytes: int = 0, pad_column: str | None = None, **_: Any
    ) -> BatchMaker:
        # The user's own rows are replayed as they are; padded only on a column they name.
        pad = record_bytes if pad_column else 0
        return PooledRows(table, pool, seed=seed, record_bytes=pad, pad_column=pad_column)

    return source
