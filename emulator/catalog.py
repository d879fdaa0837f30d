"""The catalog: three-part table names mapped to Delta tables under the data directory.

A table `catalog.schema.table` lives at `<data_dir>/tables/<catalog>/<schema>/<table>`;
the Delta log is the only record of it, so the catalog survives restarts by scanning
that tree. Names are case-insensitive, as in Unity Catalog, and stored lower-case.
Before a table is opened its log tail is checked, and repaired when a power loss tore it
(`emulator.recovery`); what was found is in `Catalog.incidents`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from deltalake import DeltaTable

from emulator.errors import SchemaMismatchError, TableExistsError, TableNotFoundError
from emulator.recovery import recover_table, set_aside_table, short_error
from emulator.schema import TableSchema
from emulator.table_writer import (
    Sync,
    TableWriter,
    TableWriterConfig,
    copied_files,
    fsync_path,
    read_commit,
    sync_commit,
)

log = structlog.get_logger(__name__)

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_table_name(name: str, default_catalog: str = "", default_schema: str = "") -> str:
    """Return the canonical three-part name, filling missing parts from the defaults."""
    parts = [p.strip().strip("`") for p in name.split(".")]
    if len(parts) == 2 and default_catalog:
        parts = [default_catalog, *parts]
    elif len(parts) == 1 and default_catalog and default_schema:
        parts = [default_catalog, default_schema, *parts]
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        raise SchemaMismatchError(
            f"invalid table name {name!r}: expected catalog.schema.table "
            "with letters, digits and underscores"
        )
    return ".".join(p.lower() for p in parts)


@dataclass
class Table:
    name: str
    path: Path
    schema: TableSchema
    _writer: TableWriter | None = field(default=None, repr=False)
    # Volume files COPY INTO loaded into this table (it skips them the next time), read
    # from the table's commits on first use.
    _loaded_files: set[str] | None = field(default=None, repr=False)

    def delta(self) -> DeltaTable:
        return DeltaTable(str(self.path))

    def loaded_files(self) -> set[str]:
        if self._loaded_files is None:
            self._loaded_files = copied_files(self.delta())
        return self._loaded_files


class Catalog:
    def __init__(
        self,
        data_dir: Path,
        writer_config: TableWriterConfig | None = None,
        *,
        sync: Sync = fsync_path,
    ) -> None:
        """`sync`: how files and directories are fsynced (tests count the calls)."""
        self.root = data_dir / "tables"
        self.root.mkdir(parents=True, exist_ok=True)
        self._writer_config = writer_config or TableWriterConfig()
        self._sync = sync
        self._tables: dict[str, Table] = {}
        # What start-up recovery found and did (`emulator.recovery`), for the status page.
        self.incidents: list[dict[str, Any]] = []
        for log_dir in sorted(self.root.glob("*/*/*/_delta_log")):
            path = log_dir.parent
            name = ".".join(path.relative_to(self.root).parts)
            incident = recover_table(data_dir, path, name, sync=sync)
            if incident is not None:
                self.incidents.append(incident.as_dict())
                if not log_dir.exists():
                    continue  # nothing of the table was whole: it is in the quarantine
            try:
                delta = DeltaTable(str(path))
            except Exception as exc:
                reason = short_error(exc)
                self.incidents.append(
                    set_aside_table(data_dir, path, name, reason, sync=sync).as_dict()
                )
                continue
            try:
                schema = TableSchema.from_delta(delta.schema())
            except Exception as exc:
                log.warning("table_skipped", table=name, error=str(exc))
                continue
            self._tables[name] = Table(name, path, schema)

    def names(self) -> list[str]:
        return sorted(self._tables)

    def get(self, name: str) -> Table:
        canonical = parse_table_name(name)
        try:
            return self._tables[canonical]
        except KeyError:
            raise TableNotFoundError(canonical) from None

    def create_table(self, name: str, schema: TableSchema, *, if_not_exists: bool = False) -> Table:
        canonical = parse_table_name(name)
        existing = self._tables.get(canonical)
        if existing is not None:
            if if_not_exists:
                return existing
            raise TableExistsError(canonical)
        path = self.root.joinpath(*canonical.split("."))
        path.mkdir(parents=True, exist_ok=True)
        DeltaTable.create(
            str(path),
            schema=schema.to_delta(),
            name=canonical,
            configuration={"delta.checkpointInterval": "100"},
        )
        if self._writer_config.fsync:
            # The new table's first commit, and the directory entries that lead to it.
            sync_commit(path, 0, read_commit(path, 0), self._sync)
            for directory in (path, *path.parents):
                self._sync(directory)
                if directory == self.root:
                    break
        table = Table(canonical, path, schema)
        self._tables[canonical] = table
        log.info("table_created", table=canonical, columns=len(schema.columns))
        return table

    async def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        canonical = parse_table_name(name)
        table = self._tables.pop(canonical, None)
        if table is None:
            if if_exists:
                return
            raise TableNotFoundError(canonical)
        if table._writer is not None:
            await table._writer.close()
        shutil.rmtree(table.path, ignore_errors=True)
        log.info("table_dropped", table=canonical)

    @property
    def writer_config(self) -> TableWriterConfig:
        """How the stack's tables are written and kept up (compaction, vacuum, fsync)."""
        return self._writer_config

    @property
    def sync(self) -> Sync:
        return self._sync

    def writer(self, name: str) -> TableWriter:
        """The table's one writer (created on first use, inside the running event loop)."""
        table = self.get(name)
        if table._writer is None:
            table._writer = TableWriter(
                table.name,
                table.path,
                table.schema.to_arrow(),
                self._writer_config,
                sync=self._sync,
            )
        return table._writer

    async def close(self) -> None:
        """Commit what every writer holds and stop them."""
        for table in self._tables.values():
            if table._writer is not None:
                await table._writer.close()
                table._writer = None
