"""Benchmark of the app's event loop while a benchmark runs (in its worker process).

    python -m bench.loop_bench [--out results] [--duration 10]

The app runs as `uvicorn main:app` in a process of its own (bench.app_bench.AppProcess) on
a local stack started for the run. A null-writer run (closed loop: it keeps a core busy)
is started; meanwhile /health is asked every 20 ms, a second start is timed (409), and
finally the run is cancelled and the time to its finished result taken. A /health
baseline with no run comes first. Results go to <out>/loop-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.app_bench import AppProcess
from bench.environment import capture_environment, write_results
from emulator.process import LocalStackProcess

HEALTH_EVERY_S = 0.02


def _figures(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p95": pct(95),
        "max": round(ordered[-1], 2),
    }


def _health(http: httpx.Client, seconds: float) -> list[float]:
    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        resp = http.get("/health")
        took.append((time.perf_counter() - began) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"/health answered {resp.status_code}: {resp.text}")
        time.sleep(HEALTH_EVERY_S)
    return took


def measure(port: int, duration_s: float) -> dict[str, Any]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        baseline = _health(http, 2.0)
        config = {
            "writers": ["null"],
            "duration_s": duration_s + 30,  # cancelled before its end
            "warmup_s": 0,
            "batch_size": 100,
            "concurrency": 4,
            "visibility": False,
        }
        resp = http.post("/api/v1/benchmarks", json=config)
        if resp.status_code != 202:
            raise RuntimeError(f"the run did not start: {resp.status_code} {resp.text}")
        run_id = resp.json()["id"]
        deadline = time.monotonic() + 30
        while http.get(f"/api/v1/benchmarks/{run_id}").json()["writers"][0]["rows"] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the run measured no rows in 30 s")
            time.sleep(0.1)
        during = _health(http, duration_s)
        began = time.perf_counter()
        second = http.post("/api/v1/benchmarks", json={"writers": ["null"], "records": 10})
        conflict_ms = (time.perf_counter() - began) * 1000
        if second.status_code != 409:
            raise RuntimeError(f"a second start answered {second.status_code}, not 409")
        running = http.get(f"/api/v1/benchmarks/{run_id}").json()
        began = time.perf_counter()
        cancelled = http.post(f"/api/v1/benchmarks/{run_id}/cancel").json()
        cancel_ms = (time.perf_counter() - began) * 1000
    null = cancelled["writers"][0]
    return {
        "health_ms_idle": _figures(baseline),
        "health_ms_during_null_run": _figures(during),
        "second_start_409_ms": round(conflict_ms, 2),
        "cancel_to_finished_ms": round(cancel_ms, 2),
        "run": {
            "id": run_id,
            "status_while_measured": running["status"],
            "status": cancelled["status"],
            "rows": null["rows"],
            "rows_per_s": null["rows_per_s"],
        },
    }


def run(out: Path, duration_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "loop",
        "version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "environment": capture_environment(),
    }
    with tempfile.TemporaryDirectory(prefix="dwbench-") as tmp:
        stack = LocalStackProcess(Path(tmp, "stack"), token=secrets.token_urlsafe(16))
        with stack, AppProcess(stack.endpoints, Path(tmp)) as app:
            results.update(measure(app.port, duration_s))
    results["file"] = str(write_results(out, "loop", results))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds of /health polling")
    args = p.parse_args()
    r = run(args.out, args.duration)
    idle, busy = r["health_ms_idle"], r["health_ms_during_null_run"]
    print(f"results: {r['file']}")
    print(f"/health idle: p50 {idle['p50']} ms, p95 {idle['p95']} ms, max {idle['max']} ms")
    print(
        f"/health during a null run ({r['run']['rows_per_s']:,.0f} rows/s): p50 {busy['p50']} "
        f"ms, p95 {busy['p95']} ms, max {busy['max']} ms over {busy['count']} requests"
    )
    print(f"second start: 409 in {r['second_start_409_ms']} ms")
    print(f"cancel -> finished result: {r['cancel_to_finished_ms']} ms ({r['run']['status']})")


if __name__ == "__main__":
    main()
