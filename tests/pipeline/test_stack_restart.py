"""The local stack itself restarted mid-run: the copy and the synced table come back from
their registrations and resume from the versions they had reached (silver's commit
metadata, the sync's progress row in Postgres): nothing lost, nothing doubled."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from emulator.process import LocalStackProcess
from tests.conftest import run_sql
from tests.pipeline.support import (
    bronze_ddl,
    delta_rows,
    insert_sql,
    newest_per_driver,
    postgres_rows,
    same_state,
    stack_api,
    wait_for,
)
from tests.pipeline.test_synced_tables import BATCH_1, BATCH_2, BATCH_3, caught_up, start

TABLES = {
    "bronze": "main.restart.bronze",
    "silver": "main.restart.silver",
    "synced": "main.restart.synced",
    "postgres": "restart.synced",
}


@pytest.mark.slow
def test_copy_and_sync_resume_after_the_stack_restarts() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="dwbench-restart-"))
    token = secrets.token_urlsafe(16)
    stack = LocalStackProcess(data_dir, token=token)
    try:
        endpoints = stack.start()
        run_sql(endpoints, bronze_ddl(TABLES["bronze"]))
        run_sql(endpoints, insert_sql(TABLES["bronze"], BATCH_1))
        with stack_api(endpoints) as api:
            start(api, TABLES)
            run_sql(endpoints, insert_sql(TABLES["bronze"], BATCH_2))
            wait_for(lambda: caught_up(api, TABLES), "the copy and the sync")
            before = api.get(f"/synced-tables/{TABLES['synced']}").json()
        version = before["data_synchronization_status"]["continuous_update_status"][
            "last_processed_commit_version"
        ]
        assert stack.stop() == 0
        stack = LocalStackProcess(data_dir, token=token)
        endpoints = stack.start()
        with stack_api(endpoints) as api:
            # Registered before the restart: running again without being asked.
            copy = api.get(f"/copies/{TABLES['silver']}").json()
            synced = api.get(f"/synced-tables/{TABLES['synced']}").json()
            assert copy["state"] in ("STARTING", "RUNNING")
            resumed = synced["data_synchronization_status"]
            assert resumed["continuous_update_status"]["last_processed_commit_version"] == version
            run_sql(endpoints, insert_sql(TABLES["bronze"], BATCH_3))
            wait_for(lambda: caught_up(api, TABLES), "the copy and the sync after the restart")
            # The new process read only what came after the versions it resumed from.
            assert api.get(f"/copies/{TABLES['silver']}").json()["rows_copied"] == len(BATCH_3)
            changes = api.get(f"/synced-tables/{TABLES['synced']}").json()["changes_read"]
            assert changes == len(BATCH_3)
        silver = delta_rows(endpoints, TABLES["silver"])
        assert sorted(silver.column("event_id").to_pylist()) == [f"e{i}" for i in range(1, 9)]
        rows = postgres_rows(endpoints, TABLES["postgres"])
        assert same_state(rows, newest_per_driver(silver)) == []
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
