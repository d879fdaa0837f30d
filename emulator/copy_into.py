"""COPY INTO of Parquet files in a volume, as a SQL warehouse runs it.

    COPY INTO <table> FROM '/Volumes/<catalog>/<schema>/<volume>/<file or directory>'
      FILEFORMAT = PARQUET
      [ FILES = ('<name>', ...) ]
      [ FORMAT_OPTIONS ('mergeSchema' = 'false') ]
      [ COPY_OPTIONS ('force' = 'true' | 'false', 'mergeSchema' = 'false') ]

The files are read with pyarrow and checked against the table before anything is written:
every file column must be a table column of the same type (nullability aside), and a file
may leave out nullable columns (they load as NULL). A mismatch fails the statement with
COPY_INTO_SCHEMA_MISMATCH_WITH_TARGET_TABLE and writes nothing. The rows of all files are
appended in one commit, through the table's writer, like an INSERT.

Like the real command it is idempotent: a file this table loaded before is skipped (unless
'force' = 'true'). The record of loaded files lives in memory, so it starts over when the
local stack restarts. The result is one row: num_affected_rows, num_inserted_rows,
num_skipped_corrupt_files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from emulator.catalog import Table
from emulator.schema import Column, TableSchema
from emulator.sql_errors import SqlError, check_values
from emulator.volumes import FilesApiError, Volumes


@dataclass(frozen=True)
class CopyRows:
    """Rows read from files, checked against the table; the caller appends them."""

    name: str
    batch: pa.RecordBatch
    files: tuple[str, ...]  # the files these rows came from (recorded as loaded)
    force: bool


def _unsupported(what: str) -> SqlError:
    return SqlError(
        "UNSUPPORTED_FEATURE",
        f"{what} is not supported by the local stack's COPY INTO; it loads PARQUET files "
        "from a volume (FILES, and COPY_OPTIONS 'force').",
        "0A000",
    )


def _syntax(text: str) -> SqlError:
    return SqlError("PARSE_SYNTAX_ERROR", text, "42601")


def _quoted(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


def _options(param: exp.Expr, clause: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in param.expressions:
        if isinstance(item, exp.SequenceProperties):
            continue  # sqlglot's marker between the pairs
        if not isinstance(item, exp.Property):
            raise _syntax(f"{clause} takes ('key' = 'value', ...), got {item.sql('databricks')}.")
        key, value = item.this, item.args.get("value")
        key_text = key.name if isinstance(key, exp.Literal | exp.Identifier | exp.Var) else None
        if key_text is None or not isinstance(value, exp.Literal | exp.Boolean):
            raise _syntax(f"{clause} takes ('key' = 'value', ...), got {item.sql('databricks')}.")
        options[key_text.lower()] = str(value.this if isinstance(value, exp.Literal) else value)
    return options


def _flag(options: dict[str, str], key: str, clause: str) -> bool:
    value = options.pop(key, "false").lower()
    if value not in ("true", "false"):
        raise SqlError(
            "INVALID_PARAMETER_VALUE",
            f"{clause} option '{key}' must be 'true' or 'false', got '{value}'.",
            "22023",
        )
    return value == "true"


@dataclass(frozen=True)
class CopySource:
    location: str
    files: tuple[str, ...] | None
    force: bool


def parse_copy(tree: exp.Copy) -> tuple[exp.Table, CopySource]:
    """The target table and what to load, or SqlError for what cannot be run."""
    if not tree.args.get("kind"):
        raise _unsupported("COPY <table> TO")
    target = tree.this
    if isinstance(target, exp.Schema):
        raise _unsupported("A column list after the COPY INTO table")
    if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
        raise _syntax("COPY INTO needs a table name: COPY INTO <table> FROM '<path>' ...")
    credentials = tree.args.get("credentials")
    if credentials is not None and any(credentials.args.values()):
        raise _unsupported("WITH (CREDENTIAL / ENCRYPTION)")
    sources = tree.args.get("files") or []
    if len(sources) != 1:
        raise _syntax(
            "COPY INTO needs one source: COPY INTO <table> FROM '/Volumes/...' "
            "FILEFORMAT = PARQUET."
        )
    source = sources[0]
    if not isinstance(source, exp.Literal) or not source.is_string:
        raise _unsupported("A SELECT or expression as the COPY INTO source")
    params = {p.name.upper(): p for p in tree.args.get("params") or []}
    fileformat = params.pop("FILEFORMAT", None)
    if fileformat is None:
        raise _syntax("COPY INTO needs FILEFORMAT = PARQUET after the source.")
    format_name = fileformat.expression.name.upper() if fileformat.expression else ""
    if format_name != "PARQUET":
        raise _unsupported(f"FILEFORMAT = {format_name or '?'}")
    files: tuple[str, ...] | None = None
    listed = params.pop("FILES", None)
    if listed is not None:
        value = listed.expression
        items = (
            [value.this]
            if isinstance(value, exp.Paren)
            else list(value.expressions)
            if isinstance(value, exp.Tuple)
            else [value]
        )
        if not all(isinstance(i, exp.Literal) and i.is_string for i in items):
            raise _syntax("FILES takes a list of file names in quotes: FILES = ('a.parquet').")
        files = tuple(i.this for i in items)
    force = False
    for clause in ("FORMAT_OPTIONS", "COPY_OPTIONS"):
        param = params.pop(clause, None)
        if param is None:
            continue
        options = _options(param, clause)
        if _flag(options, "mergeschema", clause):
            raise _unsupported(f"{clause} ('mergeSchema' = 'true')")
        if clause == "COPY_OPTIONS":
            force = _flag(options, "force", clause)
        if options:
            raise _unsupported(f"{clause} option '{next(iter(options))}'")
    if params:
        raise _unsupported(f"The {next(iter(params))} clause")
    return target, CopySource(source.this, files, force)


def plan_copy(table: Table, source: CopySource, volumes: Volumes | None) -> CopyRows:
    """Read and check the source files (in a worker thread); nothing is written here."""
    if volumes is None:
        raise _unsupported("COPY INTO without the local stack's volumes")
    try:
        if source.files is None:
            found = volumes.list_files(source.location)
        else:
            base = source.location.rstrip("/")
            found = [(f"{base}/{n}", volumes.file_path(f"{base}/{n}")) for n in source.files]
            missing = [v for v, p in found if not p.is_file()]
            if missing:
                raise _path_not_found(missing[0])
    except FilesApiError as exc:
        raise SqlError("INVALID_PARAMETER_VALUE", exc.message, "22023") from None
    if source.files is None and not found:
        raise _path_not_found(source.location)
    loaded = table.loaded_files()
    todo = [(v, p) for v, p in found if source.force or v not in loaded]
    arrow_schema = table.schema.to_arrow()
    batches = [_read(table, v, p) for v, p in todo]
    batch = pa.RecordBatch.from_pylist([], schema=arrow_schema)
    if batches:
        combined = pa.concat_tables(batches).combine_chunks()
        if combined.num_rows:
            batch = combined.to_batches()[0]
    return CopyRows(table.name, batch, tuple(v for v, _ in todo), source.force)


def _path_not_found(path: str) -> SqlError:
    return SqlError("PATH_NOT_FOUND", f"Path does not exist: {path}.", "42K03")


def _read(table: Table, volume_path: str, path: object) -> pa.Table:
    try:
        data = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SqlError(
            "FAILED_READ_FILE.NO_HINT",
            f"Error while reading file {volume_path}: it is not a readable Parquet file ({exc}).",
            "KD001",
        ) from None
    return _conform(table.name, table.schema, volume_path, data)


def _conform(name: str, schema: TableSchema, volume_path: str, data: pa.Table) -> pa.Table:
    """The file's rows in the table's Arrow schema, or the schema difference as an error."""
    from emulator.sql_eval import _type_of

    by_name = {c.name.lower(): c for c in schema.columns}
    problems: list[str] = []
    arrays: dict[str, pa.ChunkedArray] = {}
    for field in data.schema:
        column = by_name.get(field.name.lower())
        if column is None:
            problems.append(f"the file has column `{field.name}`, which the table does not")
            continue
        if column.name in arrays:
            problems.append(f"the file has column `{field.name}` more than once")
            continue
        file_type = _type_of(field.type)
        if file_type is None or file_type.catalog_string() != column.type.catalog_string():
            shown = file_type.sql() if file_type is not None else "VOID"
            problems.append(f"`{field.name}` is {shown} in the file and {column.type} in the table")
            continue
        arrays[column.name] = data.column(field.name)
    for column in schema.columns:
        if column.name not in arrays and not column.nullable and not problems:
            problems.append(f"the file has no column `{column.name}`, which is NOT NULL")
    if problems:
        raise SqlError(
            "COPY_INTO_SCHEMA_MISMATCH_WITH_TARGET_TABLE",
            f"A schema mismatch was detected while copying {volume_path} into the table "
            f"{_quoted(name)}: {'; '.join(problems)}. Nothing was written. Fix the file, or "
            "evolve the table's schema (the local stack does not run 'mergeSchema').",
            "42KDG",
        )
    count = data.num_rows
    columns: list[pa.ChunkedArray | pa.Array] = []
    for column in schema.columns:
        array = arrays.get(column.name)
        if array is None:
            columns.append(pa.nulls(count, column.arrow_type))
            continue
        _check_not_null(column, array)
        columns.append(array.cast(column.arrow_type))
    conformed = pa.Table.from_arrays(columns, schema=schema.to_arrow())
    check_values(conformed, schema, _quoted(name), f"of {volume_path}")
    return conformed


def _check_not_null(column: Column, array: pa.ChunkedArray) -> None:
    if not column.nullable and array.null_count:
        raise SqlError(
            "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
            f"NOT NULL constraint violated for column: {column.name}.",
            "23502",
        )
