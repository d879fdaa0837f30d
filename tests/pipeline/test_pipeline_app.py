"""The serving path end to end through the app: runs, both paths into Postgres, the
WebSocket feed, and bad input. Small fleets for a few seconds each."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict
from websockets.sync.client import ClientConnection, connect

from pipeline.realtime import PostgresForeachWriter
from pipeline.watch import WatchStats, watch
from tests.pipeline.support import (
    delta_rows,
    newest_per_driver,
    postgres_rows,
    same_state,
    stack_api,
    wait_for,
)
from workloads.wire import epoch_micros

BRONZE = "main.diners.fleet_bronze"
SILVER = "main.diners.fleet_silver"
SYNCED_PG = "diners.fleet_synced"


@pytest.fixture(autouse=True)
def no_run_going(client: httpx.Client) -> None:
    """Each test starts its own run: one left going by another test is stopped first."""
    if client.get("/api/v1/pipeline/runs/current").status_code == 200:
        client.post("/api/v1/pipeline/runs/current/stop")
        wait_for(
            lambda: current(client)["status"] != "running",
            "the previous run to stop",
            timeout_s=120,
            every_s=0.5,
        )


def run_pipeline(client: httpx.Client, **config: Any) -> dict[str, Any]:
    started = client.post("/api/v1/pipeline/runs", json=config)
    assert started.status_code == 201, started.text
    assert started.json()["status"] == "running"
    return started.json()


def current(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/api/v1/pipeline/runs/current").json()
    return status


def finished(client: httpx.Client) -> dict[str, Any]:
    seen: list[str] = []

    def done() -> dict[str, Any] | None:
        status = current(client)
        seen[:] = [status["phase"]]
        return status if status["status"] in ("completed", "failed") else None

    try:
        status: dict[str, Any] = wait_for(
            done, "the pipeline run to finish", timeout_s=120, every_s=0.5
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; phase {seen}") from None
    assert status["status"] == "completed", status["error"]
    return status


def of_run(rows: Any, run_id: str) -> Any:
    import pyarrow.compute as pc

    return rows.filter(pc.starts_with(rows.column("batch_id"), f"{run_id}-"))


class Watchers:
    """A `pipeline.watch` client per path (as the map behaves: it answers every message),
    on an event loop of its own thread."""

    def __init__(self, client: httpx.Client) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.stats = {path: WatchStats() for path in ("realtime", "synced")}
        self.tasks = [
            asyncio.run_coroutine_threadsafe(watch(ws_url(client, p), self.stop, s), self.loop)
            for p, s in self.stats.items()
        ]
        wait_for(lambda: all(s.snapshots for s in self.stats.values()), "the watchers' snapshots")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        for task in self.tasks:
            task.result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def test_every_event_reaches_postgres_on_both_paths(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    watchers = Watchers(client)
    try:
        run = run_pipeline(client, drivers=20, rate=200, duration_s=2, realtime_mode="insert")
        status = finished(client)
    finally:
        watchers.close()
    produced = status["events_produced"]
    assert produced == 400
    assert status["events_acked"] == produced and status["events_failed"] == 0
    bronze = of_run(delta_rows(local_stack, BRONZE), run["id"])
    silver_all = delta_rows(local_stack, SILVER)
    silver = of_run(silver_all, run["id"])
    assert bronze.num_rows == produced
    assert sorted(silver.column("event_id").to_pylist()) == sorted(
        bronze.column("event_id").to_pylist()
    )
    # the real-time path: every event, as itself (insert mode)
    realtime = postgres_rows(
        local_stack, "public.fleet_events", f"WHERE batch_id LIKE '{run['id']}-%'"
    )
    assert sorted(r["event_id"] for r in realtime) == sorted(bronze.column("event_id").to_pylist())
    # the synced path: the newest row per driver of the whole of silver, exactly
    assert same_state(postgres_rows(local_stack, SYNCED_PG), newest_per_driver(silver_all)) == []
    synced = status["paths"]["synced"]
    assert synced["sync"]["detailed_state"] == "SYNCED_TABLE_ONLINE_CONTINUOUS_UPDATE"
    assert synced["sync"]["last_processed_commit_version"] == synced["copy"]["target_version"]
    assert status["paths"]["realtime"]["rows_written"] == produced
    fresh = status["freshness"]
    assert fresh["realtime"]["ack"]["count"] == produced
    assert fresh["realtime"]["postgres"]["count"] == produced
    for hop in ("ack", "bronze", "silver", "postgres"):
        assert fresh["synced"][hop]["count"] == produced, hop
        assert set(fresh["synced"][hop]) == {"p50", "p95", "p99", "max", "count"}
    # One client per path answering every message: each update sent was received, the
    # last sync's included (the run waits for them before it ends).
    for path in ("realtime", "synced"):
        assert fresh[path]["browser"]["count"] == fresh[path]["ws_sent"]["count"] > 0, path


def test_the_copy_and_the_sync_restarted_mid_run_resume_and_lose_nothing(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    # 8 s of writing: the restart below happens well inside it.
    run = run_pipeline(client, drivers=20, rate=200, duration_s=8, realtime_mode="insert")
    wait_for(lambda: current(client)["events_acked"] >= 200, "the fleet to write")
    synced_name = "main.diners.fleet_synced"
    with stack_api(local_stack) as api:
        wait_for(
            lambda: api.get(f"/synced-tables/{synced_name}").json()["changes_read"] > 0,
            "the sync to apply changes of this run",
        )
        assert api.delete(f"/copies/{SILVER}").json()["state"] == "STOPPED"
        stopped = api.delete(f"/synced-tables/{synced_name}").json()
        assert stopped["data_synchronization_status"]["detailed_state"] == "SYNCED_TABLED_OFFLINE"
        acked = current(client)["events_acked"]
        wait_for(lambda: current(client)["events_acked"] >= acked + 200, "writes meanwhile")
        copy = api.post("/copies", json={"source": BRONZE, "target": SILVER, "run_id": run["id"]})
        assert copy.status_code == 200, copy.text
        synced = api.post(
            "/synced-tables",
            json={
                "name": synced_name,
                "spec": {
                    "source_table_full_name": SILVER,
                    "primary_key_columns": ["driver_id"],
                    "timeseries_key": "event_time",
                },
                "sync_interval_s": 0,
                "run_id": run["id"],
            },
        )
        assert synced.status_code == 200, synced.text
    status = finished(client)
    bronze = of_run(delta_rows(local_stack, BRONZE), run["id"])
    silver_all = delta_rows(local_stack, SILVER)
    silver = of_run(silver_all, run["id"])
    assert bronze.num_rows == status["events_produced"] == 1600
    # Each event once in silver: the copy resumed after its last version, not before it.
    assert sorted(silver.column("event_id").to_pylist()) == sorted(
        bronze.column("event_id").to_pylist()
    )
    assert same_state(postgres_rows(local_stack, SYNCED_PG), newest_per_driver(silver_all)) == []


def test_upsert_mode_keeps_each_drivers_newest_fix(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    run = run_pipeline(client, drivers=10, rate=100, duration_s=2, realtime_mode="upsert")
    status = finished(client)
    assert status["paths"]["realtime"]["rows_written"] == status["events_acked"] == 200
    newest = newest_per_driver(of_run(delta_rows(local_stack, BRONZE), run["id"]))
    live = [r for r in postgres_rows(local_stack, "public.fleet_live") if r["driver_id"] in newest]
    assert same_state(live, newest) == []


def ws_url(client: httpx.Client, path: str) -> str:
    return str(client.base_url).replace("http://", "ws://") + f"/ws/fleet?path={path}"


def receive(ws: ClientConnection, kind: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=timeout_s))
        if message["type"] == kind:
            return message
        if message["type"] == "ping":
            ws.send(
                json.dumps(
                    {
                        "type": "pong",
                        "server_us": message["server_us"],
                        "client_us": time.time_ns() // 1000,
                    }
                )
            )
    raise AssertionError(f"no {kind} message within {timeout_s} s")


def as_state(drivers: list[dict[str, Any]]) -> dict[str, tuple[int, str, float, float]]:
    return {d["driver_id"]: (d["event_time_us"], d["status"], d["lat"], d["lon"]) for d in drivers}


def db_state(local_stack: dict[str, Any], table: str) -> dict[str, tuple[int, str, float, float]]:
    return {
        r["driver_id"]: (
            epoch_micros(r["event_time"]),
            r["status"],
            r["latitude"],
            r["longitude"],
        )
        for r in postgres_rows(local_stack, table)
    }


@pytest.mark.parametrize(
    ("path", "table"), [("realtime", "public.fleet_live"), ("synced", SYNCED_PG)]
)
def test_websocket_snapshot_then_changes_and_a_reconnect_converges(
    client: httpx.Client, local_stack: dict[str, Any], path: str, table: str
) -> None:
    with connect(ws_url(client, path)) as ws:
        first = json.loads(ws.recv(timeout=30))
        assert first["type"] == "snapshot" and first["path"] == path
        run_pipeline(client, drivers=15, rate=150, duration_s=3, realtime_mode="upsert")
        changes = receive(ws, "changes")
        assert changes["path"] == path and changes["drivers"]
        driver = changes["drivers"][0]
        assert set(driver) == {
            "driver_id",
            "lat",
            "lon",
            "status",
            "order_id",
            "speed_mps",
            "heading_deg",
            "battery_pct",
            "event_time_us",
        }
        ws.send(
            json.dumps(
                {
                    "type": "received",
                    "sent_us": changes["sent_us"],
                    "received_us": time.time_ns() // 1000,
                }
            )
        )
        receive(ws, "status")
    # a client that went away reconnects mid-run: snapshot first, then it follows along
    with connect(ws_url(client, path)) as ws:
        snapshot = json.loads(ws.recv(timeout=30))
        assert snapshot["type"] == "snapshot"
        state = as_state(snapshot["drivers"])
        status = finished(client)

        def converged() -> bool:
            try:
                message = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                message = {"type": "none"}
            if message["type"] == "changes":
                state.update(as_state(message["drivers"]))
            return state == db_state(local_stack, table)

        wait_for(converged, f"the {path} client to converge on Postgres")
    assert status["freshness"][path]["ws_sent"]["count"] > 0
    assert status["freshness"][path]["browser"]["count"] > 0


def test_a_row_too_big_for_its_notification_still_reaches_the_clients(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    run_pipeline(client, drivers=1, rate=10, duration_s=1, realtime_mode="upsert")
    finished(client)  # the real-time feed follows public.fleet_live now
    order = "order-" + "x" * 7990  # its row's notification would pass 8,000 bytes
    at = dt.datetime.now(dt.UTC)
    with connect(ws_url(client, "realtime")) as ws:
        receive(ws, "snapshot")
        writer = PostgresForeachWriter(lambda: conninfo_to_dict(local_stack["postgres_dsn"]))
        writer.open(partition_id=0, epoch_id=0)
        writer.process(
            {
                "event_id": f"big-{at.timestamp()}",
                "driver_id": "driver-big-order",
                "order_id": order,
                "event_time": at,
                "latitude": 37.76,
                "longitude": -122.43,
                "status": "picked_up",
                "batch_id": "big",
                "source": "test",
            }
        )
        writer.close(None)

        def big_order() -> dict[str, Any] | None:
            changes = receive(ws, "changes")
            return next((d for d in changes["drivers"] if d["order_id"] == order), None)

        driver = wait_for(big_order, "the cut row's driver on the socket")
    assert driver["driver_id"] == "driver-big-order" and driver["status"] == "picked_up"
    assert driver["event_time_us"] == epoch_micros(at)


def test_bad_input_is_counted_and_never_stops_the_run(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    run_pipeline(client, drivers=5, rate=50, duration_s=3, realtime_mode="upsert")
    wait_for(lambda: current(client)["phase"] == "writing", "the fleet to start writing")
    now = time.time_ns() // 1000
    good = {
        "driver_id": "driver-phone-1",
        "event_time_us": now,
        "latitude": 37.76,
        "longitude": -122.43,
        "status": "to_customer",
    }
    reply = client.post(
        "/api/v1/pipeline/events",
        json={
            "events": [
                good,
                {**good, "status": "abducted"},
                {**good, "event_time_us": now + 120_000_000},
                {"driver_id": 7},
                "junk",
            ]
        },
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "accepted": 1,
        "rejected": {"unknown_status": 1, "clock_skew": 1, "malformed": 2},
    }
    with connect(ws_url(client, "realtime")) as ws:
        ws.recv(timeout=30)
        ws.send("not json")
        ws.send(json.dumps({"type": "received", "event_time_us": "soon"}))
        receive(ws, "status")
    status = finished(client)
    assert status["bad_events"] == {
        "unknown_status": 1,
        "clock_skew": 1,
        "malformed": 2,
        "malformed_message": 2,
    }
    bronze = delta_rows(local_stack, BRONZE)
    assert "driver-phone-1" in bronze.column("driver_id").to_pylist()
    late = client.post("/api/v1/pipeline/events", json={"events": [good]})
    assert late.status_code == 409
    assert late.json()["message"] == "no pipeline run is writing events now"


def test_every_event_accepted_until_the_run_ends_is_written(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    run = run_pipeline(client, drivers=2, rate=20, duration_s=2, realtime_mode="insert")
    wait_for(lambda: current(client)["phase"] == "writing", "the fleet to start writing")
    accepted = []
    for n in range(100_000):  # posting until the run refuses events: its end
        event_id = f"{run['id']}-phone-{n}"
        reply = client.post(
            "/api/v1/pipeline/events",
            json={
                "events": [
                    {
                        "event_id": event_id,
                        "driver_id": "driver-phone-2",
                        "event_time_us": time.time_ns() // 1000,
                        "latitude": 37.76,
                        "longitude": -122.43,
                        "status": "idle",
                    }
                ]
            },
        )
        if reply.status_code == 409:
            break
        assert reply.json() == {"accepted": 1, "rejected": {}}, reply.text
        accepted.append(event_id)
    assert accepted
    status = finished(client)
    assert status["events_failed"] == 0
    bronze = set(delta_rows(local_stack, BRONZE).column("event_id").to_pylist())
    assert [e for e in accepted if e not in bronze] == []
    realtime = postgres_rows(
        local_stack, "public.fleet_events", f"WHERE event_id LIKE '{run['id']}-phone-%'"
    )
    assert sorted(r["event_id"] for r in realtime) == sorted(accepted)


def test_one_run_at_a_time_and_bad_settings_refused(client: httpx.Client) -> None:
    run_pipeline(client, drivers=2, rate=20, duration_s=2)
    again = client.post("/api/v1/pipeline/runs", json={"drivers": 2, "rate": 20, "duration_s": 2})
    assert again.status_code == 409
    assert "is running; stop it first" in again.json()["message"]
    stopped = client.post("/api/v1/pipeline/runs/current/stop")
    assert stopped.status_code == 200
    assert stopped.json()["status"] in ("stopping", "completed")
    bad = client.post("/api/v1/pipeline/runs", json={"drivers": 0, "rate": -1})
    assert bad.status_code == 422
    assert {e["loc"][-1] for e in bad.json()["detail"]} == {"drivers", "rate"}
    assert client.get("/api/v1/pipeline/city").json()["bbox"] == [-122.47, 37.74, -122.39, 37.8]
    finished(client)


def test_the_fleet_runs_in_a_process_of_its_own_that_holds_no_secret_in_its_environment(
    client: httpx.Client, local_stack: dict[str, Any]
) -> None:
    run_pipeline(client, drivers=5, rate=50, duration_s=3)
    writing = wait_for(
        lambda: (s := current(client))["phase"] == "writing" and s, "the fleet to start writing"
    )
    pid = writing["fleet_process"]["pid"]
    assert isinstance(pid, int) and pid != os.getpid()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"pipeline.fleet_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    password = conninfo_to_dict(local_stack["postgres_dsn"])["password"]
    for secret in (local_stack["token"], password):
        assert secret.encode() not in environ
    status = finished(client)
    assert status["events_acked"] == status["events_produced"] == 150
    result = client.get("/api/v1/pipeline/runs/current/result").json()
    # The app's CPU is its own; the fleet's (generator, Zerobus client, real-time sink) apart.
    assert result["cpu"]["fleet_process_cpu_s"] > 0
    assert result["cpu"]["fleet_process_cpu_s"] == status["fleet_process"]["cpu_s"]
    assert "run in a process of their own" in result["cpu"]["note"]


def test_a_fleet_process_that_dies_fails_the_run_with_how_it_ended(
    client: httpx.Client,
) -> None:
    run_pipeline(client, drivers=5, rate=50, duration_s=60)
    writing = wait_for(
        lambda: (s := current(client))["phase"] == "writing" and s, "the fleet to start writing"
    )
    pid = writing["fleet_process"]["pid"]
    os.kill(pid, signal.SIGKILL)
    status = wait_for(
        lambda: (s := current(client))["status"] == "failed" and s,
        "the run to fail",
        timeout_s=60,
        every_s=0.2,
    )
    assert status["error"] == f"the fleet process (pid {pid}) was killed by SIGKILL"
    assert status["phase"] == "done"
