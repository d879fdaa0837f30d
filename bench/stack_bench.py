"""Benchmark of the local stack's Zerobus service with the official SDK.

    python -m bench.stack_bench [--out results] [--seconds 15] [--rate 50000]

Three phases against `python -m emulator` processes, one stream each, proto batches
of 1,000 records of about 1 KiB:

1. fixed rate (open loop: batch k is due at t0 + k/rate, whatever came back): durable-ack
   latency per batch, measured from the batch's intended start, so a stall is not hidden
   (coordinated omission); and ack -> readable latency, sampled by an independent Delta
   reader that polls for the batch's rows;
2. max rate (closed loop, a fixed number of batches in flight): sustained rows/s;
3. max rate against a stack started with --ack-only (acknowledges without decoding or
   storing): the client and transport ceiling, and our ratio to it.

Results go to <out>/stack-<timestamp>.json; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from hdrh.histogram import HdrHistogram
from zerobus.sdk.aio import ZerobusSdk
from zerobus.sdk.shared import HeadersProvider, StreamConfigurationOptions, TableProperties

from bench.environment import capture_environment, write_results
from emulator.process import LocalStackProcess
from workloads import products
from workloads.proto import proto_form

TABLE = "main.default.products"
DDL = products.SCHEMA.delta_ddl("main.default.products")
PRODUCTS_PROTO = proto_form(products.SCHEMA, "products")
BATCH = 1000
PERCENTILES = (50, 90, 95, 99, 99.9)


class _Headers(HeadersProvider):
    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def get_headers(self) -> list[tuple[str, str]]:
        return [
            ("authorization", f"Bearer {self._token}"),
            ("x-databricks-zerobus-table-name", TABLE),
        ]


def _string_field(number: int, value: str) -> bytes:
    data = value.encode()
    assert len(data) < 128  # one-byte length varint
    return bytes([number << 3 | 2, len(data)]) + data


def make_batch(k: int, description: str) -> list[bytes]:
    """1,000 distinct records of about 1 KiB, tagged with batch id b<k>.

    The fields common to every record are serialized once; record_id and batch_id are
    appended per record (the wire format allows fields in any order). This keeps the
    load generator cheap, so the client does not steal the CPU of the server it measures.
    """
    batch_id = f"b{k:09d}"
    common = PRODUCTS_PROTO.message_class(
        product_id="PROD042",
        product_name="Smart Watch",
        product_price=499.99,
        category="electronics",
        sale_start_date=20_000,
        sale_stop_date=20_100,
        processed_at=int(time.time() * 1_000_000),
        source="zerobus",
        description=description,
    ).SerializePartialToString() + _string_field(9, batch_id)
    return [common + _string_field(1, f"{batch_id}-{i:04d}") for i in range(BATCH)]


def _summary(hist: HdrHistogram, unit_div: float = 1000.0) -> dict[str, float]:
    """Percentiles of a histogram of microseconds, in milliseconds."""
    if hist.get_total_count() == 0:
        return {}
    out = {f"p{p:g}": hist.get_value_at_percentile(p) / unit_div for p in PERCENTILES}
    out.update(
        min=hist.get_min_value() / unit_div,
        mean=round(hist.get_mean_value() / unit_div, 3),
        max=hist.get_max_value() / unit_div,
        count=hist.get_total_count(),
    )
    return out


async def _create_table(endpoints: dict[str, Any]) -> None:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=endpoints["api_url"], token=endpoints["token"], auth_type="pat")
    await asyncio.to_thread(
        w.statement_execution.execute_statement,
        statement=DDL,
        warehouse_id=endpoints["warehouse_id"],
        wait_timeout="30s",
    )


async def _open_stream(endpoints: dict[str, Any]) -> Any:
    sdk = ZerobusSdk(endpoints["zerobus_endpoint"], endpoints["api_url"])
    await sdk._inner.set_use_tls(False)
    return await sdk.create_stream(
        table_properties=TableProperties(TABLE, PRODUCTS_PROTO.descriptor),
        headers_provider=_Headers(endpoints["token"]),
        options=StreamConfigurationOptions(max_inflight_records=200_000),
    )


class _Visibility:
    """Samples ack -> readable: after an ack, poll the Delta files until the batch is there."""

    def __init__(self, path: Path, poll_s: float) -> None:
        self.path = path
        self.poll_s = poll_s
        self.hist = HdrHistogram(1, 600_000_000, 3)
        self.task: asyncio.Task[None] | None = None
        self._table: DeltaTable | None = None
        self._files_read: set[str] = set()
        self._rows: Counter[str] = Counter()

    def maybe_sample(self, k: int) -> None:
        # One sample at a time: the reader's own load must not disturb the writer it measures.
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._sample(k, time.perf_counter()))

    async def _sample(self, k: int, acked_at: float) -> None:
        batch_id = f"b{k:09d}"
        while not await asyncio.to_thread(self._readable, batch_id):  # noqa: ASYNC110 - polling is the measurement
            await asyncio.sleep(self.poll_s)
        self.hist.record_value(max(1, int((time.perf_counter() - acked_at) * 1e6)))

    def _readable(self, batch_id: str) -> bool:
        # A reader that follows the Delta log: update_incremental() reads the log entries
        # added since the last poll, then only the data files it has not read yet are
        # opened. Rows count as readable once they are in a file the log references.
        if self._table is None:
            self._table = DeltaTable(str(self.path))
        else:
            self._table.update_incremental()
        for uri in self._table.file_uris():
            if uri not in self._files_read:
                self._files_read.add(uri)
                ids = pq.read_table(uri, columns=["batch_id"]).column(0)
                for entry in pc.value_counts(ids).to_pylist():
                    self._rows[entry["values"]] += entry["counts"]
        return self._rows[batch_id] >= BATCH


async def fixed_rate(
    endpoints: dict[str, Any], rate: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    stream = await _open_stream(endpoints)
    table_path = Path(endpoints["data_dir"], "tables", *TABLE.split("."))
    visibility = _Visibility(table_path, poll_s=0.05)
    description = "d" * 900
    interval = BATCH / rate
    latency = HdrHistogram(1, 600_000_000, 3)  # from intended start (CO-corrected)
    service = HdrHistogram(1, 600_000_000, 3)  # from actual send
    send_delay = HdrHistogram(1, 600_000_000, 3)
    pending: set[asyncio.Task[None]] = set()
    warmup_batches = int(warmup_s * rate / BATCH)
    batches = warmup_batches + int(seconds * rate / BATCH)

    async def wait_ack(k: int, offset: int, intended: float, sent: float) -> None:
        await stream.wait_for_offset(offset)
        done = time.perf_counter()
        if k < warmup_batches:  # connection set-up and first-use costs are not the steady state
            return
        latency.record_value(max(1, int((done - intended) * 1e6)))
        service.record_value(max(1, int((done - sent) * 1e6)))
        visibility.maybe_sample(k)

    t0 = time.perf_counter() + 0.2
    for k in range(batches):
        intended = t0 + k * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = make_batch(k, description)
        sent = time.perf_counter()
        if k >= warmup_batches:
            send_delay.record_value(max(1, int((sent - intended) * 1e6)))
        offset = await stream.ingest_records_offset(payload)
        task = asyncio.create_task(wait_ack(k, offset, intended, sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await stream.flush()
    elapsed = time.perf_counter() - (t0 + warmup_batches * interval)
    await asyncio.gather(*pending)
    await stream.close()
    if visibility.task is not None:
        await visibility.task
    measured = batches - warmup_batches
    return {
        "target_rows_per_s": rate,
        "warmup_s": warmup_s,
        "batches": measured,
        "rows": measured * BATCH,
        "achieved_rows_per_s": round(measured * BATCH / elapsed),
        "ack_latency_ms": _summary(latency),
        "ack_service_time_ms": _summary(service),
        "send_delay_ms": _summary(send_delay),
        "ack_to_readable_ms": _summary(visibility.hist),
        "visibility_poll_interval_ms": visibility.poll_s * 1000,
    }


async def max_rate(endpoints: dict[str, Any], seconds: float, in_flight: int) -> dict[str, Any]:
    stream = await _open_stream(endpoints)
    description = "d" * 900
    batches = [make_batch(k, description) for k in range(in_flight * 2)]
    service = HdrHistogram(1, 600_000_000, 3)
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def lane(j: int) -> None:
        nonlocal sent
        k = j
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            offset = await stream.ingest_records_offset(batches[k % len(batches)])
            await stream.wait_for_offset(offset)
            service.record_value(max(1, int((time.perf_counter() - start) * 1e6)))
            sent += 1
            k += in_flight

    await asyncio.gather(*(lane(j) for j in range(in_flight)))
    await stream.flush()
    elapsed = time.perf_counter() - t0
    await stream.close()
    return {
        "in_flight_batches": in_flight,
        "rows": sent * BATCH,
        "rows_per_s": round(sent * BATCH / elapsed),
        "batch_latency_ms": _summary(service),
    }


async def run(
    out: Path, seconds: float, rate: int, in_flight: int, warmup_s: float
) -> dict[str, Any]:
    token = secrets.token_urlsafe(16)
    results: dict[str, Any] = {
        "benchmark": "local-stack-zerobus",
        "version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "environment": capture_environment(),
        "workload": {"batch_records": BATCH, "record_bytes": len(make_batch(0, "d" * 900)[0])},
    }
    with tempfile.TemporaryDirectory(prefix="dwbench-") as tmp:
        with LocalStackProcess(Path(tmp, "stack"), token=token, args=["--no-postgres"]) as stack:
            await _create_table(stack.endpoints)
            results["fixed_rate"] = await fixed_rate(stack.endpoints, rate, seconds, warmup_s)
            results["max_rate"] = await max_rate(stack.endpoints, seconds, in_flight)
        ack_only = LocalStackProcess(
            Path(tmp, "ack-only"), token=token, args=["--no-postgres", "--ack-only"]
        )
        with ack_only:
            await _create_table(ack_only.endpoints)
            results["ack_only_max_rate"] = await max_rate(ack_only.endpoints, seconds, in_flight)
    results["ratio_to_ack_only"] = round(
        results["max_rate"]["rows_per_s"] / results["ack_only_max_rate"]["rows_per_s"], 3
    )
    results["file"] = str(write_results(out, "stack", results))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=50_000, help="rows/s of the fixed-rate phase")
    p.add_argument("--in-flight", type=int, default=8, help="batches in flight at max rate")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at rate, not measured")
    args = p.parse_args()
    r = asyncio.run(run(args.out, args.seconds, args.rate, args.in_flight, args.warmup))
    fr, mr, ao = r["fixed_rate"], r["max_rate"], r["ack_only_max_rate"]
    print(f"results: {r['file']}")
    print(
        f"fixed rate {fr['target_rows_per_s']} rows/s: achieved {fr['achieved_rows_per_s']} rows/s"
        f", ack latency p50 {fr['ack_latency_ms'].get('p50')} ms"
        f" p99 {fr['ack_latency_ms'].get('p99')} ms"
        f", send delay p99 {fr['send_delay_ms'].get('p99')} ms"
        f", ack->readable p95 {fr['ack_to_readable_ms'].get('p95')} ms"
    )
    print(
        f"max rate: {mr['rows_per_s']} rows/s; ack-only server: {ao['rows_per_s']} rows/s;"
        f" ratio {r['ratio_to_ack_only']}"
    )


if __name__ == "__main__":
    main()
