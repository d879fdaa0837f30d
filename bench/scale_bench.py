"""Scale on this machine: more client processes, more streams.

    python -m bench.scale_bench [--out results] [--duration 60] [--warmup 3] [--cases ...]

Ordinary `dwbench run`s (each in a process of its own, on a local stack of its own), the
result files in <out>/ like any run's, and a summary in <out>/scale-<timestamp>.md:

- the null writer (the harness ceiling: generating rows, no target) through 1 and then 2
  client processes (`--executor processes`): target, 2 processes >= 1.7x one;
- Zerobus proto through 1 and then 4 streams in one client (`--streams`): target, 4
  streams >= 1.5x one, or what saturates (the client's CPU, the host's cores the local
  stack shares);
- the null writer through 2 Spark tasks (`--executor spark`, local[2]): target, within 10 %
  of 2 processes;
- each run's per-stream rows/s and MB/s beside the documented per-stream quotas.

Local figures measure the clients and the stand-ins sharing this machine's cores, not the
service: the summary says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import tempfile
import time
from pathlib import Path

from bench.quotas import STREAM_BYTES_PER_S, STREAM_RECORDS_PER_S
from bench.report import fmt_int
from bench.results import RunResult, WriterResult
from bench.writers_bench import cli_run
from emulator.process import LocalStackProcess

BATCH_ROWS = 1_000
NULL_TARGET = 1.7
STREAMS_TARGET = 1.5
SPARK_WITHIN = 0.10
CASES: dict[str, list[str]] = {
    "null-1-client": ["--writers", "null", "--clients", "1", "--executor", "processes"],
    "null-2-clients": ["--writers", "null", "--clients", "2", "--executor", "processes"],
    "null-2-spark-tasks": ["--writers", "null", "--clients", "2", "--executor", "spark"],
    "zerobus-1-stream": ["--writers", "zerobus", "--streams", "1"],
    "zerobus-4-streams": ["--writers", "zerobus", "--streams", "4"],
    "zerobus-2-streams-x-2-clients": ["--writers", "zerobus", "--streams", "2", "--clients", "2"],
}


def run_case(name: str, duration: float, warmup: float, out: Path) -> tuple[RunResult, float]:
    """One case on a fresh local stack of its own; the result and the share of a core the
    stack's process used over the run (what a local figure shares the cores with)."""
    args = [
        *CASES[name],
        "--duration", f"{duration}s",
        "--warmup", f"{warmup}s",
        "--batch-size", str(BATCH_ROWS),
        "--no-visibility",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dwbench-scale-") as tmp:
        stack = LocalStackProcess(Path(tmp), token=secrets.token_urlsafe(16))
        with stack:
            assert stack.pid is not None
            before, started = _cpu_seconds(stack.pid), time.monotonic()
            run = cli_run(args, out, f"scale-{name}", stack=stack.endpoints)
            share = (_cpu_seconds(stack.pid) - before) / (time.monotonic() - started)
    return run, share


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _writer(run: RunResult) -> WriterResult:
    (writer,) = run.writers
    return writer


def _cpu(w: WriterResult) -> str:
    """The client's CPU, as a share of a core (a merge of clients: their mean)."""
    if w.client_cpu_percent is None:
        return "-"
    return f"{w.client_cpu_percent:.0f} %" + (" per client" if w.clients > 1 else "")


def summary(runs: dict[str, RunResult], stack_cpu: dict[str, float]) -> list[str]:
    lines = [
        "# Scale: client processes and streams on this machine",
        "",
        f"{BATCH_ROWS:,}-row batches, ~1 KiB rows, closed loop (as fast as each path acks).",
        "",
        "| case | rows/s | streams x clients | per stream rows/s | per stream MB/s "
        "| quota per stream | client CPU | local stack CPU | host load after |",
        "|---|---:|---|---:|---:|---|---|---|---|",
    ]
    for name, run in runs.items():
        w = _writer(run)
        shards = w.streams * w.clients
        stream_rows = w.rows_per_s / shards
        stream_mb = w.bytes / 1e6 / w.elapsed_s / shards if w.elapsed_s else 0.0
        quota = w.quota_projection
        quota_text = (
            f"{fmt_int(quota.rows_per_s)} rows/s ({quota.limited_by}); "
            f"{stream_rows / quota.rows_per_s:.1%} used"
            if quota
            else f"- ({STREAM_RECORDS_PER_S:,} rec/s, {STREAM_BYTES_PER_S // 10**6} MB/s "
            "published for Zerobus)"
        )
        load = (run.environment.get("host_load") or {}).get("loadavg_after")
        lines.append(
            f"| {name} | {fmt_int(w.rows_per_s)} | {w.streams} x {w.clients} "
            f"| {fmt_int(stream_rows)} | {stream_mb:.2f} | {quota_text} | {_cpu(w)} "
            f"| {stack_cpu.get(name, 0):.0%} | {f'{load[0]:.2f}' if load else '-'} |"
        )
        if w.skew is not None and w.clients > 1:
            lines.append(
                f"|  | start spread {w.skew.start_s or 0:.3f} s, rows/s spread "
                f"{(w.skew.rows_per_s_spread or 0):.1%} |  |  |  |  |  |  |  |"
            )
    lines += ["", "## Targets", ""]
    lines.append(
        _ratio(runs, "null-1-client", "null-2-clients", NULL_TARGET, "null writer, 2 processes")
    )
    lines.append(
        _ratio(
            runs,
            "zerobus-1-stream",
            "zerobus-4-streams",
            STREAMS_TARGET,
            "zerobus, 4 streams",
            stack_cpu,
        )
    )
    lines.append(_spark(runs))
    lines += [
        "",
        "Local mode: these figures measure the client libraries and the local stand-ins "
        "sharing one machine's cores, not the Databricks services; the `databricks-job` "
        "executor runs the same Spark tasks on a workspace's job cluster, which this "
        "benchmark does not reach.",
    ]
    return lines


def _ratio(
    runs: dict[str, RunResult],
    base: str,
    scaled: str,
    target: float,
    what: str,
    stack_cpu: dict[str, float] | None = None,
) -> str:
    if base not in runs or scaled not in runs:
        return f"- {what}: not run"
    one, many = _writer(runs[base]), _writer(runs[scaled])
    ratio = many.rows_per_s / one.rows_per_s if one.rows_per_s else 0.0
    verdict = f"met (>= {target}x)" if ratio >= target else f"NOT met (target >= {target}x)"
    line = (
        f"- {what}: {fmt_int(many.rows_per_s)} rows/s against {fmt_int(one.rows_per_s)} "
        f"= {ratio:.2f}x — {verdict}"
    )
    if ratio < target:
        cores = runs[scaled].environment.get("host_load", {}).get("cpu_count", "?")
        line += (
            f"; the client used {many.client_cpu_percent or 0:.0f} % of a core (one process, "
            f"{many.streams} streams) and the local stack, decoding and committing on the "
            f"same {cores} cores, {(stack_cpu or {}).get(scaled, 0):.0%} of one"
        )
    return line


def _spark(runs: dict[str, RunResult]) -> str:
    what = "null writer, spark local[2] against 2 processes"
    if "null-2-clients" not in runs or "null-2-spark-tasks" not in runs:
        return f"- {what}: not run"
    processes, spark = _writer(runs["null-2-clients"]), _writer(runs["null-2-spark-tasks"])
    gap = spark.rows_per_s / processes.rows_per_s - 1 if processes.rows_per_s else -1.0
    verdict = (
        f"met (within {SPARK_WITHIN:.0%})"
        if abs(gap) <= SPARK_WITHIN
        else f"NOT met (target within {SPARK_WITHIN:.0%})"
    )
    return (
        f"- {what}: {fmt_int(spark.rows_per_s)} rows/s against {fmt_int(processes.rows_per_s)} "
        f"({gap:+.1%}) — {verdict}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, RunResult] = {}
    stack_cpu: dict[str, float] = {}
    for name in args.cases.split(","):
        runs[name], stack_cpu[name] = run_case(name, args.duration, args.warmup, args.out)
    text = "\n".join(summary(runs, stack_cpu)) + "\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"scale-{stamp}.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
