"""Benchmark of the app's ingestion path and of the Lakebase writer.

    python -m bench.app_bench [--out results] [--requests 1000] [--clients 8] [--no-pin]

1. App overhead: 100-record requests through Zerobus via POST /api/v1/process-structured,
   from N concurrent clients. Per request, the writer's own write time (the response's
   per-writer processing_time_ms) is subtracted from the time the app spent on the
   request (its Server-Timing header) and from the latency the client saw. On Linux with
   two or more cores the app runs on a core of its own during this part: the local stack
   stands in for remote services and should not take the measured app's CPU.
2. The seed app's pattern for comparison: for each request, a new SDK stream and one
   ingest call per record, then flush and close; same records, same clients.
3. Lakebase COPY: 10,000-row batches through the writer, one after another.

Everything runs against a local stack started for the run. Results go to
<out>/app-<timestamp>.json; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from hdrh.histogram import HdrHistogram
from pydantic import SecretStr
from zerobus.sdk.aio import ZerobusSdk
from zerobus.sdk.shared import TableProperties

from bench.environment import capture_environment, write_results
from dwbench.assets import ROOT
from dwbench.settings import Settings
from emulator.process import LocalStackProcess
from workloads import products
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from workloads.proto import proto_form
from writers.base import Targets
from writers.lakebase import LakebaseSettings, LakebaseWriter
from writers.zerobus import LocalBearerToken

TABLE = "main.default.products"
PERCENTILES = (50, 90, 99)


def _ms(hist: HdrHistogram) -> dict[str, float]:
    out = {f"p{p}": hist.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    out.update(max=hist.get_max_value() / 1000, count=hist.get_total_count())
    return out


async def app_overhead(
    endpoints: dict[str, Any],
    data_dir: Path,
    requests: int,
    clients: int,
    app_cores: set[int] | None,
) -> dict[str, Any]:
    with AppProcess(endpoints, data_dir, app_cores) as app:
        pids = {"app": app.pid, "local_stack": endpoints["pid"], "load_generator": os.getpid()}
        return await _drive_app(app.port, requests, clients, pids)


def split_cores(pin: bool) -> tuple[set[int], set[int]] | None:
    """(the app's core, everyone else's) when pinning is asked for and possible.

    The local stack stands in for remote services: on a small machine its Delta commits
    would otherwise take CPU from the very app being measured. The app gets the last
    core to itself; the stack and the load generator share the others.
    """
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return {cores[-1]}, set(cores[:-1])


def _pin(pid: int, cores: set[int]) -> None:
    """Every thread of a process to `cores` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cores)


def _cpu_seconds(pid: int, *, thread: int | None = None) -> float | None:
    """User + system CPU of a process (or one of its threads) so far; None off Linux."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of stat(5), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float | None]:
    snap = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    # The app's main thread runs its event loop; the rest are the SDK's and gRPC's threads.
    snap["app_event_loop_thread"] = _cpu_seconds(pids["app"], thread=pids["app"])
    return snap


class AppProcess:
    """`uvicorn main:app` in a process of its own, so the load generator does not share its CPU."""

    def __init__(
        self, endpoints: dict[str, Any], data_dir: Path, cores: set[int] | None = None
    ) -> None:
        self._cores = cores
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        env = {
            **os.environ,
            "APP_MODE": "local",
            "DATA_DIR": str(data_dir),
            "LOCAL_STACK_URL": endpoints["api_url"],
            "LOCAL_STACK_TOKEN": endpoints["token"],
            "EXPOSE_APP_CLOCK": "true",  # X-App-Clock: when the app's clock started
        }
        self._cmd = [
            sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> AppProcess:
        self._proc = subprocess.Popen(self._cmd, env=self._env, cwd=ROOT, stderr=subprocess.DEVNULL)
        if self._cores:
            # Popen returns once the child has exec'd: it is still starting up, one thread,
            # and every thread it starts later inherits this.
            os.sched_setaffinity(self._proc.pid, self._cores)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the app did not start")

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(30)


async def _drive_app(
    port: int, requests: int, clients: int, pids: dict[str, int]
) -> dict[str, Any]:
    items = [i.model_dump(mode="json") for i in sample_items(100, seed=1)]
    body = {"schema_type": "products", "writer_type": "zerobus", "items": items}
    app_extra = HdrHistogram(1, 60_000_000, 3)  # µs the app adds, server side
    client_extra = HdrHistogram(1, 60_000_000, 3)  # µs the app and HTTP add, client side
    write_time = HdrHistogram(1, 60_000_000, 3)
    # Where the client-side extra goes: from sending to the app's clock starting (transport
    # and the wait behind other requests in the app's event loop), and from the response's
    # start to the client having read it. perf_counter is CLOCK_MONOTONIC on Linux: one
    # clock for both processes.
    shared_clock = "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation
    before_app = HdrHistogram(1, 60_000_000, 3)
    after_app = HdrHistogram(1, 60_000_000, 3)
    done = 0
    warmup = 50
    measured_from: tuple[float, dict[str, float | None]] | None = None

    payload = json.dumps(body).encode()
    request = (
        f"POST /api/v1/process-structured HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload

    async def client(n: int) -> None:
        # A bare keep-alive HTTP/1.1 client: httpx costs ~1.4 ms of CPU per request, which on
        # 2 shared cores would be taken from the app being measured.
        nonlocal done, measured_from
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(n):
                started = time.perf_counter()
                writer.write(request)
                status, headers, content = await _read_response(reader)
                finished = time.perf_counter()
                latency_ms = (finished - started) * 1000
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {content[:300]!r}")
                done += 1
                if done <= warmup:
                    if done == warmup:
                        measured_from = (time.perf_counter(), _cpu_snapshot(pids))
                    continue
                writer_ms = json.loads(content)["results"][0]["processing_time_ms"]
                app_ms = float(headers["server-timing"].split("dur=")[1])
                write_time.record_value(max(1, int(writer_ms * 1000)))
                app_extra.record_value(max(1, int((app_ms - writer_ms) * 1000)))
                client_extra.record_value(max(1, int((latency_ms - writer_ms) * 1000)))
                if shared_clock:
                    app_started = float(headers["x-app-clock"])
                    before_app.record_value(max(1, int((app_started - started) * 1e6)))
                    app_done = app_started + app_ms / 1000
                    after_app.record_value(max(1, int((finished - app_done) * 1e6)))
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    per_client = (requests + warmup) // clients
    await asyncio.gather(*(client(per_client) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    assert measured_from is not None
    cpu_end, measured_s = _cpu_snapshot(pids), time.perf_counter() - measured_from[0]
    measured_requests = per_client * clients - warmup
    cpu: dict[str, Any] = {}
    for name, end in cpu_end.items():
        begin = measured_from[1][name]
        if end is not None and begin is not None:
            cpu[name] = {
                "cores_busy": round((end - begin) / measured_s, 3),
                "ms_per_request": round((end - begin) * 1000 / measured_requests, 3),
            }
    rows = per_client * clients * 100
    return {
        "requests": per_client * clients,
        "warmup_requests": warmup,
        "clients": clients,
        "records_per_request": 100,
        "rows_per_s": round(rows / elapsed),
        "writer_write_ms": _ms(write_time),
        "app_overhead_ms_server_side": _ms(app_extra),
        "app_and_http_overhead_ms_client_side": _ms(client_extra),
        "client_side_split_ms": {
            "send_to_app_clock_start": _ms(before_app),
            "response_start_to_client_read": _ms(after_app),
        }
        if shared_clock
        else None,
        "client": "keep-alive HTTP/1.1 over asyncio streams, one connection per client",
        "cpu_after_warmup": cpu,
        "cores": os.cpu_count(),
    }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    content = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, content


async def seed_pattern(endpoints: dict[str, Any], requests: int, clients: int) -> dict[str, Any]:
    """A new stream per request and one ingest call per record, as the seed app did."""
    form = proto_form(products.SCHEMA, "products")
    rows = build_rows(
        products.WORKLOAD, sample_items(100, seed=1), batch_id=new_batch_id(), source="seed"
    )
    payloads = form.encoder(products.SCHEMA)(rows.data)
    latencies: list[float] = []

    async def one_request() -> None:
        started = time.perf_counter()
        sdk = ZerobusSdk(endpoints["zerobus_endpoint"], endpoints["api_url"])
        await sdk._inner.set_use_tls(False)
        stream = await sdk.create_stream(
            table_properties=TableProperties(TABLE, form.descriptor),
            headers_provider=LocalBearerToken(endpoints["token"], TABLE),
        )
        for payload in payloads:
            offset = await stream.ingest_record_offset(payload)
            await stream.wait_for_offset(offset)
        await stream.close()
        latencies.append((time.perf_counter() - started) * 1000)

    async def client(n: int) -> None:
        for _ in range(n):
            await one_request()

    per_client = max(1, requests // clients)
    started = time.perf_counter()
    await asyncio.gather(*(client(per_client) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": per_client * clients,
        "clients": clients,
        "records_per_request": 100,
        "rows_per_s": round(per_client * clients * 100 / elapsed),
        "request_ms_p50": round(statistics.median(latencies), 2),
    }


async def lakebase_copy(endpoints: dict[str, Any], data_dir: Path, batches: int) -> dict[str, Any]:
    targets = Targets(
        mode="local",
        settings=Settings(app_mode="local", data_dir=data_dir),
        postgres_dsn=SecretStr(endpoints["postgres_dsn"]),
        writer_settings={"lakebase": LakebaseSettings(table="public.copy_bench")},
    )
    writer = LakebaseWriter(targets)
    await writer.open()
    items = sample_items(10_000, seed=3)
    times = []
    try:
        for k in range(batches + 1):
            rows = build_rows(
                products.WORKLOAD,
                items,
                batch_id=new_batch_id(),
                source="lakebase",
                table=products.WORKLOAD.table.with_tables(postgres_table="public.copy_bench"),
            )
            started = time.perf_counter()
            receipt = await writer.write(rows)
            if k > 0:  # the first batch warms the pool and the server's caches
                times.append(time.perf_counter() - started)
            assert receipt.rows == 10_000
    finally:
        await writer.close()
    return {
        "batch_rows": 10_000,
        "batches": batches,
        "rows_per_s": round(batches * 10_000 / sum(times)),
        "batch_ms_p50": round(statistics.median(times) * 1000, 2),
        "note": "rows are built before the clock starts; the clock covers write() only",
    }


async def run(
    out: Path, requests: int, clients: int, seed_requests: int, pin: bool = True
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "app",
        "version": 1,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "environment": capture_environment(),
    }
    with tempfile.TemporaryDirectory(prefix="dwbench-") as tmp:
        stack = LocalStackProcess(Path(tmp, "stack"), token=secrets.token_urlsafe(16))
        with stack:
            endpoints = stack.endpoints
            split = split_cores(pin)
            results["cpu_affinity"] = None
            if split:
                app_cores, other_cores = split
                results["cpu_affinity"] = {
                    "phase": "app_overhead only",
                    "app": sorted(app_cores),
                    "local_stack_and_load_generator": sorted(other_cores),
                }
                everything = os.sched_getaffinity(0)
                _pin(endpoints["pid"], other_cores)
                _pin(os.getpid(), other_cores)
            try:
                results["app_overhead"] = await app_overhead(
                    endpoints, Path(tmp), requests, clients, split[0] if split else None
                )
            finally:
                if split:
                    _pin(endpoints["pid"], everything)
                    _pin(os.getpid(), everything)
            results["seed_pattern"] = await seed_pattern(endpoints, seed_requests, clients)
            results["lakebase_copy"] = await lakebase_copy(endpoints, Path(tmp), 20)
    ours = results["app_overhead"]["rows_per_s"]
    results["ours_vs_seed_rows_per_s"] = round(ours / results["seed_pattern"]["rows_per_s"], 1)
    results["file"] = str(write_results(out, "app", results))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed-requests", type=int, default=40)
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the app a core of its own for the app-overhead run (Linux, >= 2 cores)",
    )
    args = p.parse_args()
    r = asyncio.run(run(args.out, args.requests, args.clients, args.seed_requests, args.pin))
    ao, sp, lc = r["app_overhead"], r["seed_pattern"], r["lakebase_copy"]
    print(f"results: {r['file']}")
    if r["cpu_affinity"]:
        aff = r["cpu_affinity"]
        others = aff["local_stack_and_load_generator"]
        print(f"cores: app {aff['app']}, local stack and load generator {others}")
    print(
        f"app: {ao['requests']} requests x 100 records, {ao['clients']} clients: "
        f"{ao['rows_per_s']} rows/s; writer write p50 {ao['writer_write_ms']['p50']} ms; "
        f"app overhead p50 {ao['app_overhead_ms_server_side']['p50']} ms (server side), "
        f"{ao['app_and_http_overhead_ms_client_side']['p50']} ms (client side)"
    )
    if ao["client_side_split_ms"]:
        split = ao["client_side_split_ms"]
        print(
            f"  client side, p50: send -> app clock start "
            f"{split['send_to_app_clock_start']['p50']} ms; response start -> read by client "
            f"{split['response_start_to_client_read']['p50']} ms"
        )
    for name, use in ao["cpu_after_warmup"].items():
        print(f"  cpu {name}: {use['cores_busy']} cores busy, {use['ms_per_request']} ms/request")
    print(f"seed pattern: {sp['rows_per_s']} rows/s; ours is {r['ours_vs_seed_rows_per_s']}x")
    print(f"lakebase COPY, 10,000-row batches: {lc['rows_per_s']} rows/s")


if __name__ == "__main__":
    main()
