"""What the app and the CLI share at run time: where the targets are, and the writers.

In local mode the local stack is started as a child process (or an already running one
is used, given LOCAL_STACK_URL and LOCAL_STACK_TOKEN) and the target tables are
created; in databricks mode everything comes from the settings.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from bench.environment import capture_environment
from bench.manager import BenchmarkManager
from bench.store import ResultStore
from dwbench.assets import sql_text
from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from emulator.process import LocalStackProcess
from writers import WriterSet
from writers.base import Targets

log = structlog.get_logger(__name__)

PRODUCTS_DDL = sql_text("products_table.sql")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack: LocalStackProcess | None = None
        self.endpoints: dict[str, Any] = {}
        self.targets = Targets(mode="databricks", settings=settings)
        self.writers = WriterSet(self.targets)
        self.benchmarks = BenchmarkManager(self.writers, ResultStore(settings.data_dir / "results"))

    async def start(self) -> None:
        if self.settings.is_local:
            self.endpoints = await self._local_endpoints()
            self.targets = Targets(
                mode="local",
                settings=self.settings,
                zerobus_endpoint=self.endpoints["zerobus_endpoint"],
                workspace_url=self.endpoints["api_url"],
                warehouse_id=self.endpoints["warehouse_id"],
                local_token=SecretStr(self.endpoints["token"]),
                postgres_dsn=SecretStr(self.endpoints["postgres_dsn"])
                if self.endpoints.get("postgres_dsn")
                else None,
            )
            await asyncio.to_thread(self._create_delta_tables)
        else:
            s = self.settings
            self.targets = Targets(
                mode="databricks",
                settings=s,
                zerobus_endpoint=s.zerobus_endpoint,
                workspace_url=s.workspace_url,
                warehouse_id=s.databricks_warehouse_id,
            )
        self.writers = WriterSet(self.targets)
        self.benchmarks = BenchmarkManager(
            self.writers,
            ResultStore(self.settings.data_dir / "results"),
            environment=lambda: capture_environment(self.targets),
        )
        log.info("runtime_started", mode=self.targets.mode)

    async def stop(self) -> None:
        await self.benchmarks.close()
        await self.writers.close()
        if self.stack is not None:
            code = await asyncio.to_thread(self.stack.stop)
            log.info("local_stack_stopped", exit_code=code)
            self.stack = None

    async def _local_endpoints(self) -> dict[str, Any]:
        s = self.settings
        if s.local_stack_url:
            if s.local_stack_token is None:
                raise WriterUnavailableError("LOCAL_STACK_URL is set but LOCAL_STACK_TOKEN is not")
            token = s.local_stack_token.get_secret_value()
            async with httpx.AsyncClient(timeout=10) as client:
                resp = await client.get(
                    f"{s.local_stack_url.rstrip('/')}/api/local/endpoints",
                    headers={"Authorization": f"Bearer {token}"},
                )
            if resp.status_code != 200:
                raise WriterUnavailableError(
                    f"the local stack at {s.local_stack_url} answered {resp.status_code}"
                )
            endpoints: dict[str, Any] = resp.json()
            return endpoints
        token = (
            s.local_stack_token.get_secret_value()
            if s.local_stack_token
            else secrets.token_urlsafe(24)
        )
        self.stack = LocalStackProcess(s.data_dir / "local-stack", token=token)
        endpoints = await asyncio.to_thread(self.stack.start)
        log.info(
            "local_stack_started",
            zerobus=endpoints["zerobus_endpoint"],
            api=endpoints["api_url"],
            pid=self.stack.pid,
        )
        return endpoints

    def _create_delta_tables(self) -> None:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.service.sql import StatementState

        w = WorkspaceClient(
            host=self.endpoints["api_url"], token=self.endpoints["token"], auth_type="pat"
        )
        for table in {self.settings.zerobus_table, self.settings.sql_table}:
            resp = w.statement_execution.execute_statement(
                statement=PRODUCTS_DDL.replace("main.default.products", table),
                warehouse_id=self.endpoints["warehouse_id"],
                wait_timeout="30s",
            )
            state = resp.status.state if resp.status else None
            if state != StatementState.SUCCEEDED:
                error = resp.status.error if resp.status else None
                raise WriterUnavailableError(
                    f"cannot create {table} on the local stack: {error.message if error else state}"
                )
