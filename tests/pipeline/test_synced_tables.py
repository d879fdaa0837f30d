"""The local stack's CDF copy and continuous synced table, over its HTTP API.

The tables are real (Delta under the stack's data directory, the stack's Postgres); the
expected state is computed from silver itself, read with deltalake.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from bench.stats import Latencies
from emulator.cdf_copy import iso
from emulator.table_writer import commit_time_us
from tests.conftest import run_sql
from tests.pipeline.support import (
    bronze_ddl,
    delta_path,
    delta_rows,
    insert_sql,
    newest_per_driver,
    postgres_rows,
    same_state,
    stack_api,
    wait_for,
)
from workloads.wire import epoch_micros


@pytest.fixture
def tables(local_stack: dict[str, Any]) -> dict[str, str]:
    suffix = secrets.token_hex(3)
    names = {
        "bronze": f"main.pipe_{suffix}.bronze",
        "silver": f"main.pipe_{suffix}.silver",
        "synced": f"main.pipe_{suffix}.synced",
        "postgres": f"pipe_{suffix}.synced",
    }
    run_sql(local_stack, bronze_ddl(names["bronze"]))
    return names


def start(
    api: Any, t: dict[str, str], interval: float = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    copy = api.post("/copies", json={"source": t["bronze"], "target": t["silver"]})
    assert copy.status_code == 200, copy.text
    synced = api.post(
        "/synced-tables",
        json={
            "name": t["synced"],
            "spec": {
                "source_table_full_name": t["silver"],
                "primary_key_columns": ["driver_id"],
                "timeseries_key": "event_time",
            },
            "sync_interval_s": interval,
        },
    )
    assert synced.status_code == 200, synced.text
    return copy.json(), synced.json()


def caught_up(api: Any, t: dict[str, str]) -> bool:
    copy = api.get(f"/copies/{t['silver']}").json()
    synced = api.get(f"/synced-tables/{t['synced']}").json()
    status = synced["data_synchronization_status"]
    done = status.get("continuous_update_status", {}).get("last_processed_commit_version")
    return (
        copy["last_copied_source_version"] is not None
        and copy["last_copied_source_version"] == copy["source_latest_version"]
        and done is not None
        and done == copy["target_version"]
    )


BATCH_1 = [
    ("e1", "d1", "2026-12-02 08:00:00", "idle"),
    ("e2", "d1", "2026-12-02 08:00:01", "to_restaurant"),
    ("e3", "d2", "2026-12-02 08:00:01", "idle"),
]
BATCH_2 = [
    ("e4", "d2", "2026-12-02 08:00:05", "to_restaurant"),
    # late: older than d1's newest, so it must not win
    ("e5", "d1", "2026-12-02 07:59:59", "delivered"),
    ("e6", "d3", "2026-12-02 08:00:02", "picked_up"),
]
BATCH_3 = [
    ("e7", "d3", "2026-12-02 08:00:09", "to_customer"),
    ("e8", "d4", "2026-12-02 08:00:03", "idle"),
]


def test_bronze_has_no_change_data_feed_silver_has(
    local_stack: dict[str, Any], tables: dict[str, str]
) -> None:
    run_sql(local_stack, insert_sql(tables["bronze"], BATCH_1))
    with stack_api(local_stack) as api:
        start(api, tables)
        wait_for(lambda: caught_up(api, tables), "the copy and the sync")
    with pytest.raises(Exception, match="does not have change data enabled"):
        DeltaTable(str(delta_path(local_stack, tables["bronze"]))).load_cdf(starting_version=0)
    silver = DeltaTable(str(delta_path(local_stack, tables["silver"])))
    assert silver.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    assert sorted(silver.to_pyarrow_table().column("event_id").to_pylist()) == ["e1", "e2", "e3"]


def test_the_synced_table_is_the_newest_row_per_driver_of_silver(
    local_stack: dict[str, Any], tables: dict[str, str]
) -> None:
    with stack_api(local_stack) as api:
        _, synced = start(api, tables)
        assert synced["spec"]["scheduling_policy"] == "CONTINUOUS"
        for batch in (BATCH_1, BATCH_2, BATCH_3):
            run_sql(local_stack, insert_sql(tables["bronze"], batch))
        wait_for(lambda: caught_up(api, tables), "the copy and the sync")
        status = api.get(f"/synced-tables/{tables['synced']}").json()
    silver = delta_rows(local_stack, tables["silver"])
    assert silver.num_rows == 8
    want = newest_per_driver(silver)
    assert {d: r["status"] for d, r in want.items()} == {
        "d1": "to_restaurant",
        "d2": "to_restaurant",
        "d3": "to_customer",
        "d4": "idle",
    }
    assert same_state(postgres_rows(local_stack, tables["postgres"]), want) == []
    sync = status["data_synchronization_status"]
    assert sync["detailed_state"] == "SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE"
    version = sync["continuous_update_status"]["last_processed_commit_version"]
    assert sync["last_sync"]["delta_table_sync_info"]["delta_commit_version"] == version
    assert sync["last_sync"]["sync_start_timestamp"] <= sync["last_sync"]["sync_end_timestamp"]
    assert status["freshness"]["postgres"]  # an encoded histogram
    # The Delta version reached, stamped when its log entry was written (the protocol's
    # commit timestamp), to the microsecond.
    stamp = sync["last_sync"]["delta_table_sync_info"]["delta_commit_timestamp"]
    assert stamp == iso(commit_time_us(delta_path(local_stack, tables["silver"]), version))


def test_the_bronze_hop_ends_when_the_source_commit_became_readable(
    local_stack: dict[str, Any], tables: dict[str, str]
) -> None:
    event = dt.datetime.now(dt.UTC)
    fix = [("e1", "d1", event.strftime("%Y-%m-%d %H:%M:%S.%f"), "idle")]
    run_sql(local_stack, insert_sql(tables["bronze"], fix))
    bronze = DeltaTable(str(delta_path(local_stack, tables["bronze"])))
    committed_us = commit_time_us(delta_path(local_stack, tables["bronze"]), bronze.version())
    with stack_api(local_stack) as api:
        start(api, tables)
        wait_for(lambda: caught_up(api, tables), "the copy and the sync")
        copy = api.get(f"/copies/{tables['silver']}").json()
    hop = Latencies.decode(copy["freshness"]["bronze"])
    assert hop.count == 1
    lag_us = committed_us - epoch_micros(event)
    # HdrHistogram keeps 3 significant digits.
    assert abs(hop.hist.get_max_value() - lag_us) <= lag_us / 500


def test_copy_and_sync_resume_from_their_versions_after_a_restart(
    local_stack: dict[str, Any], tables: dict[str, str]
) -> None:
    with stack_api(local_stack) as api:
        start(api, tables)
        run_sql(local_stack, insert_sql(tables["bronze"], BATCH_1))
        wait_for(lambda: caught_up(api, tables), "the first rows")
        stopped_copy = api.delete(f"/copies/{tables['silver']}").json()
        stopped_sync = api.delete(f"/synced-tables/{tables['synced']}").json()
        assert stopped_copy["state"] == "STOPPED"
        assert stopped_sync["data_synchronization_status"]["detailed_state"] == (
            "SYNCED_TABLED_OFFLINE"
        )
        copied = stopped_copy["last_copied_source_version"]
        processed = stopped_sync["data_synchronization_status"]["continuous_update_status"][
            "last_processed_commit_version"
        ]
        # Written while both are stopped: nothing moves.
        run_sql(local_stack, insert_sql(tables["bronze"], BATCH_2))
        assert delta_rows(local_stack, tables["silver"]).num_rows == 3
        copy, _ = start(api, tables)
        assert copy["last_copied_source_version"] >= copied  # resumed, not from zero
        run_sql(local_stack, insert_sql(tables["bronze"], BATCH_3))
        wait_for(lambda: caught_up(api, tables), "the copy and the sync after the restart")
        after = api.get(f"/synced-tables/{tables['synced']}").json()
        copy_after = api.get(f"/copies/{tables['silver']}").json()
    # Restarted, each read only what came after its version: nothing read again.
    assert copy_after["rows_copied"] == len(BATCH_2) + len(BATCH_3)
    assert after["changes_read"] == len(BATCH_2) + len(BATCH_3)
    silver = delta_rows(local_stack, tables["silver"])
    ids = silver.column("event_id").to_pylist()
    assert sorted(ids) == [f"e{i}" for i in range(1, 9)]  # each once: nothing lost or doubled
    assert (
        after["data_synchronization_status"]["continuous_update_status"][
            "last_processed_commit_version"
        ]
        > processed
    )
    assert (
        same_state(postgres_rows(local_stack, tables["postgres"]), newest_per_driver(silver)) == []
    )


def test_the_app_role_may_read_the_synced_table_but_not_write_it(
    local_stack: dict[str, Any], tables: dict[str, str]
) -> None:
    run_sql(local_stack, insert_sql(tables["bronze"], BATCH_1))
    with stack_api(local_stack) as api:
        start(api, tables)
        wait_for(lambda: caught_up(api, tables), "the copy and the sync")
    with psycopg.connect(local_stack["postgres_dsn"]) as conn:
        assert conn.execute(f"SELECT count(*) FROM {tables['postgres']}").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(f"DELETE FROM {tables['postgres']}")


def test_bad_requests_are_refused_with_the_reason(local_stack: dict[str, Any]) -> None:
    with stack_api(local_stack) as api:
        missing = api.post("/copies", json={"source": "main.nope.none", "target": "main.nope.s"})
        assert missing.status_code == 404
        assert missing.json()["message"] == "table main.nope.none does not exist"
        policy = api.post(
            "/synced-tables",
            json={
                "name": "main.nope.t",
                "spec": {
                    "source_table_full_name": "main.nope.s",
                    "primary_key_columns": ["id"],
                    "scheduling_policy": "SNAPSHOT",
                },
            },
        )
        assert policy.status_code == 400
        assert (
            policy.json()["message"]
            == "scheduling_policy 'SNAPSHOT': only CONTINUOUS is served here"
        )
        unauthorized = api.get("/copies/main.nope.s", headers={"Authorization": "Bearer wrong"})
        assert unauthorized.status_code == 401
