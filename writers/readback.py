"""Reading rows back through a SQL warehouse, for freshness checks (ack -> readable).

Benchmarks poll this while they write, so it must not disturb the load it measures: it is
async httpx on the event loop against the Statement Execution API, not a blocking SDK call
in a thread (whose GIL hand-offs delay the scheduler by milliseconds). Auth headers come
from the local token, or from the workspace's unified-auth Config (`dwbench.auth`).
"""

from __future__ import annotations

import asyncio
import re

import httpx

from dwbench.errors import WriteFailedError, WriterUnavailableError
from workloads.base import TableRef
from writers.base import DataWriterInterface, Targets

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quoted_table(name: str) -> str:
    """`catalog`.`schema`.`table`, after checking the name has three plain parts."""
    parts = name.split(".")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        raise WriterUnavailableError(f"table name {name!r} is not catalog.schema.table")
    return ".".join(f"`{p}`" for p in parts)


def quote_column(name: str) -> str:
    """A column name in backticks (a backtick in the name doubled)."""
    return "`" + name.replace("`", "``") + "`"


def count_statement(table: TableRef) -> str:
    """Counts a batch's rows (`:b`), and the writer's among them (`:s`) when the table says
    which column names the writer."""
    if table.batch_column is None:
        raise NotImplementedError(
            f"table {table.delta_table} has no batch column, so a batch's rows cannot be counted"
        )
    sql = (
        f"SELECT count(*) FROM {quoted_table(table.delta_table)} "
        f"WHERE {quote_column(table.batch_column)} = :b"
    )
    if table.source_column is not None:
        sql += f" AND {quote_column(table.source_column)} = :s"
    return sql


class WarehouseReader:
    """Counts the rows a writer (`source`) wrote in a batch, in any table that tags them."""

    def __init__(self, targets: Targets, source: str) -> None:
        self.targets = targets
        self.source = source
        self._http: httpx.AsyncClient | None = None

    async def _headers(self) -> dict[str, str]:
        if self.targets.mode == "local":
            assert self.targets.local_token is not None
            return {"Authorization": f"Bearer {self.targets.local_token.get_secret_value()}"}
        auth = self.targets.workspace_auth
        if auth is None:
            raise WriterUnavailableError(self.targets.auth_missing() or "no workspace credentials")
        # The unified-auth Config caches an OAuth token and refreshes it when needed (a
        # refresh is an HTTP call, or the databricks CLI: in a thread).
        headers: dict[str, str] = await asyncio.to_thread(auth.config.authenticate)
        return headers

    async def count(self, table: TableRef, batch_id: str) -> int:
        statement = count_statement(table)
        parameters = [{"name": "b", "value": batch_id, "type": "STRING"}]
        if table.source_column is not None:
            parameters.append({"name": "s", "value": self.source, "type": "STRING"})
        if not self.targets.warehouse_id or not self.targets.workspace_url:
            raise WriterUnavailableError(
                "reading rows back needs a SQL warehouse (DATABRICKS_WAREHOUSE_ID)"
            )
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.targets.workspace_url, timeout=60)
        body = {
            "statement": statement,
            "warehouse_id": self.targets.warehouse_id,
            "parameters": parameters,
            "wait_timeout": "30s",
        }
        try:
            resp = await self._http.post(
                "/api/2.0/sql/statements", json=body, headers=await self._headers()
            )
        except httpx.HTTPError as exc:
            raise WriterUnavailableError(f"cannot reach the SQL warehouse: {exc!r}") from exc
        if resp.status_code != 200:
            raise WriteFailedError(f"reading back failed: HTTP {resp.status_code}")
        answer = resp.json()
        state = answer.get("status", {}).get("state")
        if state != "SUCCEEDED":
            message = answer.get("status", {}).get("error", {}).get("message", state)
            raise WriteFailedError(f"reading back failed: {message}")
        return int(answer["result"]["data_array"][0][0])

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()


class WarehouseReadBack(DataWriterInterface):
    """A writer whose rows land in a Delta table it reads back through the SQL warehouse
    (the Zerobus writers: none of their interfaces reads)."""

    _reader: WarehouseReader | None = None

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        """Rows of the batch readable in the table, through the SQL warehouse."""
        if self._reader is None:
            self._reader = WarehouseReader(self.targets, self.name)
        return await self._reader.count(table, batch_id)

    async def close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
