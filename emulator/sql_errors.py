"""The error of a SQL statement that fails the way a warehouse fails it."""

from __future__ import annotations

import pyarrow as pa

from emulator.schema import TableSchema
from emulator.value_ranges import ValueOutOfRangeError, check_batch


class SqlError(Exception):
    """A statement that fails the way a warehouse fails it: HTTP 200, state FAILED.

    The message starts with the Databricks error class (`[TABLE_OR_VIEW_NOT_FOUND] ...`)
    and ends with the SQLSTATE, as a warehouse's messages do.
    """

    def __init__(
        self,
        error_class: str | None,
        text: str,
        sql_state: str | None = None,
        *,
        error_code: str = "BAD_REQUEST",
        position: str | None = None,
    ) -> None:
        message = f"[{error_class}] {text}" if error_class else text
        if sql_state:
            message += f" SQLSTATE: {sql_state}"
        if position:
            message += f" ({position})"
        super().__init__(message)
        self.error_class = error_class
        self.sql_state = sql_state
        self.error_code = error_code
        self.message = message


def out_of_range(table: str, path: str, problem: str, kind: str, where: str) -> SqlError:
    """The warehouse's error for a value its column type cannot store.

    `where` says which row: "row 3 of the VALUES" or "row 3 of /Volumes/.../f.parquet".
    """
    text = f"{where}, column `{path}` of {table}: {problem}."
    if kind == "datetime":
        return SqlError("DATETIME_OVERFLOW", f"Datetime operation overflow: {text}", "22008")
    if kind == "null":
        return SqlError(
            "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
            f"NOT NULL constraint violated for column: {path} ({where}).",
            "23502",
        )
    return SqlError("NUMERIC_VALUE_OUT_OF_RANGE.WITHOUT_SUGGESTION", text, "22003")


def check_values(
    batch: pa.RecordBatch | pa.Table, schema: TableSchema, table: str, rows: str
) -> None:
    """`check_batch`, failing as the warehouse does (`out_of_range`); `rows` names the rows
    the batch came from ("of the rows", "of /Volumes/.../f.parquet")."""
    try:
        check_batch(batch, schema)
    except ValueOutOfRangeError as exc:
        where = f"Row {exc.record + 1} {rows}"
        raise out_of_range(table, exc.path, exc.problem, exc.kind, where) from None
