"""Benchmark of the benchmark harness itself.

    python -m bench.harness_bench [--out results]

1. Ceiling: the null writer (discards rows), batches of 1,000, max rate — the harness
   must sustain far more than any real writer, so it never limits one.
2. Schedule: a fixed 10,000 rows/s through Zerobus on a local stack — how close the
   achieved rate is to the target, and the send delay (actual send - scheduled time).

Both runs are ordinary benchmark runs: their result files go to <out>/ like any other,
so `dwbench history` and `dwbench compare` see them.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
from pathlib import Path

from pydantic import SecretStr

from bench.config import BenchmarkConfig
from bench.environment import capture_environment
from bench.results import RunResult
from bench.runner import run_benchmark
from bench.store import ResultStore
from dwbench.settings import Settings
from emulator.process import LocalStackProcess
from workloads import products
from writers import WriterSet
from writers.base import Targets

# What generation must sustain through the null writer (batches of 1,000): it must never be
# what limits a writer.
CEILING_TARGETS = {"telemetry": 2_000_000, "products": 1_000_000}


async def _ceiling(records: int, workload: str) -> RunResult:
    targets = Targets(mode="local", settings=Settings(app_mode="local"))
    cfg = BenchmarkConfig(
        workload=workload, writers=["null"], records=records, batch_size=1000, concurrency=4
    )
    return await run_benchmark(cfg, WriterSet(targets), environment=capture_environment(targets))


async def _schedule(seconds: float, rate: int, batch_size: int, visibility: bool) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="dwbench-") as tmp:
        stack = LocalStackProcess(
            Path(tmp), token=secrets.token_urlsafe(16), args=["--no-postgres"]
        )
        with stack:
            e = stack.endpoints
            targets = Targets(
                mode="local",
                settings=Settings(app_mode="local", data_dir=Path(tmp)),
                zerobus_endpoint=e["zerobus_endpoint"],
                workspace_url=e["api_url"],
                warehouse_id=e["warehouse_id"],
                local_token=SecretStr(e["token"]),
            )
            await asyncio.to_thread(_create_table, e)
            source = WriterSet(targets)
            cfg = BenchmarkConfig(
                writers=["zerobus"],
                duration_s=seconds,
                warmup_s=2,
                batch_size=batch_size,
                rate=rate,
                concurrency=64,
                visibility=visibility,
            )
            try:
                return await run_benchmark(cfg, source, environment=capture_environment(targets))
            finally:
                await source.close()


def _create_table(endpoints: dict[str, str]) -> None:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=endpoints["api_url"], token=endpoints["token"], auth_type="pat")
    w.statement_execution.execute_statement(
        statement=products.SCHEMA.delta_ddl("main.default.products"),
        warehouse_id=endpoints["warehouse_id"],
        wait_timeout="30s",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--records", type=int, default=5_000_000, help="null writer rows")
    p.add_argument("--seconds", type=float, default=20.0, help="fixed-rate phase length")
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=100, help="fixed-rate batch size")
    args = p.parse_args()
    store = ResultStore(args.out)

    ceilings = []
    for workload, target in CEILING_TARGETS.items():
        ceiling = asyncio.run(_ceiling(args.records, workload))
        ceilings.append(ceiling)
        (null,) = ceiling.writers
        print(f"results: {store.save(ceiling)}")
        verdict = "met" if null.rows_per_s >= target else "NOT met"
        print(
            f"harness ceiling, {workload} (null writer, batches of 1,000, "
            f"{ceiling.config.record_bytes:,} B/row): {null.rows_per_s:,.0f} rows/s "
            f"(target >= {target:,}: {verdict}), client CPU {null.client_cpu_percent}% of a core"
        )
    # Once without visibility sampling (the scheduler alone), once with it (its read-back
    # queries load the same two cores).
    runs = [
        asyncio.run(_schedule(args.seconds, args.rate, args.batch_size, visibility))
        for visibility in (False, True)
    ]
    for scheduled, visibility in zip(runs, (False, True), strict=True):
        (zb,) = scheduled.writers
        print(f"results: {store.save(scheduled)}")
        delay = zb.send_delay_ms
        corrected = zb.latency_from_intended_ms
        seen = zb.visibility
        print(
            f"fixed rate {args.rate:,} rows/s through zerobus, batches of {args.batch_size}, "
            f"visibility sampling {'on' if visibility else 'off'}: "
            f"achieved {zb.rows_per_s:,.0f} rows/s ({(zb.rate_ratio or 0) * 100:.2f} %), "
            f"send delay p99 {delay.p99 if delay else None} ms, "
            f"latency from schedule p99 {corrected.p99 if corrected else None} ms, "
            f"failed batches {zb.failed_batches}"
            + (f", ack->readable p95 {seen.p95_ms} ms ({seen.samples} samples)" if seen else "")
        )
    for warning in [w for r in runs + ceilings for w in r.warnings]:
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
