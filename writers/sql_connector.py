"""The SQL connector writer: the SQL writer's multi-row INSERTs through databricks-sql-connector.

Statements are built exactly as the `sql` writer builds them (`writers.sql.insert_statements`:
literals from `writers.sql_literals`, up to the same 15 MiB per statement) and run over the
connector's Thrift protocol to the warehouse's HTTP path, with OAuth M2M as the connector's
documentation shows for service principals. A connection runs one statement at a time, so
each concurrency lane has its own connection: up to `max_concurrency` statements of a
write run at once, on as many connections, opened on first use and kept.

Durable means what it means for `sql`: every statement returned with
num_inserted_rows equal to its rows. Databricks mode only: the local stack does not speak
Thrift, so locally this writer reports unavailable and says to use `sql`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic_settings import SettingsConfigDict

from dwbench.errors import DirectWriteError, WriteFailedError, WriterUnavailableError
from writers.base import Targets, WriterSettings
from writers.sql import SqlWriter, _Result

log = structlog.get_logger(__name__)

LOCAL_REASON = (
    "the local stack does not speak the SQL connector's Thrift protocol; use `sql` "
    "(Statement Execution API) locally"
)


class SqlConnectorSettings(WriterSettings):
    """SQL_CONNECTOR_TABLE (the warehouse is the sql writer's DATABRICKS_WAREHOUSE_ID)."""

    model_config = SettingsConfigDict(env_prefix="SQL_CONNECTOR_")

    table: str = "main.default.products"


class ConnectionLanes:
    """Connections handed out one per running statement; at most `size` are opened."""

    def __init__(self, size: int, connect: Any) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._opened = 0
        self._size = size
        self._ready = threading.Condition()

    def take(self) -> Any:
        with self._ready:
            while not self._idle and self._opened >= self._size:
                self._ready.wait()
            if self._idle:
                return self._idle.pop()
            self._opened += 1
        try:
            return self._connect()
        except BaseException:
            with self._ready:
                self._opened -= 1
                self._ready.notify()
            raise

    def give_back(self, connection: Any, *, broken: bool = False) -> None:
        with self._ready:
            if broken:
                self._opened -= 1
            else:
                self._idle.append(connection)
            self._ready.notify()
        if broken:
            with contextlib.suppress(Exception):
                connection.close()

    @property
    def opened(self) -> int:
        return self._opened

    def close(self) -> None:
        with self._ready:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()


class SqlConnectorWriter(SqlWriter):
    serves_locally = False
    name = "sql-connector"
    label = "SQL warehouse (SQL connector)"
    family = "sql"
    color = "#9333ea"
    client_distributions = ("databricks-sql-connector", "databricks-sdk")
    settings_class = SqlConnectorSettings  # type: ignore[assignment]
    config: SqlConnectorSettings  # type: ignore[assignment]

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self._lanes = ConnectionLanes(self.max_concurrency, self._connect)

    def _config_problem(self) -> str | None:
        if self.local:
            return LOCAL_REASON
        return super()._config_problem()

    def _details(self) -> dict[str, Any]:
        return {
            **super()._details(),
            "http_path": f"/sql/1.0/warehouses/{self.warehouse_id}",
            "connections": self._lanes.opened,
        }

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self._lanes.close)

    def _run(self, sql: str) -> _Result:
        """One statement on a connection of its own lane (in a worker thread)."""
        connection = self._lanes.take()
        broken = False
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                rows = cursor.fetchall() if cursor.description else []
                return _Result(cursor.query_id or "?", [list(r) for r in rows])
        except Exception as exc:
            broken = not _is_statement_error(exc)
            raise
        finally:
            self._lanes.give_back(connection, broken=broken)

    def _connect(self) -> Any:
        # The connector takes a credentials provider: a callable returning a header factory,
        # which the unified-auth Config is (any auth type; it refreshes its tokens).
        from databricks import sql

        auth = self.targets.workspace_auth
        if auth is None or self.host is None:
            raise WriterUnavailableError(self.targets.auth_missing() or "no workspace host")
        config = auth.config

        def credentials_provider() -> Any:
            return config.authenticate

        log.info("sql_connector_connect", writer=self.name, host=self.host)
        return sql.connect(
            server_hostname=urlsplit(self.host).hostname,
            http_path=f"/sql/1.0/warehouses/{self.warehouse_id}",
            credentials_provider=credentials_provider,
        )

    def _translate_driver(self, exc: Exception) -> DirectWriteError | None:
        if not type(exc).__module__.startswith("databricks.sql"):
            return None
        from databricks.sql import exc as sql_exc

        text = str(getattr(exc, "message", None) or exc)
        if isinstance(exc, sql_exc.ServerOperationError):
            return WriteFailedError(f"the warehouse failed the statement: {text}")
        if isinstance(
            exc, sql_exc.RequestError | sql_exc.OperationalError | sql_exc.InterfaceError
        ):
            return WriterUnavailableError(f"cannot reach the SQL warehouse: {text}")
        return WriteFailedError(f"the SQL connector failed: {text}")


def _is_statement_error(exc: Exception) -> bool:
    """A statement the warehouse failed leaves its connection usable; other errors do not."""
    if not type(exc).__module__.startswith("databricks.sql"):
        return False
    from databricks.sql import exc as sql_exc

    return isinstance(exc, sql_exc.ServerOperationError)
