"""Benchmark of the serving path (Data Diners) on the local stack.

    python -m bench.pipeline_bench [--out results] [--drivers 500] [--rate 2000]
                                   [--duration 60] [--sync-intervals 0,15]

A local stack and the app (`uvicorn main:app`, its own process) are started for the run.
For each sync interval, one pipeline run goes through the app's API with one WebSocket
client per path reporting receipts (pipeline.driver). Reported per run: freshness per
path and hop (p50/p95/p99/max, counts) — the real-time path's event -> postgres and
-> ws_sent / browser p95 against the 300 ms target — the synced path's with its interval;
the sync correctness check (the synced Postgres table equals silver's newest row per
driver, read from the Delta table itself; the real-time table equals bronze's newest per
driver of the run); the app process's own CPU (psutil, the local stack and the fleet's
process excluded) per 1,000 events pushed; and what the rest of the machine did meanwhile
(the host's busy CPU less the run's own processes'), with a warning when other work kept
more than a quarter of a core busy: on 2 cores one busy core moves the real-time p95 by
more than half. Results go to <out>/pipeline-<timestamp>.json; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import psycopg
import pyarrow.compute as pc
from deltalake import DeltaTable

from bench.environment import OtherWork, write_results
from dwbench.assets import ROOT
from emulator.process import LocalStackProcess
from pipeline.driver import drive
from pipeline.freshness import waterfall
from pipeline.serving import PipelineSettings

TARGET_P95_MS = 300.0
COMPARED = ("status", "order_id", "latitude", "longitude", "battery_pct", "speed_mps")


class App:
    """`uvicorn main:app` on a free loopback port, on the given local stack."""

    def __init__(self, endpoints: dict[str, Any], data_dir: Path) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "APP_MODE": "local",
            "DATA_DIR": str(data_dir),
            "LOCAL_STACK_URL": endpoints["api_url"],
            "LOCAL_STACK_TOKEN": endpoints["token"],
            "RUST_LOG": "warn",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> App:
        cmd = [
            sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the app did not start")

    def cpu_s(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)  # this process only, not the stack

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(60)


def _delta(endpoints: dict[str, Any], table: str) -> Any:
    path = Path(endpoints["data_dir"]).joinpath("tables", *table.split("."))
    return DeltaTable(str(path)).to_pyarrow_table()


def _newest(rows: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows.to_pylist():
        known = out.get(row["driver_id"])
        if known is None or row["event_time"] >= known["event_time"]:
            out[row["driver_id"]] = row
    return out


def _compare(pg: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    if pg.keys() != want.keys():
        problems.append(f"{len(pg.keys() ^ want.keys())} drivers differ")
    for driver, row in want.items():
        got = pg.get(driver)
        if got is None:
            continue
        if got["event_time"] != row["event_time"]:
            problems.append(f"{driver}: event_time {got['event_time']} != {row['event_time']}")
        for column in COMPARED:
            a, b = got[column], row[column]
            if a != b and not (isinstance(a, float) and np.float32(a) == np.float32(b)):
                problems.append(f"{driver}.{column}: {a!r} != {b!r}")
    return problems


def _postgres(endpoints: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    columns = "driver_id, event_time, " + ", ".join(COMPARED)
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        cur = conn.execute(f"SELECT {columns} FROM {table}")  # our own tables' names
        names = [d.name for d in cur.description or []]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def correctness(endpoints: dict[str, Any], run_id: str) -> dict[str, Any]:
    s = PipelineSettings()
    silver = _delta(endpoints, s.silver_table)
    bronze = _delta(endpoints, s.bronze_table)
    of_run = bronze.filter(pc.starts_with(bronze.column("batch_id"), f"{run_id}-"))
    synced = _compare(_postgres(endpoints, s.synced_postgres_table), _newest(silver))
    live = _postgres(endpoints, "public.fleet_live")
    newest_run = _newest(of_run)
    realtime = _compare({d: live[d] for d in newest_run if d in live}, newest_run)
    return {
        "synced_equals_silver_newest_per_driver": not synced,
        "synced_problems": synced[:10],
        "realtime_equals_bronze_newest_per_driver": not realtime,
        "realtime_problems": realtime[:10],
        "bronze_rows_of_run": of_run.num_rows,
        "silver_rows": silver.num_rows,
        "bronze_rows": bronze.num_rows,
    }


def our_pids(endpoints: dict[str, Any]) -> list[int]:
    """The roots of the run's process trees: this process (the stack, the app and its fleet
    process are its descendants) and the stack's Postgres, which pg_ctl leaves to init."""
    pids = [os.getpid()]
    for pid_file in Path(endpoints["data_dir"]).rglob("postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pid_file.read_text().splitlines()[0]))
    return pids


async def _one(app: App, endpoints: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    cpu_before = app.cpu_s()
    other = OtherWork(lambda: our_pids(endpoints))
    other.start()
    result = await drive(app.url, config)
    result["other_work"] = other.result()
    app_cpu = app.cpu_s() - cpu_before
    pushed = result.get("cpu", {}).get("events_pushed") or 0
    result["app_process_cpu"] = {
        "cpu_s": round(app_cpu, 3),
        "events_pushed": pushed,
        "cpu_ms_per_1000_events_pushed": round(1000 * app_cpu / (pushed / 1000), 2)
        if pushed
        else None,
        "note": "the app process alone (psutil): the local stack and the fleet's process (the "
        "generator, the Zerobus client and the local real-time writer) excluded",
    }
    result["correctness"] = await asyncio.to_thread(correctness, endpoints, result["id"])
    return result


def _p95(result: dict[str, Any], path: str, hop: str) -> float | None:
    value = result.get("freshness", {}).get(path, {}).get(hop, {}).get("p95")
    return float(value) if value is not None else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="dwbench-pipeline-bench-"))
    stack = LocalStackProcess(data_dir / "local-stack", token=secrets.token_urlsafe(16))
    endpoints = stack.start()
    runs = []
    try:
        with App(endpoints, data_dir) as app:
            for interval in args.sync_intervals:
                config = {
                    "drivers": args.drivers,
                    "rate": args.rate,
                    "duration_s": args.duration,
                    "sync_interval_s": interval,
                }
                print(f"run: {config}", flush=True)
                runs.append(await _one(app, endpoints, config))
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = []
    for r in runs:
        rt_browser = _p95(r, "realtime", "browser")
        summary.append(
            {
                "sync_interval_s": r["config"]["sync_interval_s"],
                "status": r["status"],
                "events": r["events_acked"],
                "realtime_postgres_p95_ms": _p95(r, "realtime", "postgres"),
                "realtime_ws_sent_p95_ms": _p95(r, "realtime", "ws_sent"),
                "realtime_browser_p95_ms": rt_browser,
                "realtime_target_met": rt_browser is not None and rt_browser <= TARGET_P95_MS,
                "synced_postgres_p95_ms": _p95(r, "synced", "postgres"),
                "synced_browser_p95_ms": _p95(r, "synced", "browser"),
                "sync_correct": r["correctness"]["synced_equals_silver_newest_per_driver"],
                "realtime_correct": r["correctness"]["realtime_equals_bronze_newest_per_driver"],
                "app_cpu_ms_per_1000_pushed": r["app_process_cpu"]["cpu_ms_per_1000_events_pushed"],
                "other_cores_busy": r["other_work"]["other_cores_busy"],
            }
        )
    return {
        "benchmark": "pipeline",
        "target_p95_ms": TARGET_P95_MS,
        "summary": summary,
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--drivers", type=int, default=500)
    p.add_argument("--rate", type=float, default=2000)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument(
        "--sync-intervals",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[0.0, 15.0],
        help="one run per interval (default: 0,15)",
    )
    args = p.parse_args()
    results = asyncio.run(run(args))
    path = write_results(args.out, "pipeline", results)
    for r in results["runs"]:
        interval = r["config"]["sync_interval_s"]
        pace = "as fast as it keeps up" if not interval else "the service's minimum"
        print(f"\nsync interval {interval:g} s ({pace}):")
        print(waterfall(r["freshness"]))
        print(
            "correctness:",
            {k: v for k, v in r["correctness"].items() if not k.endswith("problems")},
        )
        print("app CPU:", r["app_process_cpu"])
        print("the rest of the machine:", r["other_work"])
        if r["other_work"]["warning"]:
            print(f"WARNING: {r['other_work']['warning']}")
    print()
    for line in results["summary"]:
        print(line)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
