"""The CDF copy and the continuous synced table: started, and their status read.

Local mode: the local stack's services (emulator/synced_tables.py), over its HTTP API with
its token. Databricks mode: the copy is the bundle job `databricks.yml` defines (its
source: pipeline/jobs/cdf_copy_job.py), started with `w.jobs.run_now`; the synced table is
`w.database.create_synced_database_table` (Lakebase Provisioned, LAKEBASE_INSTANCE_NAME)
or `w.postgres.create_synced_table` (Autoscaling, PIPELINE_LAKEBASE_BRANCH), scheduling
policy CONTINUOUS, its status read from the same fields the local stack returns. Neither
reports lag; it is computed from the last sync's times. On a workspace the app also owns
the real-time table: it creates it with its notify trigger (as its own Postgres role, the
one that LISTENs) and grants the bundle's real-time job's role (PIPELINE_REALTIME_JOB_ROLE)
what its writes need; locally the sink in the fleet's process does that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
from pydantic_settings import BaseSettings, SettingsConfigDict

from dwbench.errors import WriterUnavailableError
from pipeline.pg import PostgresConnector
from pipeline.realtime import Mode, TableStatements, create_table
from writers.base import Targets
from writers.lakebase import LakebaseSettings

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class PipelineSettings(BaseSettings):
    """PIPELINE_*: the serving path's tables and, on a workspace, its jobs and Lakebase."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", env_file=None, extra="ignore")

    bronze_table: str = "main.diners.fleet_bronze"
    silver_table: str = "main.diners.fleet_silver"
    synced_table: str = "main.diners.fleet_synced"
    copy_job_name: str = "dwbench-pipeline-cdf-copy"
    # Lakebase Autoscaling: projects/{project}/branches/{branch}; unset = Provisioned.
    lakebase_branch: str | None = None
    # Where a synced table's pipeline keeps its checkpoints (a standard catalog).
    storage_catalog: str = "main"
    storage_schema: str = "diners"
    # The bundle's real-time job (databricks.yml, pipeline_realtime): the mode it
    # writes in (its `mode` parameter) and the Postgres role it writes as (its `user`),
    # granted SELECT, INSERT, UPDATE on the table the app creates for it.
    realtime_job_mode: Mode = "upsert"
    realtime_job_role: str | None = None

    @property
    def synced_postgres_table(self) -> str:
        """The synced table in Postgres: its UC schema and name."""
        _, schema, table = self.synced_table.split(".")
        return f"{schema}.{table}"


def sync_summary(synced: dict[str, Any]) -> dict[str, Any]:
    """The SDK-shaped status flattened for the run status (no lag field: none exists)."""
    status = synced.get("data_synchronization_status") or synced.get("status") or {}
    continuous = status.get("continuous_update_status") or {}
    last = status.get("last_sync") or {}
    info = last.get("delta_table_sync_info") or {}
    return {
        "detailed_state": status.get("detailed_state"),
        "message": status.get("message"),
        "last_processed_commit_version": continuous.get(
            "last_processed_commit_version", status.get("last_processed_commit_version")
        ),
        "last_sync_start": last.get("sync_start_timestamp"),
        "last_sync_end": last.get("sync_end_timestamp"),
        "delta_commit_version": info.get("delta_commit_version"),
        "delta_commit_timestamp": info.get("delta_commit_timestamp"),
        "sync_interval_s": synced.get("sync_interval_s"),
        "rows_applied": synced.get("rows_applied"),
    }


class LocalServing:
    """The local stack's copy and synced table."""

    def __init__(self, targets: Targets, settings: PipelineSettings) -> None:
        if targets.workspace_url is None or targets.local_token is None:
            raise WriterUnavailableError("the local stack's address is not known")
        self.url = targets.workspace_url.rstrip("/") + "/api/local/pipeline"
        self.headers = {"Authorization": f"Bearer {targets.local_token.get_secret_value()}"}
        self.settings = settings
        self.bronze_version: int | None = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with httpx.AsyncClient(timeout=30, headers=self.headers) as http:
                resp = await http.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise WriterUnavailableError(
                f"the local stack does not answer at {self.url}{path}: {exc or type(exc).__name__}"
            ) from exc
        if resp.status_code != 200:
            raise WriterUnavailableError(
                f"the local stack answered {resp.status_code} at {path}: {resp.text[:300]}"
            )
        return resp.json()

    async def start(self, *, sync_interval_s: float, run_id: str, realtime_mode: Mode) -> None:
        await self.start_copy(run_id)
        await self.start_sync(sync_interval_s, run_id)

    async def start_copy(self, run_id: str | None = None) -> dict[str, Any]:
        s = self.settings
        body = {"source": s.bronze_table, "target": s.silver_table, "run_id": run_id}
        result: dict[str, Any] = await self._call("POST", "/copies", body)
        return result

    async def start_sync(self, sync_interval_s: float, run_id: str | None = None) -> dict[str, Any]:
        s = self.settings
        body = {
            "name": s.synced_table,
            "spec": {
                "source_table_full_name": s.silver_table,
                "primary_key_columns": ["driver_id"],
                "timeseries_key": "event_time",
                "scheduling_policy": "CONTINUOUS",
            },
            "sync_interval_s": sync_interval_s,
            "run_id": run_id,
        }
        result: dict[str, Any] = await self._call("POST", "/synced-tables", body)
        return result

    async def stop_copy(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("DELETE", f"/copies/{self.settings.silver_table}")
        return result

    async def stop_sync(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "DELETE", f"/synced-tables/{self.settings.synced_table}"
        )
        return result

    async def status(self) -> dict[str, Any]:
        copy = await self._call("GET", f"/copies/{self.settings.silver_table}")
        synced = await self._call("GET", f"/synced-tables/{self.settings.synced_table}")
        return {
            "copy": {k: v for k, v in copy.items() if k != "freshness"},
            "sync": sync_summary(synced),
            "freshness": {"synced": {**copy["freshness"], **synced["freshness"]}},
        }


class WorkspaceServing:
    """A workspace's bundle job (the copy) and Lakebase synced table."""

    def __init__(
        self, targets: Targets, settings: PipelineSettings, *, connect: Connect | None = None
    ) -> None:
        auth = targets.workspace_auth
        if auth is None:
            raise WriterUnavailableError(targets.auth_missing() or "no workspace credentials")
        self.auth = auth
        self.settings = settings
        self.lakebase = targets.writer_config("lakebase", LakebaseSettings)
        # The app's own Lakebase connection (the push's role): it owns the real-time table.
        self.connect: Connect = connect or PostgresConnector(targets).connect
        self._w: Any = None

    def _client(self) -> Any:
        if self._w is None:
            self._w = self.auth.workspace_client()
        return self._w

    async def start(self, *, sync_interval_s: float, run_id: str, realtime_mode: Mode) -> None:
        if sync_interval_s:
            raise WriterUnavailableError(
                "--sync-interval applies to the local stack's sync; a workspace's continuous "
                "synced table runs at the service's own pace"
            )
        job_mode = self.settings.realtime_job_mode
        if realtime_mode != job_mode:
            raise WriterUnavailableError(
                f"the bundle's real-time job writes in {job_mode} mode "
                f"(PIPELINE_REALTIME_JOB_MODE, its `mode` parameter in databricks.yml); "
                f"a run in {realtime_mode} mode would watch a table nobody writes"
            )
        await asyncio.to_thread(self._start_copy_job)
        await asyncio.to_thread(self._ensure_synced_table)
        await self.prepare_realtime_table(TableStatements(realtime_mode))

    async def prepare_realtime_table(self, statements: TableStatements) -> None:
        """The real-time table, its notify trigger and the job's grants, as the app's role."""
        try:
            conn = await self.connect()
        except WriterUnavailableError as exc:
            raise WriterUnavailableError(
                f"the real-time table {statements.table} cannot be prepared: {exc.message}"
            ) from exc
        try:
            await create_table(conn, statements, writer=self.settings.realtime_job_role)
        except psycopg.Error as exc:
            raise WriterUnavailableError(
                f"the real-time table {statements.table} cannot be prepared: {exc}"[:500]
            ) from exc
        finally:
            await conn.close()

    def _start_copy_job(self) -> None:
        w = self._client()
        jobs = list(w.jobs.list(name=self.settings.copy_job_name))
        if not jobs:
            raise WriterUnavailableError(
                f"no job named {self.settings.copy_job_name!r}: deploy the bundle "
                "(databricks bundle deploy) first"
            )
        job_id = jobs[0].job_id
        active = list(w.jobs.list_runs(job_id=job_id, active_only=True))
        if active:
            return  # a streaming job: one run, left running
        settings = w.jobs.get(job_id=job_id).settings
        if settings is not None and settings.continuous is not None:
            # A continuous job runs while its schedule is unpaused; run_now does not apply.
            raise WriterUnavailableError(
                f"job {self.settings.copy_job_name!r} has no active run: unpause its "
                "continuous schedule (databricks.yml sets pause_status UNPAUSED)"
            )
        w.jobs.run_now(job_id=job_id)

    def _ensure_synced_table(self) -> None:
        from databricks.sdk.errors import NotFound

        w = self._client()
        s = self.settings
        if s.lakebase_branch:
            from databricks.sdk.service import postgres as pg

            try:
                w.postgres.get_synced_table(name=f"synced_tables/{s.synced_table}")
                return
            except NotFound:
                pass
            w.postgres.create_synced_table(
                synced_table=pg.SyncedTable(
                    spec=pg.SyncedTableSyncedTableSpec(
                        branch=s.lakebase_branch,
                        postgres_database=self.lakebase.database,
                        source_table_full_name=s.silver_table,
                        primary_key_columns=["driver_id"],
                        timeseries_key="event_time",
                        scheduling_policy=pg.SyncedTableSyncedTableSpecSyncedTableSchedulingPolicy.CONTINUOUS,
                        create_database_objects_if_missing=True,
                        new_pipeline_spec=pg.NewPipelineSpec(
                            storage_catalog=s.storage_catalog, storage_schema=s.storage_schema
                        ),
                    )
                ),
                synced_table_id=s.synced_table,
            )
            return
        from databricks.sdk.service import database as db

        if not self.lakebase.instance_name:
            raise WriterUnavailableError(
                "LAKEBASE_INSTANCE_NAME (Provisioned) or PIPELINE_LAKEBASE_BRANCH (Autoscaling) "
                "must name the Lakebase database of the synced table"
            )
        try:
            w.database.get_synced_database_table(name=s.synced_table)
            return
        except NotFound:
            pass
        w.database.create_synced_database_table(
            db.SyncedDatabaseTable(
                name=s.synced_table,
                database_instance_name=self.lakebase.instance_name,
                logical_database_name=self.lakebase.database,
                spec=db.SyncedTableSpec(
                    source_table_full_name=s.silver_table,
                    primary_key_columns=["driver_id"],
                    timeseries_key="event_time",
                    scheduling_policy=db.SyncedTableSchedulingPolicy.CONTINUOUS,
                    create_database_objects_if_missing=True,
                    new_pipeline_spec=db.NewPipelineSpec(
                        storage_catalog=s.storage_catalog, storage_schema=s.storage_schema
                    ),
                ),
            )
        )

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._status)

    def _status(self) -> dict[str, Any]:
        w = self._client()
        s = self.settings
        if s.lakebase_branch:
            table = w.postgres.get_synced_table(name=f"synced_tables/{s.synced_table}")
            synced = {"status": table.status.as_dict() if table.status else {}}
        else:
            table = w.database.get_synced_database_table(name=s.synced_table)
            status = table.data_synchronization_status
            synced = {"data_synchronization_status": status.as_dict() if status else {}}
        # Bronze and silver hops are not stamped on a workspace (they would need reading
        # the tables' commits); the synced table's Postgres hop is what the push observes.
        return {"copy": {"job": s.copy_job_name}, "sync": sync_summary(synced), "freshness": {}}
