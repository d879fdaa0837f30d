"""The workloads a run can name: the built-ins, and those users register from a schema.

`WorkloadRegistry.register` takes a schema (DDL text, a JSON column list, or a table's
`TableSchema`) and optionally sample rows; names are unique, built-ins cannot be replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dwbench.errors import InvalidSchemaError, UnknownWorkloadError
from workloads import products, telemetry
from workloads.base import Workload, check_workload_name, default_table
from workloads.generate import generated_source
from workloads.samples import sample_source
from workloads.schema import TableSchema, parse_ddl

BUILTIN: tuple[Workload, ...] = (products.WORKLOAD, telemetry.WORKLOAD)
MAX_USER_WORKLOADS = 100


class WorkloadRegistry:
    def __init__(self, extra: Iterable[Workload] = ()) -> None:
        self._workloads: dict[str, Workload] = {w.name: w for w in BUILTIN}
        for workload in extra:
            self._workloads[workload.name] = workload

    def names(self) -> list[str]:
        return list(self._workloads)

    def all(self) -> list[Workload]:
        return list(self._workloads.values())

    def get(self, name: str) -> Workload:
        try:
            return self._workloads[name]
        except KeyError:
            raise UnknownWorkloadError(
                f"unknown workload {name!r}; known: {', '.join(self._workloads)}"
            ) from None

    def add(self, workload: Workload, *, replace: bool = False) -> Workload:
        existing = self._workloads.get(workload.name)
        if existing is not None and (existing.builtin or not replace):
            raise InvalidSchemaError(f"a workload named {workload.name!r} exists already")
        if existing is None and len(self._workloads) >= len(BUILTIN) + MAX_USER_WORKLOADS:
            raise InvalidSchemaError(f"at most {MAX_USER_WORKLOADS} workloads can be registered")
        self._workloads[workload.name] = workload
        return workload


def workload_from_schema(
    name: str | None,
    schema: TableSchema,
    *,
    table: str | None = None,
    id_column: str | None = None,
    rows_from: Path | None = None,
    description: str = "",
) -> Workload:
    """A user workload: generated data from the schema, or sample rows replayed."""
    leaf = table.split(".")[-1] if table else None
    name = check_workload_name(name or leaf or "custom")
    ref = default_table(name, schema, delta_table=table, id_column=id_column)
    if rows_from is not None:
        source = sample_source(ref, rows_from)
        what = f"sample rows from {rows_from.name}, replayed"
    else:
        source = generated_source(ref)
        what = "generated from the schema"
    return Workload(
        name=name,
        label=name,
        description=description or f"{len(schema.columns)} columns; {what}",
        schema=schema,
        table=ref,
        source=source,
    )


def workload_from_ddl(name: str | None, ddl: str, **kwargs: object) -> Workload:
    table: str | None
    if ddl.lstrip().startswith(("[", "{")):  # a JSON column list names no table
        table, schema = None, TableSchema.from_text(ddl)
    else:
        table, schema = parse_ddl(ddl)
    if table is not None and "." not in table:
        table = f"main.default.{table}"
    elif table is not None and table.count(".") == 1:
        table = f"main.{table}"
    if kwargs.get("table") is None:
        kwargs["table"] = table
    return workload_from_schema(name, schema, **kwargs)  # type: ignore[arg-type]
