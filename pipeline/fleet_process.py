"""The fleet, and locally the real-time writer, in a process of their own.

The drivers' phones and the streaming job that writes Lakebase are not the app: on a
workspace the phones are elsewhere and the real-time writer is the bundle's Structured
Streaming job. Locally they run here, in `python -m pipeline.fleet_process FD`, so the
app's process does what the app does (the push: LISTEN, the synced table's poll, the
WebSockets, the API), its CPU per 1,000 events pushed is its own, and its event loop
stamps the push hops without the fleet's encoding and the SDK's callbacks in between.

The process is started as the benchmark workers are (bench.worker_process): an
allowlisted environment, everything else (the targets with the local stack's token and
DSN, the writer registry) over a private socket pair, as length-prefixed pickles:

    app -> fleet:  one FleetJob; {"type": "go"} once the serving path is started;
                   {"type": "events", "batch"} (checked events from the API, written
                   like the fleet's); {"type": "seal"} once the app accepts no more
                   events; {"type": "stop"} (which seals too)
    fleet -> app:  {"type": "ready", "pid"} once the writer and the sink are open (the
                   fleet starts on "go"),
                   {"type": "report", "report"} each REPORT_S,
                   {"type": "generated"} when the fleet's duration is over,
                   {"type": "flushing", "report"} when every batch, the fleet's and the
                   events' up to the seal, is written,
                   {"type": "done", "report", "error"} at the end

The seal makes every event the app accepted reach the fleet's writer: the app stops
accepting, then seals, and the socket keeps the order, so each accepted batch arrives
before the seal; the fleet writes all of them before it flushes the sink.

A report (FleetReport) holds the fleet's counters, the sink's, the "ack" and "postgres"
hops as encoded histograms, and the process's CPU since it was ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog

from bench.worker_process import (
    WorkerProcess,
    encode,
    exit_reason,
    read_message,
    serve_on_socket,
)
from dwbench.errors import DirectWriteError, WriterUnavailableError
from pipeline.fleet import FleetCounters, FleetDriver
from pipeline.freshness import Freshness
from pipeline.realtime import Mode, RealtimeSink, event_micros
from workloads.base import TableRef
from writers.base import Targets

log = structlog.get_logger(__name__)

REPORT_S = 0.5
# How long the fleet process has to exit once it said it is done, before it is killed.
EXIT_WAIT_S = 10.0


@dataclass(frozen=True)
class FleetJob:
    """One run's fleet: picklable, with the app's resolved targets."""

    run_id: str
    targets: Targets
    writers: dict[str, str]
    unresolved: dict[str, str]
    writer: str
    table: TableRef
    drivers: int
    rate: float
    duration_s: float
    seed: int
    # The real-time sink's mode; None: no sink here (a workspace's streaming job writes).
    realtime_mode: Mode | None


@dataclass
class FleetReport:
    """What the fleet process has done so far."""

    counters: FleetCounters = field(default_factory=FleetCounters)
    sink: dict[str, Any] | None = None  # rows_written, failed_rows, retries, ..., flush_ms
    # path -> hop -> HdrHistogram encoding: the "ack" hops and the real-time "postgres" hop.
    freshness: dict[str, dict[str, str]] = field(default_factory=dict)
    cpu_s: float = 0.0


def spread(values: list[float]) -> dict[str, float] | None:
    """p50, p95 and max of a small list (the sink's flush times, the loop's lags)."""
    if not values:
        return None
    ordered = sorted(values)
    at = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {"p50": round(at(0.5), 2), "p95": round(at(0.95), 2), "max": round(ordered[-1], 2)}


# -- the app's side ------------------------------------------------------------------------


class FleetProcess:
    """The app's handle on a run's fleet process."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.pid = worker.pid
        self.report = FleetReport()

    @classmethod
    async def start(cls, job: FleetJob) -> FleetProcess:
        return cls(await WorkerProcess.start(job, module="pipeline.fleet_process"))

    def submit(self, batch: pa.RecordBatch) -> None:
        self.worker.send({"type": "events", "batch": batch})

    def go(self) -> None:
        self.worker.send({"type": "go"})

    def seal(self) -> None:
        self.worker.send({"type": "seal"})

    def stop(self) -> None:
        self.worker.send({"type": "stop"})

    async def receive(self) -> dict[str, Any]:
        """The next message, with its report kept; EOF becomes an error naming how the
        process ended."""
        try:
            message: dict[str, Any] = await self.worker.receive()
        except EOFError:
            code = await self.worker.wait()
            raise WriterUnavailableError(exit_reason(self.pid, code, "fleet process")) from None
        if "report" in message:
            self.report = message["report"]
        return message

    async def finish(self) -> None:
        """Reap the process (killed if it does not exit within EXIT_WAIT_S)."""
        try:
            await asyncio.wait_for(self.worker.wait(), EXIT_WAIT_S)
        except TimeoutError:
            log.warning("pipeline.fleet_process_killed", pid=self.pid)
            self.worker.kill()
            await self.worker.wait()


def fleet_job(
    run_id: str,
    targets: Targets,
    *,
    writer: str,
    table: TableRef,
    drivers: int,
    rate: float,
    duration_s: float,
    seed: int,
    realtime_mode: Mode | None,
) -> FleetJob:
    """The job for these targets. Blocking: reads the writer's settings."""
    from bench.worker_process import job_targets
    from writers import WRITERS

    resolved, unresolved = job_targets(targets, [writer])
    return FleetJob(
        run_id=run_id,
        targets=resolved,
        writers=dict(WRITERS),
        unresolved=unresolved,
        writer=writer,
        table=table,
        drivers=drivers,
        rate=rate,
        duration_s=duration_s,
        seed=seed,
        realtime_mode=realtime_mode,
    )


# -- the fleet's side ----------------------------------------------------------------------


class _Fleet:
    """The fleet, its sink and its hops, as the fleet process runs them."""

    def __init__(self, job: FleetJob) -> None:
        self.job = job
        self.freshness = Freshness()
        self.sink: RealtimeSink | None = None
        self.fleet: FleetDriver | None = None
        self.cpu_start = time.process_time()

    async def open(self) -> Any:
        """The writer, prepared, and the sink, open; returns what closes the writers."""
        from bench.worker_process import with_workspace_auth
        from pipeline.pg import PostgresConnector
        from writers import WRITERS, WriterSet

        job = self.job
        WRITERS.clear()
        WRITERS.update(job.writers)
        if job.writer in job.unresolved:
            raise WriterUnavailableError(job.unresolved[job.writer], writer=job.writer)
        targets = await asyncio.to_thread(with_workspace_auth, job.targets)
        writers = WriterSet(targets)
        try:
            writer = await writers.get(job.writer)
            await writer.prepare(job.table)
            if job.realtime_mode is not None:
                connector = PostgresConnector(targets)
                sink = RealtimeSink(connector.connect, job.realtime_mode, on_written=self._written)
                await sink.prepare()
                await sink.open()
                self.sink = sink
        except BaseException:
            await writers.close()
            raise
        self.fleet = FleetDriver(
            writer,
            job.table,
            drivers=job.drivers,
            rate=job.rate,
            on_acked=self._acked,
            seed=job.seed,
            batch_prefix=job.run_id,
        )
        return writers

    async def _acked(self, batch: pa.RecordBatch, acked_us: int) -> None:
        lags = [acked_us - t for t in event_micros(batch)]
        self.freshness.record_us("realtime", "ack", lags)
        self.freshness.record_us("synced", "ack", lags)
        if self.sink is not None and not self.sink.closed:
            self.sink.process(batch)

    def _written(self, micros: list[int], committed_us: int) -> None:
        self.freshness.record_us("realtime", "postgres", [committed_us - t for t in micros])

    def report(self) -> FleetReport:
        out = FleetReport(cpu_s=round(time.process_time() - self.cpu_start, 3))
        if self.fleet is not None:
            c = self.fleet.counters
            out.counters = dataclasses.replace(
                c, errors=dict(c.errors), error_samples=list(c.error_samples)
            )
        if self.sink is not None:
            s = self.sink
            out.sink = {
                "rows_written": s.rows_written,
                "failed_rows": s.failed_rows,
                "retries": s.retries,
                "last_error": s.last_error,
                "flushes": s.flushes,
                "flush_ms": spread(s.write_ms),
            }
        out.freshness = self.freshness.encoded()
        return out


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    job: FleetJob = await read_message(reader)
    stop = asyncio.Event()
    go = asyncio.Event()
    sealed = asyncio.Event()
    state = _Fleet(job)

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode(message))

    async def control() -> None:
        while True:
            try:
                message = await read_message(reader)
            except EOFError:
                message = {"type": "gone"}
            kind = message.get("type")
            if kind in ("stop", "gone"):  # gone: the app is, so nobody is watching
                stop.set()
                sealed.set()
                go.set()
                if kind == "gone":
                    return
            elif kind == "seal":
                sealed.set()
            elif kind == "go":
                go.set()
            elif kind == "events" and state.fleet is not None:
                await state.fleet.submit(message["batch"])

    async def reports() -> None:
        while True:
            await asyncio.sleep(REPORT_S)
            send({"type": "report", "report": state.report()})

    listener = asyncio.create_task(control())
    error: str | None = None
    writers: Any = None
    reporter: asyncio.Task[None] | None = None
    try:
        writers = await state.open()
        send({"type": "ready", "pid": os.getpid()})
        await go.wait()
        state.cpu_start = time.process_time()
        reporter = asyncio.create_task(reports())
        assert state.fleet is not None
        await state.fleet.run(job.duration_s, stop)
        send({"type": "generated"})
        await sealed.wait()
        await state.fleet.drain()
        send({"type": "flushing", "report": state.report()})
        if state.sink is not None:
            await state.sink.close()
    except Exception as exc:
        error = exc.message if isinstance(exc, DirectWriteError) else repr(exc)
        log.error("pipeline.fleet_failed", run_id=job.run_id, error=error)
    finally:
        if reporter is not None:
            reporter.cancel()
        if state.sink is not None and not state.sink.closed:
            with contextlib.suppress(Exception):
                await state.sink.close()
        if writers is not None:
            await writers.close()
    send({"type": "done", "report": state.report(), "error": error})
    await writer.drain()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    writer.close()


def main(argv: list[str]) -> int:
    return serve_on_socket(argv, _serve)


if __name__ == "__main__":
    # Run as the module proper, not as __main__: the reports it pickles name their class
    # by its module, which the app must find.
    from pipeline.fleet_process import main as module_main

    sys.exit(module_main(sys.argv))
