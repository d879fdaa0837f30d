"""Databricks mode's calls, against an in-repo fake of the SDK's WorkspaceClient surface
the serving path uses (jobs, database, postgres): the requests it builds and how it reads
the status back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk.errors import NotFound
from databricks.sdk.service import database as db
from databricks.sdk.service import jobs
from databricks.sdk.service import postgres as pg

from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from pipeline.pg import direct_host
from pipeline.serving import PipelineSettings, WorkspaceServing
from writers.base import Targets
from writers.lakebase import LakebaseSettings


@dataclass
class FakeJobs:
    jobs: list[jobs.BaseJob] = field(default_factory=list)
    active: list[jobs.BaseRun] = field(default_factory=list)
    continuous: bool = False
    started: list[int] = field(default_factory=list)

    def list(self, name: str) -> list[jobs.BaseJob]:
        return [j for j in self.jobs if j.settings and j.settings.name == name]

    def list_runs(self, job_id: int, active_only: bool) -> list[jobs.BaseRun]:
        return self.active

    def get(self, job_id: int) -> jobs.Job:
        settings = jobs.JobSettings(
            continuous=jobs.Continuous(pause_status=jobs.PauseStatus.PAUSED)
            if self.continuous
            else None
        )
        return jobs.Job(job_id=job_id, settings=settings)

    def run_now(self, job_id: int) -> None:
        self.started.append(job_id)


@dataclass
class FakeDatabase:
    tables: dict[str, db.SyncedDatabaseTable] = field(default_factory=dict)

    def get_synced_database_table(self, name: str) -> db.SyncedDatabaseTable:
        if name not in self.tables:
            raise NotFound(f"{name} not found")
        return self.tables[name]

    def create_synced_database_table(self, synced_table: db.SyncedDatabaseTable) -> Any:
        self.tables[synced_table.name] = synced_table
        return synced_table


@dataclass
class FakePostgres:
    created: list[tuple[pg.SyncedTable, str]] = field(default_factory=list)

    def get_synced_table(self, name: str) -> pg.SyncedTable:
        raise NotFound(name)

    def create_synced_table(self, synced_table: pg.SyncedTable, synced_table_id: str) -> Any:
        self.created.append((synced_table, synced_table_id))


@dataclass
class FakeWorkspace:
    jobs: FakeJobs = field(default_factory=FakeJobs)
    database: FakeDatabase = field(default_factory=FakeDatabase)
    postgres: FakePostgres = field(default_factory=FakePostgres)


class FakeAuth:
    def __init__(self, client: FakeWorkspace) -> None:
        self.client = client

    def workspace_client(self) -> FakeWorkspace:
        return self.client


class Lakebase:
    """The app's Lakebase connection, here the local stack's Postgres (the real-time
    table's DDL and grants run on a real server)."""

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        if self.dsn is None:
            raise WriterUnavailableError("cannot connect to Postgres: connection refused")
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)


def serving(
    client: FakeWorkspace, postgres_dsn: str | None = None, **settings: Any
) -> WorkspaceServing:
    targets = Targets(
        mode="databricks",
        settings=Settings(app_mode="databricks", data_dir=Path("/tmp")),
        writer_settings={
            "lakebase": LakebaseSettings(instance_name="diners-db", database="databricks_postgres")
        },
        workspace_auth=FakeAuth(client),  # type: ignore[arg-type]
    )
    return WorkspaceServing(
        targets, PipelineSettings(**settings), connect=Lakebase(postgres_dsn).connect
    )


def start(serving: WorkspaceServing, **options: Any) -> None:
    given = {"sync_interval_s": 0, "run_id": "r1", "realtime_mode": "upsert", **options}
    asyncio.run(serving.start(**given))


def copy_job(client: FakeWorkspace) -> None:
    client.jobs.jobs.append(
        jobs.BaseJob(job_id=7, settings=jobs.JobSettings(name="dwbench-pipeline-cdf-copy"))
    )


def test_provisioned_synced_table_is_created_continuous_from_silver(
    local_stack: dict[str, Any],
) -> None:
    client = FakeWorkspace()
    copy_job(client)
    start(serving(client, local_stack["postgres_dsn"]))
    assert client.jobs.started == [7]
    table = client.database.tables["main.diners.fleet_synced"]
    assert table.database_instance_name == "diners-db"
    assert table.logical_database_name == "databricks_postgres"
    assert table.spec is not None
    assert table.spec.source_table_full_name == "main.diners.fleet_silver"
    assert table.spec.primary_key_columns == ["driver_id"]
    assert table.spec.timeseries_key == "event_time"
    assert table.spec.scheduling_policy == db.SyncedTableSchedulingPolicy.CONTINUOUS


def test_autoscaling_synced_table_goes_to_the_branch(local_stack: dict[str, Any]) -> None:
    client = FakeWorkspace()
    copy_job(client)
    branch = "projects/diners/branches/main"
    start(serving(client, local_stack["postgres_dsn"], lakebase_branch=branch))
    ((table, table_id),) = client.postgres.created
    assert table_id == "main.diners.fleet_synced"
    assert table.spec is not None and table.spec.branch == branch
    assert (
        table.spec.scheduling_policy
        == pg.SyncedTableSyncedTableSpecSyncedTableSchedulingPolicy.CONTINUOUS
    )


def test_status_is_read_from_the_sdk_fields() -> None:
    client = FakeWorkspace()
    client.database.tables["main.diners.fleet_synced"] = db.SyncedDatabaseTable(
        name="main.diners.fleet_synced",
        data_synchronization_status=db.SyncedTableStatus(
            detailed_state=db.SyncedTableState.SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE,
            continuous_update_status=db.SyncedTableContinuousUpdateStatus(
                last_processed_commit_version=42, timestamp="2026-12-02T08:00:15Z"
            ),
            last_sync=db.SyncedTablePosition(
                sync_start_timestamp="2026-12-02T08:00:10Z",
                sync_end_timestamp="2026-12-02T08:00:15Z",
                delta_table_sync_info=db.DeltaTableSyncInfo(
                    delta_commit_version=42, delta_commit_timestamp="2026-12-02T08:00:05Z"
                ),
            ),
        ),
    )
    status = asyncio.run(serving(client).status())
    assert status["sync"] == {
        "detailed_state": "SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE",
        "message": None,
        "last_processed_commit_version": 42,
        "last_sync_start": "2026-12-02T08:00:10Z",
        "last_sync_end": "2026-12-02T08:00:15Z",
        "delta_commit_version": 42,
        "delta_commit_timestamp": "2026-12-02T08:00:05Z",
        "sync_interval_s": None,
        "rows_applied": None,
    }


def test_missing_or_paused_jobs_and_a_local_interval_are_refused() -> None:
    client = FakeWorkspace()
    with pytest.raises(WriterUnavailableError, match="deploy the bundle"):
        start(serving(client))
    copy_job(client)
    client.jobs.continuous = True
    with pytest.raises(WriterUnavailableError, match="unpause its continuous schedule"):
        start(serving(client))
    with pytest.raises(WriterUnavailableError, match="--sync-interval applies to the local"):
        start(serving(client), sync_interval_s=15)
    with pytest.raises(WriterUnavailableError) as refused:
        start(serving(client), realtime_mode="copy")
    assert refused.value.message == (
        "the bundle's real-time job writes in upsert mode (PIPELINE_REALTIME_JOB_MODE, its "
        "`mode` parameter in databricks.yml); a run in copy mode would watch a table nobody "
        "writes"
    )


def test_the_app_creates_the_real_time_table_and_grants_the_jobs_role(
    local_stack: dict[str, Any],
) -> None:
    dsn = local_stack["postgres_dsn"]
    client = FakeWorkspace()
    copy_job(client)
    # pg_monitor stands for the job's role (the stack's writer may create no role).
    start(serving(client, dsn, realtime_job_role="pg_monitor"))
    with psycopg.connect(dsn) as conn:
        granted = conn.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = 'pg_monitor' AND table_schema = 'public' "
            "AND table_name = 'fleet_live' ORDER BY 1"
        ).fetchall()
        trigger = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.fleet_live'::regclass "
            "AND NOT tgisinternal"
        ).fetchall()
        version = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = 'fleet_live' AND column_name = 'version'"
        ).fetchall()
        conn.execute("REVOKE ALL ON public.fleet_live FROM pg_monitor")
    assert granted == [("INSERT",), ("SELECT",), ("UPDATE",)]
    assert trigger == [("fleet_live_notify",)]
    assert version == [("bigint",)]
    # Without Postgres the run cannot start, and says why.
    with pytest.raises(WriterUnavailableError) as refused:
        start(serving(client))
    assert refused.value.message == (
        "the real-time table public.fleet_live cannot be prepared: cannot connect to "
        "Postgres: connection refused"
    )


def test_listen_uses_the_direct_host_not_the_pooler() -> None:
    assert direct_host("ep-cool-1234-pooler.database.example.com") == (
        "ep-cool-1234.database.example.com"
    )
    assert direct_host("instance-1.database.example.com") == "instance-1.database.example.com"
