"""Benchmark of recovery: from a SIGKILL to the first successful write again.

    python -m bench.recovery_bench [--out results] [--trials 3]

The app's runtime in local mode (`dwbench.runtime.Runtime`, its supervision as the app
runs it: no test-time settings) starts its local stack; writers write through it, one
batch of 100 products after another, as a benchmark's writers do. Then, per trial:

- zerobus: SIGKILL the stack child. The runtime notices, reaps it and starts a new one on
  the same data, token and ports; the Zerobus SDK stream reconnects.
- lakebase: SIGKILL the postmaster. The stack notices and restarts Postgres on the same
  data dir and port; the writer's pool replaces its dead connections.

Measured from the kill: `detected_s`, when availability (`writer_info`, what
GET /api/v1/writers answers) first says the writer is not available; `recovered_s`, when
the first write issued after the kill is acknowledged (writes that fail are retried at
once, as a client would). Target: recovered within 5 s. A `detected_s` of none: the
writer recovered before a check saw it down (Postgres restarts in well under a second).

Results go to <out>/recovery-<timestamp>.json and a .md beside it; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from api.routes.writers import writer_info
from bench.environment import capture_environment, write_results
from dwbench.errors import DirectWriteError
from dwbench.runtime import Runtime
from dwbench.settings import Settings
from workloads import products
from workloads.base import Rows, TableRef

TARGET_S = 5.0
GIVE_UP_S = 60.0  # a trial that has not recovered by then is reported as not recovered
ROWS = 100


class _Writes:
    """One writer writing batches back to back; failures are retried at once."""

    def __init__(self, runtime: Runtime, name: str, table: TableRef) -> None:
        self.runtime, self.name, self.table = runtime, name, table
        self.make = products.WORKLOAD.batches(seed=3)
        self.k = 0
        self.acked: list[tuple[float, float]] = []  # (issued, acknowledged), monotonic
        self.failures = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.k += 1
            batch_id = f"rec{self.k:05d}x{secrets.token_hex(3)}"
            rows = Rows(self.table, self.make(self.k, ROWS, batch_id, self.name), batch_id)
            issued = time.monotonic()
            try:
                writer = await self.runtime.writers.get(self.name)
                async with asyncio.timeout(GIVE_UP_S):
                    await writer.write(rows)
            except (DirectWriteError, TimeoutError):
                self.failures += 1
                await asyncio.sleep(0.01)
                continue
            self.acked.append((issued, time.monotonic()))

    async def first_ack_issued_after(self, t: float) -> float:
        async with asyncio.timeout(GIVE_UP_S):
            while True:
                done = [acked for issued, acked in self.acked if issued >= t]
                if done:
                    return min(done)
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def _first_unavailable(
    runtime: Runtime, name: str, t0: float, recovered: asyncio.Event
) -> float | None:
    """When availability first says not available (None: not before writes recovered,
    which a Postgres restart of well under a second can beat)."""
    while time.monotonic() - t0 < GIVE_UP_S and not recovered.is_set():
        info = await writer_info(runtime, name)
        if not info.available:
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


def _postmaster(data_dir: Path) -> int:
    text = (data_dir / "local-stack" / "postgres" / "postmaster.pid").read_text()
    return int(text.split("\n", 1)[0])


async def _trial(runtime: Runtime, writes: _Writes, kill: str, data_dir: Path) -> dict[str, Any]:
    # Writing steadily first: a few acknowledgements since the last trial.
    before = len(writes.acked)
    async with asyncio.timeout(GIVE_UP_S):
        while True:  # polled: the writes task records acks as they come
            if len(writes.acked) >= before + 5:
                break
            await asyncio.sleep(0.01)
    if kill == "stack":
        assert runtime.stack is not None and runtime.stack.pid is not None
        pid = runtime.stack.pid
    else:
        pid = _postmaster(data_dir)
    failures = writes.failures
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    done = asyncio.Event()
    detected = asyncio.create_task(_first_unavailable(runtime, writes.name, t0, done))
    trial: dict[str, Any] = {"killed": kill, "pid": pid}
    try:
        recovered = await writes.first_ack_issued_after(t0)
        trial["recovered_s"] = round(recovered - t0, 3)
    except TimeoutError:
        trial["recovered_s"] = None
    done.set()
    seen = await detected
    trial["detected_s"] = round(seen - t0, 3) if seen is not None else None
    trial["failed_writes"] = writes.failures - failures
    if kill == "stack":  # the runtime's child: reaped by it, not left a zombie
        try:
            trial["zombie_left"] = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            trial["zombie_left"] = False
    # Until it is available again, so that the next trial starts from a healthy state.
    async with asyncio.timeout(GIVE_UP_S):
        while True:
            if (await writer_info(runtime, writes.name)).available:
                break
            await asyncio.sleep(0.05)
    return trial


def _summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t["recovered_s"] for t in trials if t["recovered_s"] is not None]
    return {
        "trials": len(trials),
        "recovered": len(times),
        "recovered_s_median": round(statistics.median(times), 3) if times else None,
        "recovered_s_max": max(times) if times else None,
        "within_target": all(t is not None and t <= TARGET_S for t in times)
        and len(times) == len(trials),
    }


async def run(out: Path, trials: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "recovery",
        "version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "environment": capture_environment(),
        "workload": {"batch_rows": ROWS, "writers_in_flight": 1},
        "target_s": TARGET_S,
    }
    with tempfile.TemporaryDirectory(prefix="dwbench-recovery-") as tmp:
        data_dir = Path(tmp)
        runtime = Runtime(Settings(app_mode="local", data_dir=data_dir))
        await runtime.start()
        try:
            delta = f"main.default.recovery_{secrets.token_hex(3)}"
            table = products.WORKLOAD.table.with_tables(
                delta_table=delta, postgres_table=f"public.recovery_{secrets.token_hex(3)}"
            )
            await runtime.ensure_tables(dataclasses.replace(products.WORKLOAD, table=table))
            for name, kill in (("zerobus", "stack"), ("lakebase", "postgres")):
                writer = await runtime.writers.get(name)
                await writer.prepare(table)
                writes = _Writes(runtime, name, table)
                writes.start()
                try:
                    runs = [await _trial(runtime, writes, kill, data_dir) for _ in range(trials)]
                finally:
                    await writes.stop()
                results[name] = {"killed": kill, "runs": runs, **_summary(runs)}
            assert runtime.supervisor is not None
            results["stack_restarts"] = runtime.supervisor.status.restarts
        finally:
            await runtime.stop()
    results["file"] = str(write_results(out, "recovery", results))
    Path(results["file"]).with_suffix(".md").write_text(_markdown(results))
    return results


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Recovery: SIGKILL to the first successful write again",
        "",
        f"{r['started_at']}; target {r['target_s']:g} s; batches of {ROWS} rows, one at a time.",
        "",
        "| writer | killed | trials | recovered (s) each | median | max | detected (s) each |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("zerobus", "lakebase"):
        w = r[name]
        each = ", ".join(_seconds(t["recovered_s"]) for t in w["runs"])
        seen = ", ".join(_seconds(t["detected_s"]) for t in w["runs"])
        lines.append(
            f"| {name} | {w['killed']} | {w['trials']} | {each} | {w['recovered_s_median']} "
            f"| {w['recovered_s_max']} | {seen} |"
        )
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    r = asyncio.run(run(args.out, args.trials))
    print(f"results: {r['file']}")
    for name in ("zerobus", "lakebase"):
        w = r[name]
        print(
            f"{name} ({w['killed']} SIGKILL): recovered in "
            + ", ".join(str(t["recovered_s"]) for t in w["runs"])
            + f" s; median {w['recovered_s_median']} s, max {w['recovered_s_max']} s"
            + f" (target {TARGET_S:g} s: {'met' if w['within_target'] else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
