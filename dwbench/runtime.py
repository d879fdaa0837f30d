"""What the app and the CLI share at run time: where the targets are, and the writers.

In local mode the local stack is started as a child process, or an already running one
is used: the one LOCAL_STACK_URL and LOCAL_STACK_TOKEN name, or the one another process
(the app, the CLI) runs on the same data directory. Then the target tables are created.
In databricks mode everything comes from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from bench.environment import capture_environment
from bench.manager import BenchmarkManager
from bench.store import ResultStore
from bench.sweep_manager import SweepManager
from dwbench.errors import InvalidSchemaError, WriterUnavailableError
from dwbench.settings import Settings
from emulator.process import (
    Backoff,
    LocalStackInUseError,
    LocalStackProcess,
    LocalStackStartError,
    RunningStack,
    StackSupervisor,
    find_running_stack,
    ports_args,
)
from workloads import products
from workloads.base import Workload
from workloads.registry import WorkloadRegistry
from workloads.schema import TableSchema, split_table_name
from writers import WriterSet
from writers.base import Availability, Targets, WriterSettings

log = structlog.get_logger(__name__)

_FOLLOW_INTERVAL_S = 0.5  # how often a runtime sharing another's stack checks its owner
# How long one writer's availability check may take before it answers "no answer" (the
# writers' own checks have shorter timeouts still; this bounds any that has none).
AVAILABILITY_TIMEOUT_S = 2.5
_STACK_STATUS_TIMEOUT_S = 1.0


class Runtime:
    def __init__(
        self, settings: Settings, writer_settings: Mapping[str, WriterSettings] | None = None
    ) -> None:
        """`writer_settings`: writers' settings as values, by writer name, instead of
        read from the environment (see `Targets.writer_settings`)."""
        self.settings = settings
        self.writer_settings = dict(writer_settings or {})
        self.stack: LocalStackProcess | None = None
        self.endpoints: dict[str, Any] = {}
        self.targets = Targets(
            mode="databricks", settings=settings, writer_settings=self.writer_settings
        )
        self.writers = WriterSet(self.targets)
        self.workloads = WorkloadRegistry(configured_products(self.targets))
        self._tables_ready: set[str] = set()
        self._tables_lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None
        # Supervision of the stack this runtime started (local mode): how often it looks,
        # how it backs off; tests set them before start().
        self.supervisor: StackSupervisor | None = None
        self.stack_poll_interval_s = 0.2
        self.stack_backoff = Backoff()
        self.availability_timeout_s = AVAILABILITY_TIMEOUT_S
        self._checks: dict[str, asyncio.Task[Availability]] = {}
        self.benchmarks = BenchmarkManager(
            self.writers,
            ResultStore(settings.data_dir / "results"),
            workloads=self.workloads,
            prepare=self.ensure_tables,
        )
        self.sweeps = SweepManager(self.benchmarks)

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
                writer_settings=self.writer_settings,
            )
            await self.ensure_tables(self.workloads.get("products"))
        else:
            # Resolving credentials may ask the workspace (OAuth discovery): not on the loop.
            self.targets = await asyncio.to_thread(workspace_targets, self.targets)
        self.writers = WriterSet(self.targets)
        self.benchmarks = BenchmarkManager(
            self.writers,
            ResultStore(self.settings.data_dir / "results"),
            environment=lambda: capture_environment(self.targets),
            workloads=self.workloads,
            prepare=self.ensure_tables,
            # Each run in a worker process of its own, off the app's event loop.
            worker=self.targets,
        )
        self.sweeps = SweepManager(self.benchmarks)
        auth = self.targets.workspace_auth
        log.info(
            "runtime_started",
            mode=self.targets.mode,
            **({"auth": auth.summary(), "host": auth.host} if auth else {}),
            **({"auth_problem": self.targets.auth_problem} if self.targets.auth_problem else {}),
        )

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self.supervisor is not None:
            await self.supervisor.stop()  # a restart under way ends first; stopped below
        checks, self._checks = list(self._checks.values()), {}
        for check in checks:
            check.cancel()
        await asyncio.gather(*checks, return_exceptions=True)
        await self.sweeps.close()
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
            return await _stack_endpoints(s.local_stack_url, s.local_stack_token.get_secret_value())
        data_dir = s.data_dir / "local-stack"
        # One stack per data directory: the app's, when it runs, serves the CLI too (a
        # second one would take the first one's live Postgres for an orphan).
        running = await asyncio.to_thread(find_running_stack, data_dir)
        if running is None:
            token = (
                s.local_stack_token.get_secret_value()
                if s.local_stack_token
                else secrets.token_urlsafe(24)
            )
            stack = LocalStackProcess(data_dir, token=token, exit_with_parent=True)
            try:
                endpoints = await asyncio.to_thread(stack.start)
            except LocalStackInUseError:
                # Another process started one at the same moment, and got there first.
                running = await asyncio.to_thread(find_running_stack, data_dir, wait_s=60)
                if running is None:
                    raise
            else:
                self._supervise(stack)
                log.info(
                    "local_stack_started",
                    zerobus=endpoints["zerobus_endpoint"],
                    api=endpoints["api_url"],
                    pid=stack.pid,
                )
                return endpoints
        endpoints = await _shared_stack(running, data_dir)
        self._follower = asyncio.create_task(self._follow_shared_stack(data_dir, endpoints))
        return endpoints

    async def _follow_shared_stack(self, data_dir: Path, endpoints: dict[str, Any]) -> None:
        """When the owner of the stack we share stops it (the CLI's run ends while the app
        uses its stack), start our own on the same data, ports and token: the writers'
        targets stay right, and the owner's Postgres was stopped cleanly, not taken over."""
        while True:
            await asyncio.sleep(_FOLLOW_INTERVAL_S)
            try:
                running = await asyncio.to_thread(find_running_stack, data_dir, wait_s=0)
            except LocalStackStartError:  # a new owner still starting, or unreadable
                continue
            if running is not None:
                continue
            stack = LocalStackProcess(
                data_dir, token=endpoints["token"], args=_ports(endpoints), exit_with_parent=True
            )
            started = asyncio.ensure_future(asyncio.to_thread(stack.start))
            try:
                await asyncio.shield(started)
            except asyncio.CancelledError:
                # Stopping meanwhile: let the start finish, so that stop() stops it.
                with contextlib.suppress(Exception):
                    await started
                    self._supervise(stack)
                raise
            except LocalStackInUseError:
                continue  # another process that shared it took it over first
            except LocalStackStartError as exc:
                log.error("local_stack_take_over_failed", reason=str(exc))
                await asyncio.sleep(_FOLLOW_INTERVAL_S * 10)
                continue
            self._supervise(stack)
            log.warning("local_stack_taken_over", pid=stack.pid, api=endpoints["api_url"])
            return

    def _supervise(self, stack: LocalStackProcess) -> None:
        """Ours now: restarted when it dies, stopped by stop()."""
        self.stack = stack
        self.supervisor = StackSupervisor(
            stack,
            poll_interval_s=self.stack_poll_interval_s,
            backoff=self.stack_backoff,
            on_shared=lambda: self._share_again(stack),
        )
        self.supervisor.start()

    def _share_again(self, stack: LocalStackProcess) -> None:
        """Ours died and another process's stack serves its data and ports now: use that
        one, and take it over again when its owner stops it."""
        if self.stack is stack:
            self.stack, self.supervisor = None, None
        data_dir, endpoints = stack.data_dir, dict(stack.endpoints)
        self._follower = asyncio.create_task(self._follow_shared_stack(data_dir, endpoints))

    def local_stack_status(self) -> dict[str, Any] | None:
        """Local mode: the state of the local stack as this runtime knows it (None in
        databricks mode). `state` is running, restarting, down or stopped for a stack this
        runtime supervises; `owner` says whose it is."""
        if not self.settings.is_local or not self.endpoints:
            return None
        if self.supervisor is not None:
            return {"owner": "this process", **self.supervisor.status.as_dict()}
        owner = "LOCAL_STACK_URL" if self.settings.local_stack_url else "another process"
        return {"owner": owner, "state": "running", "reason": None}

    async def stack_services(self) -> dict[str, Any] | None:
        """The local stack's own status of its services (its Postgres), or None when it
        does not answer within a second."""
        if not self.settings.is_local or not self.endpoints:
            return None
        try:
            async with httpx.AsyncClient(timeout=_STACK_STATUS_TIMEOUT_S) as client:
                resp = await client.get(
                    f"{self.endpoints['api_url']}/api/local/status",
                    headers={"Authorization": f"Bearer {self.endpoints['token']}"},
                )
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        doc: dict[str, Any] = resp.json()
        return doc

    async def writer_availability(self, name: str) -> Availability:
        """Whether writer `name` can write now, within `availability_timeout_s`.

        A check still running from an earlier call is awaited, not started again, and one
        that times out goes on in the background (a writer's open is not cut half-way)."""
        task = self._checks.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._check_writer(name), name=f"availability-{name}")
            self._checks[name] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.availability_timeout_s)
        except TimeoutError:
            limit = self.availability_timeout_s
            return Availability(False, f"no answer to the availability check within {limit:g} s")

    async def _check_writer(self, name: str) -> Availability:
        try:
            writer = await self.writers.get(name)
        except WriterUnavailableError as exc:
            return Availability(False, exc.message)
        return await writer.availability()

    async def ensure_tables(self, workload: Workload) -> None:
        """Local mode: create the workload's Delta table on the local stack when missing.

        On a workspace, tables are created beforehand (Zerobus requires it); the Lakebase
        writer creates its Postgres table itself."""
        if not self.settings.is_local or not self.endpoints:
            return
        table = workload.table.delta_table
        if table in self._tables_ready:  # every ingest request asks: no lock once created
            return
        async with self._tables_lock:
            if table in self._tables_ready:
                return
            await asyncio.to_thread(self._create_delta_table, workload)
            self._tables_ready.add(table)

    async def table_schema(self, full_name: str) -> TableSchema:
        """An existing table's schema from Unity Catalog (`w.tables.get`); locally, from
        the local stack's catalog, which answers the same API."""
        return await asyncio.to_thread(self._read_table_schema, full_name)

    def _workspace_client(self) -> Any:
        """databricks-sdk's client: the local stack's APIs in local mode, else the
        workspace with unified auth."""
        from databricks.sdk import WorkspaceClient

        if self.settings.is_local:
            return WorkspaceClient(
                host=self.endpoints["api_url"], token=self.endpoints["token"], auth_type="pat"
            )
        auth = self.targets.workspace_auth
        if auth is None:
            raise WriterUnavailableError(self.targets.auth_missing() or "no workspace credentials")
        return auth.workspace_client()

    def _read_table_schema(self, full_name: str) -> TableSchema:
        from databricks.sdk.errors import DatabricksError, NotFound

        split_table_name(full_name)
        w = self._workspace_client()
        try:
            info = w.tables.get(full_name)
        except NotFound:
            raise InvalidSchemaError(f"table {full_name} does not exist") from None
        except DatabricksError as exc:
            raise WriterUnavailableError(f"cannot read the schema of {full_name}: {exc}") from exc
        return TableSchema.from_table_info(info)

    def _create_delta_table(self, workload: Workload) -> None:
        from databricks.sdk.service.sql import StatementState

        w = self._workspace_client()
        table = workload.table.delta_table
        resp = w.statement_execution.execute_statement(
            statement=workload.schema.delta_ddl(table),
            warehouse_id=self.endpoints["warehouse_id"],
            wait_timeout="30s",
        )
        state = resp.status.state if resp.status else None
        if state != StatementState.SUCCEEDED:
            error = resp.status.error if resp.status else None
            raise WriterUnavailableError(
                f"cannot create {table} on the local stack: {error.message if error else state}"
            )


# The arguments that start a stack on the ports an endpoints document names.
_ports = ports_args


async def _stack_endpoints(url: str, token: str) -> dict[str, Any]:
    """The endpoints of a running local stack, asked at its API."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(
                f"{url.rstrip('/')}/api/local/endpoints",
                headers={"Authorization": f"Bearer {token}"},
            )
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__  # a timeout's text is empty
        raise WriterUnavailableError(f"the local stack at {url} does not answer: {reason}") from exc
    if resp.status_code != 200:
        raise WriterUnavailableError(f"the local stack at {url} answered {resp.status_code}")
    endpoints: dict[str, Any] = resp.json()
    return endpoints


async def _shared_stack(running: RunningStack, data_dir: Path) -> dict[str, Any]:
    """Use the stack another live process (the app, say) runs on our data directory; it
    stays theirs: this runtime does not stop it."""
    url = str(running.endpoints.get("api_url", ""))
    token = str(running.endpoints.get("token", ""))
    try:
        endpoints = await _stack_endpoints(url, token)
    except WriterUnavailableError as exc:
        raise LocalStackInUseError(data_dir, running.pid, f", but {exc.message}") from None
    # A warning: the CLI shows warnings, and a benchmark sharing the app's stack should say so.
    log.warning(
        "local_stack_shared",
        owner_pid=running.pid,
        api=endpoints["api_url"],
        data_dir=str(data_dir),
    )
    return endpoints


def workspace_targets(targets: Targets) -> Targets:
    """Databricks mode: the workspace credentials (unified auth), the Zerobus endpoint and
    the warehouse (which reading rows back uses too) as the zerobus and sql writers'
    settings name them, and what the workspace says about its compute. Blocking."""
    from bench.environment import workspace_facts
    from dwbench.auth import WorkspaceAuth, WorkspaceAuthError, resolve_workspace_auth
    from writers.lakebase import LakebaseSettings
    from writers.sql import SqlSettings
    from writers.zerobus import ZerobusSettings

    warehouse_id = targets.writer_config("sql", SqlSettings).warehouse_id
    auth: WorkspaceAuth | None = None
    problem: str | None = None
    try:
        auth = resolve_workspace_auth(targets.settings)
    except WorkspaceAuthError as exc:
        log.warning("workspace_auth_failed", reason=exc.message)
        problem = exc.message
    instance = targets.writer_config("lakebase", LakebaseSettings).instance_name
    return dataclasses.replace(
        targets,
        zerobus_endpoint=targets.writer_config("zerobus", ZerobusSettings).endpoint,
        workspace_url=auth.host if auth else targets.settings.workspace_url,
        warehouse_id=warehouse_id,
        workspace_auth=auth,
        auth_problem=problem,
        workspace_facts=workspace_facts(auth, warehouse_id, instance) if auth else {},
    )


def configured_products(targets: Targets) -> list[Workload]:
    """The products workload on the tables ZEROBUS_TABLE and LAKEBASE_TABLE name (the
    zerobus and lakebase writers' settings)."""
    from writers.lakebase import LakebaseSettings
    from writers.zerobus import ZerobusSettings

    table = products.WORKLOAD.table.with_tables(
        delta_table=targets.writer_config("zerobus", ZerobusSettings).table.lower(),
        postgres_table=targets.writer_config("lakebase", LakebaseSettings).table.lower(),
    )
    if table == products.WORKLOAD.table:
        return []
    return [dataclasses.replace(products.WORKLOAD, table=table)]
