"""What durability costs on the local Zerobus proto path: the same workload with and without fsync.

    python -m bench.durability_bench [--out results] [--seconds 12] [--rate 20000] [--rounds 2]

Two `python -m emulator` processes per round, in the same run, one after the other
(ABBA order over the rounds, so a drift of the host's load favours neither), on data
directories of their own on the disk `--out` is on: the default stack (every commit's data files,
log entry and directories fsynced before it is acknowledged) and one started with
`--no-fsync` (unsafe: acknowledged rows live in the page cache only). Each gets the same
workload through the official Zerobus SDK, one stream, proto batches of 1,000 records of
about 1 KiB (`bench.stack_bench`):

1. max rate (closed loop, `--in-flight` batches in flight): sustained rows/s, and the
   latency of each batch from send to durable ack;
2. fixed rate (open loop at `--rate` rows/s, latency from each batch's intended start, so
   a stall is not hidden): ack latency when the stack is not saturated.

The stack's own counters give the commits behind each figure (group commit gathers more
rows per commit when each commit waits on the disk) and the time its commits spent in
fsync, a figure the noise of a shared machine hardly touches. Medians over the rounds. Results go to
<out>/durability-<timestamp>.json and a summary to <out>/durability-<timestamp>.md.
Figures are of this machine's disk and cores, shared by client and stack.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.environment import (
    capture_environment,
    host_load,
    host_load_warnings,
    host_sample,
    write_results,
)
from bench.stack_bench import _create_table, fixed_rate, make_batch, max_rate
from emulator.process import LocalStackProcess

MODES = {"fsync": [], "no-fsync": ["--no-fsync"]}


def _stack_status(endpoints: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
        timeout=10,
    )
    resp.raise_for_status()
    status: dict[str, Any] = resp.json()
    return status


def _commits(status: dict[str, Any]) -> tuple[int, int, float]:
    """Commits, rows and milliseconds spent in fsync so far, on the products table."""
    table = status["tables"].get("main.default.products")
    if table is None:
        return 0, 0, 0.0
    return int(table["commits"]), int(table["rows_committed"]), float(table["fsync_ms"])


def _per_commit(
    phase: dict[str, Any], before: tuple[int, int, float], after: tuple[int, int, float]
) -> None:
    commits = max(after[0] - before[0], 1)
    phase["commits"] = after[0] - before[0]
    phase["rows_per_commit"] = round((after[1] - before[1]) / commits)
    phase["fsync_ms_per_commit"] = round((after[2] - before[2]) / commits, 3)


async def measure(
    data_dir: Path, flags: list[str], seconds: float, rate: int, in_flight: int, warmup: float
) -> dict[str, Any]:
    """Both phases against one stack started with `flags`."""
    token = secrets.token_urlsafe(16)
    with LocalStackProcess(data_dir, token=token, args=["--no-postgres", *flags]) as stack:
        endpoints = stack.endpoints
        await _create_table(endpoints)
        status = await asyncio.to_thread(_stack_status, endpoints)
        result: dict[str, Any] = {"fsync": status["fsync"]}
        before = _commits(status)
        result["max_rate"] = await max_rate(endpoints, seconds, in_flight)
        after = _commits(await asyncio.to_thread(_stack_status, endpoints))
        _per_commit(result["max_rate"], before, after)
        result["fixed_rate"] = await fixed_rate(endpoints, rate, seconds, warmup)
        _per_commit(
            result["fixed_rate"], after, _commits(await asyncio.to_thread(_stack_status, endpoints))
        )
    return result


async def run(
    out: Path, seconds: float, rate: int, in_flight: int, warmup: float, rounds_n: int
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "local-stack-durability",
        "version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "environment": capture_environment(),
        "workload": {
            "batch_records": 1_000,
            "record_bytes": len(make_batch(0, "d" * 900)[0]),
            "seconds_per_phase": seconds,
            "fixed_rate_rows_per_s": rate,
            "in_flight_batches": in_flight,
            "rounds": rounds_n,
        },
    }
    start = host_sample()
    # On the disk the results go to (not a tmpfs, where fsync costs nothing).
    with tempfile.TemporaryDirectory(prefix="dwbench-durability-", dir=out) as tmp:
        rounds: list[dict[str, Any]] = []
        for n in range(rounds_n):
            # ABBA: the order alternates, so a drift of the host's load favours neither.
            order = list(MODES) if n % 2 == 0 else list(reversed(MODES))
            this: dict[str, Any] = {}
            for mode in order:
                print(
                    f"round {n + 1}, {mode}: {seconds:g} s at max rate, "
                    f"{seconds:g} s at {rate} rows/s",
                    flush=True,
                )
                data_dir = Path(tmp, f"{mode}-{n}")
                this[mode] = await measure(data_dir, MODES[mode], seconds, rate, in_flight, warmup)
                assert this[mode]["fsync"] == (mode == "fsync"), f"the {mode} stack says otherwise"
            rounds.append(this)
    results["host_load"] = host_load(start, host_sample())
    results["rounds"] = rounds
    results["modes"] = modes = {mode: _median_of(rounds, mode) for mode in MODES}
    with_sync, without = modes["fsync"], modes["no-fsync"]
    results["cost"] = {
        "max_rate_rows_per_s_ratio": round(
            with_sync["max_rate"]["rows_per_s"] / max(without["max_rate"]["rows_per_s"], 1), 3
        ),
        "max_rate_batch_p99_ms_added": round(
            with_sync["max_rate"]["batch_p99_ms"] - without["max_rate"]["batch_p99_ms"], 3
        ),
        "fixed_rate_ack_p99_ms_added": round(
            with_sync["fixed_rate"]["ack_p99_ms"] - without["fixed_rate"]["ack_p99_ms"], 3
        ),
        "fsync_ms_per_commit": with_sync["max_rate"]["fsync_ms_per_commit"],
    }
    results["file"] = str(write_results(out, "durability", results))
    return results


def _median_of(rounds: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The median over the rounds of each figure the summary shows."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    runs = [r[mode] for r in rounds]
    return {
        "max_rate": {
            "rows_per_s": median([r["max_rate"]["rows_per_s"] for r in runs]),
            "batch_p50_ms": median([r["max_rate"]["batch_latency_ms"]["p50"] for r in runs]),
            "batch_p99_ms": median([r["max_rate"]["batch_latency_ms"]["p99"] for r in runs]),
            "rows_per_commit": median([r["max_rate"]["rows_per_commit"] for r in runs]),
            "fsync_ms_per_commit": median([r["max_rate"]["fsync_ms_per_commit"] for r in runs]),
        },
        "fixed_rate": {
            "achieved_rows_per_s": median([r["fixed_rate"]["achieved_rows_per_s"] for r in runs]),
            "ack_p50_ms": median([r["fixed_rate"]["ack_latency_ms"]["p50"] for r in runs]),
            "ack_p99_ms": median([r["fixed_rate"]["ack_latency_ms"]["p99"] for r in runs]),
            "rows_per_commit": median([r["fixed_rate"]["rows_per_commit"] for r in runs]),
            "fsync_ms_per_commit": median([r["fixed_rate"]["fsync_ms_per_commit"] for r in runs]),
        },
    }


def summary(results: dict[str, Any]) -> list[str]:
    modes = results["modes"]
    w = results["workload"]
    lines = [
        "# Local Zerobus proto path: the cost of fsync",
        "",
        f"Started {results['started_at']}; {w['rounds']} rounds (order ABBA), "
        f"{w['seconds_per_phase']:g} s per phase, stack and round; medians over the rounds. "
        f"Batches of {w['batch_records']} records of {w['record_bytes']} bytes, one stream.",
        "",
        "| stack | max rate rows/s | batch p50 ms | batch p99 ms | rows/commit | fsync ms/commit "
        f"| ack p50 ms at {w['fixed_rate_rows_per_s']:,} rows/s | ack p99 ms | fsync ms/commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in modes.items():
        mr, fr = r["max_rate"], r["fixed_rate"]
        lines.append(
            f"| {mode} | {mr['rows_per_s']:,.0f} | {mr['batch_p50_ms']} | {mr['batch_p99_ms']} "
            f"| {mr['rows_per_commit']:,.0f} | {mr['fsync_ms_per_commit']} "
            f"| {fr['ack_p50_ms']} | {fr['ack_p99_ms']} | {fr['fsync_ms_per_commit']} |"
        )
    cost = results["cost"]
    lines += [
        "",
        f"With fsync: {cost['max_rate_rows_per_s_ratio']:.1%} of the rows/s without; "
        f"batch p99 at max rate {cost['max_rate_batch_p99_ms_added']:+} ms; "
        f"ack p99 at fixed rate {cost['fixed_rate_ack_p99_ms_added']:+} ms; "
        f"{cost['fsync_ms_per_commit']} ms of fsync per commit (the stack's own count).",
        "",
        "Local figures measure this machine's disk and cores, shared by the client and the "
        "stack; `--no-fsync` is for this comparison only (acknowledged rows may be lost on "
        "power loss).",
    ]
    lines += [f"\nWarning: {w}" for w in host_load_warnings(results["host_load"])]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per phase and stack")
    p.add_argument("--rate", type=int, default=20_000, help="rows/s of the fixed-rate phase")
    p.add_argument("--in-flight", type=int, default=8, help="batches in flight at max rate")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at rate, not measured")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both stacks (ABBA order)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(
        run(args.out, args.seconds, args.rate, args.in_flight, args.warmup, args.rounds)
    )
    text = "\n".join(summary(results)) + "\n"
    md = Path(results["file"]).with_suffix(".md")
    md.write_text(text)
    print(text)
    print(f"results: {results['file']}\nsummary: {md}")


if __name__ == "__main__":
    main()
