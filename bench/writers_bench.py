"""Every writer side by side, on each built-in workload: the comparison this tool exists for.

    python -m bench.writers_bench [--out results] [--duration 30] [--warmup 5]
                                  [--workloads products,telemetry] [--writers W1,W2]

One ordinary benchmark run per workload (`dwbench run`, in a process of its own, on a
fresh local stack of its own): every writer the local stack serves, one after another,
rows of about 1 KiB in batches of 1,000, `--duration` seconds each after the warm-up.
The result files go to <out>/ like any run's (`dwbench history --results-dir <out>`,
`dwbench compare`), and a summary to <out>/writers-<timestamp>.md: rows/s, MiB/s, p50/p99,
client CPU per million rows, wire bytes per row, per writer and workload, then the issue's
targets checked against what was measured:

- `sql`: statements per 1,000-row batch with literals against the 256-parameter form
  (rows per statement = 256 // columns), from the same batches the run wrote; target <= 1/20;
- `zerobus-arrow`'s client CPU per million rows <= 1/3 of `zerobus` (proto)'s, net of the
  harness's own share (the null writer's figure: generating the rows);
- the local Zerobus proto path >= 100,000 rows/s.

Local figures measure the client and the stand-ins sharing this machine's cores, not the
service: the summary says so, with the host's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.config import BenchmarkConfig
from bench.report import fmt_int, fmt_mib, fmt_ms
from bench.results import RunResult
from bench.workload import BatchFactory
from workloads.registry import WorkloadRegistry
from writers import WRITERS, writer_class
from writers.sql import insert_statements

# The parameterised INSERT's limit: 256 parameter markers per statement.
MAX_PARAMETERS = 256
BATCH_ROWS = 1_000
RECORD_BYTES = 1_024
PROTO_TARGET_ROWS_PER_S = 100_000


def local_writers() -> list[str]:
    """Every registered writer the local stack serves (the baseline included)."""
    return [name for name in WRITERS if writer_class(name).serves_locally]


def run_workload(
    workload: str, writers: list[str], duration: float, warmup: float, out: Path
) -> RunResult:
    """One `dwbench run` of every writer on `workload`, on a local stack of its own."""
    args = [
        "--workload", workload,
        "--writers", ",".join(writers),
        "--duration", f"{duration}s",
        "--warmup", f"{warmup}s",
        "--batch-size", str(BATCH_ROWS),
        "--record-bytes", str(RECORD_BYTES),
    ]  # fmt: skip
    return cli_run(args, out, f"writers-{workload}")


def cli_run(
    args: list[str], out: Path, name: str, stack: dict[str, str] | None = None
) -> RunResult:
    """`dwbench run ARGS` in a process of its own, on a local stack of its own (a fresh
    data directory) or the one `stack` names (its api_url, token, data_dir), its result
    saved as <out>/<name>-<timestamp>.json and returned."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out / f"{name}-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="dwbench-bench-") as data_dir:
        env = {**os.environ, "APP_MODE": "local", "DATA_DIR": data_dir}
        if stack is not None:
            env.update(
                LOCAL_STACK_URL=stack["api_url"],
                LOCAL_STACK_TOKEN=stack["token"],
                DATA_DIR=stack["data_dir"],
            )
        cmd = [sys.executable, "-m", "dwbench.cli", "run", *args, "--out", str(target)]
        print(f"$ {' '.join(cmd[2:])}", flush=True)
        done = subprocess.run(cmd, env=env, check=False)
    if not target.exists():
        raise SystemExit(f"the {name} run wrote no result (exit {done.returncode})")
    return RunResult.model_validate_json(target.read_text())


def statements_per_batch(workload: str) -> tuple[int, int, int]:
    """(columns, statements with literals, statements with 256 parameters) for one batch."""
    wl = WorkloadRegistry().get(workload)
    cfg = BenchmarkConfig(
        workload=workload, writers=["sql"], batch_size=BATCH_ROWS, record_bytes=RECORD_BYTES
    )
    batch = BatchFactory(cfg, wl, run_id="bench", source="sql").batch(0)
    columns = len(wl.table.schema.columns)
    literal = len(insert_statements(batch.rows))
    parameterised = math.ceil(BATCH_ROWS / (MAX_PARAMETERS // columns))
    return columns, literal, parameterised


def summary(runs: dict[str, RunResult]) -> list[str]:
    lines = ["# Every writer side by side", ""]
    for workload, run in runs.items():
        env = run.environment
        lines += [
            f"## {workload} — run `{run.id}`, {run.mode} mode",
            "",
            f"{run.config.duration_s:g} s per writer after {run.config.warmup_s:g} s of warm-up, "
            f"batches of {run.config.batch_size:,}, ~{run.config.record_bytes:,} B/row, "
            f"concurrency {run.config.concurrency}. Host: {env.get('cpu_count', '?')} cores.",
            "",
            "| writer | status | rows/s | MiB/s | p50 ms | p99 ms | client CPU s/M rows | "
            "wire B/row | quota ceiling rows/s (projection) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for w in run.writers:
            lat = w.latency_ms
            p50 = lat.p50 if lat and lat.supports("p50") else None
            p99 = lat.p99 if lat and lat.supports("p99") else None
            quota = w.quota_projection
            lines.append(
                f"| {w.writer} | {w.status} | {fmt_int(w.rows_per_s)} | {fmt_mib(w.mib_per_s)} "
                f"| {fmt_ms(p50)} | {fmt_ms(p99)} | {fmt_mib(w.client_cpu_s_per_million_rows)} "
                f"| {fmt_int(w.wire_bytes_per_row)} | "
                + (f"{fmt_int(quota.rows_per_s)} ({quota.limited_by})" if quota else "-")
                + " |"
            )
        for w in run.writers:
            if w.error:
                lines.append(f"- {w.writer}: {w.error}")
        lines += [f"- warning: {text}" for text in run.warnings]
        lines.append("")
    lines += ["## Targets", ""]
    for workload, run in runs.items():
        by_name = {w.writer: w for w in run.writers}
        columns, literal, parameterised = statements_per_batch(workload)
        ratio = literal / parameterised
        lines.append(
            f"- {workload}, `sql` statements per {BATCH_ROWS:,}-row batch: {literal} with "
            f"literals, {parameterised} with 256 parameters ({columns} columns, "
            f"{MAX_PARAMETERS // columns} rows each): 1/{parameterised / literal:.0f} — "
            + ("met (<= 1/20)" if ratio <= 1 / 20 else "NOT met (target <= 1/20)")
        )
        proto, arrow = by_name.get("zerobus"), by_name.get("zerobus-arrow")
        null = by_name.get("null")
        cpu = {
            name: w.client_cpu_s_per_million_rows
            for name, w in (("proto", proto), ("arrow", arrow), ("null", null))
            if w is not None and w.client_cpu_s_per_million_rows is not None
        }
        if "proto" in cpu and "arrow" in cpu:
            # The harness's own share (generating the rows) is the null writer's figure:
            # the writers' costs are judged net of it, and the raw figures shown too.
            harness = cpu.get("null", 0.0)
            raw = cpu["arrow"] / cpu["proto"]
            net = (cpu["arrow"] - harness) / max(cpu["proto"] - harness, 1e-9)
            lines.append(
                f"- {workload}, `zerobus-arrow` client CPU per million rows: "
                f"{fmt_mib(cpu['arrow'])} s against proto's {fmt_mib(cpu['proto'])} s "
                f"(ratio {raw:.2f}); net of the harness's {fmt_mib(harness)} s (null writer) "
                f"{net:.2f} — " + ("met (<= 1/3)" if net <= 1 / 3 else "NOT met (target <= 1/3)")
            )
        if proto:
            met = proto.rows_per_s >= PROTO_TARGET_ROWS_PER_S
            lines.append(
                f"- {workload}, local Zerobus proto path: {fmt_int(proto.rows_per_s)} rows/s — "
                + (
                    "met (>= 100,000)"
                    if met
                    else "NOT met (target >= 100,000): the stand-in decodes protobuf and "
                    "commits Delta in Python on the same cores as the client; "
                    "`python -m bench.stack_bench` measures the client against an ack-only "
                    "stand-in"
                )
            )
    lines += [
        "",
        "Local mode: these figures measure the client libraries and the local stand-ins "
        "sharing one machine, not the Databricks services.",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured per writer")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--workloads", default="products,telemetry")
    p.add_argument("--writers", default=None, help="default: every writer the stack serves")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    writers = args.writers.split(",") if args.writers else local_writers()
    runs = {
        workload: run_workload(workload, writers, args.duration, args.warmup, args.out)
        for workload in args.workloads.split(",")
    }
    text = "\n".join(summary(runs)) + "\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"writers-{stamp}.md"
    path.write_text(text)
    print(text)
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
