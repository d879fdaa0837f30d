"""A workload: a table schema, where its rows go, and where its rows come from.

`TableRef` is what a writer needs to know of a target: the schema and the table names on
each side (Delta for Zerobus and SQL, Postgres for Lakebase). `Rows` is what travels from
the harness to a writer: one Arrow record batch of that schema, and its batch id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from dwbench.errors import InvalidSchemaError
from workloads.schema import TableSchema, split_table_name


@dataclass(frozen=True)
class TableRef:
    """A target table: its schema and names, and the columns that tag a batch's rows."""

    workload: str
    # Part of equality: a writer caches per table, and a new schema needs new forms.
    schema: TableSchema
    delta_table: str  # catalog.schema.table
    postgres_table: str  # schema.table
    # Columns the harness fills per batch, used to count a batch's rows when reading back.
    batch_column: str | None = None
    source_column: str | None = None
    # A column with a unique value per row (the Postgres primary key when there is one).
    id_column: str | None = None

    @property
    def message_name(self) -> str:
        return split_table_name(self.delta_table)[2]

    def with_tables(
        self, delta_table: str | None = None, postgres_table: str | None = None
    ) -> TableRef:
        return replace(
            self,
            delta_table=delta_table or self.delta_table,
            postgres_table=postgres_table or self.postgres_table,
        )


@dataclass(frozen=True)
class Rows:
    """One batch for one writer: Arrow columns in the table's schema."""

    table: TableRef
    data: pa.RecordBatch
    batch_id: str

    def __len__(self) -> int:
        return self.data.num_rows


# A row source: (batch number, rows, batch id, source name) -> a record batch.
BatchMaker = Callable[[int, int, str, str], pa.RecordBatch]


@dataclass(eq=False)  # identity: a workload is registered once, and cached by identity
class Workload:
    """A named schema with a generator (or sample rows) for its data."""

    name: str
    label: str
    description: str
    schema: TableSchema
    table: TableRef
    # Builds the row source: (seed, record_bytes, pad_column, options) -> BatchMaker
    source: Callable[..., BatchMaker]
    builtin: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    # Columns a user submits through the API (None: all of them).
    input_columns: list[str] | None = None

    def batches(self, *, seed: int = 0, record_bytes: int = 0, **options: Any) -> BatchMaker:
        return self.source(seed=seed, record_bytes=record_bytes, **{**self.options, **options})

    def describe(self) -> dict[str, Any]:
        from workloads.inputs import input_json_schema

        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "builtin": self.builtin,
            "columns": self.schema.describe(),
            "delta_table": self.table.delta_table,
            "postgres_table": self.table.postgres_table,
            "delta_ddl": self.schema.delta_ddl(self.table.delta_table),
            "postgres_ddl": self.schema.postgres_ddl(
                self.table.postgres_table, primary_key=self.table.id_column
            ),
            "id_column": self.table.id_column,
            "batch_column": self.table.batch_column,
            # Generator parameters the workload takes, with their defaults (e.g. drivers).
            "parameters": dict(
                (k, v)
                for k, v in self.options.items()
                if isinstance(v, int | float | str) and k not in ("input_model_name", "time_column")
            ),
            "input_schema": input_json_schema(self),
        }


def default_table(
    name: str,
    schema: TableSchema,
    *,
    delta_table: str | None = None,
    postgres_table: str | None = None,
    id_column: str | None = None,
) -> TableRef:
    """Table names for a workload: main.default.<name> in Delta, public.<name> in Postgres."""
    delta = delta_table or f"main.default.{name}"
    leaf = split_table_name(delta)[2]
    batch = schema.column("batch_id")
    source = schema.column("source")
    if id_column is not None:
        schema.require(id_column, "--id-column")
    return TableRef(
        workload=name,
        schema=schema,
        delta_table=delta.lower(),
        postgres_table=(postgres_table or f"public.{leaf}").lower(),
        batch_column=batch.name if batch is not None and batch.type.sql() == "STRING" else None,
        source_column=source.name if source is not None and source.type.sql() == "STRING" else None,
        id_column=id_column,
    )


def check_workload_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise InvalidSchemaError(f"workload name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name
