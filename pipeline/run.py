"""One run of the serving path, and the service the API and the CLI share.

A run: the bronze table ensured through the runtime (as benchmarks ensure theirs), the
fleet process started (pipeline.fleet_process: the Zerobus writer from the registry and,
locally, the real-time sink, opened there), the copy and the synced table started, the
fleet driven for the duration; then the sink flushed and the copy and sync waited for
(until they reached what bronze holds), and the result kept: config, environment, mode,
per-path freshness (summaries and encoded histograms), counts, the sync's status, and the
app process's CPU per 1,000 events pushed (the fleet process's CPU beside it).

`PipelineService` holds one run at a time (a second start is refused, 409) and the push
hub that serves `WS /ws/fleet` whether a run is going or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel, Field

from bench.environment import capture_environment
from dwbench.errors import DirectWriteError, WriteFailedError, WriterUnavailableError
from pipeline.events import events_batch
from pipeline.fleet import wall_us
from pipeline.fleet_process import FleetProcess, FleetReport, fleet_job, spread
from pipeline.freshness import HOPS, Freshness
from pipeline.pg import PostgresConnector
from pipeline.push import PushHub
from pipeline.realtime import FLUSH_ATTEMPTS, Mode, TableStatements
from pipeline.serving import LocalServing, PipelineSettings, WorkspaceServing
from workloads import telemetry
from workloads.base import TableRef

if TYPE_CHECKING:
    from dwbench.runtime import Runtime

log = structlog.get_logger(__name__)

RESULT_SCHEMA_VERSION = 1
STATUS_POLL_S = 1.0
SETTLE_TIMEOUT_S = 60.0
# After the sync caught up: how long the push may take to send its last rows and hear back.
PUSH_SETTLE_S = 3.0


class PipelineConfig(BaseModel):
    drivers: int = Field(default=500, ge=1, le=100_000)
    rate: float = Field(default=2000, gt=0, le=200_000, description="events per second")
    duration_s: float = Field(default=60, gt=0, le=86_400)
    sync_interval_s: float = Field(
        default=0, ge=0, le=3600, description="0: as fast as it keeps up; 15: the service's"
    )
    writer: str = Field(default="zerobus", description="a Zerobus writer of the registry")
    realtime_mode: Mode = "upsert"
    seed: int = 0


RunState = Literal["running", "stopping", "completed", "failed"]


class PipelineBusyError(DirectWriteError):
    status_code = 409
    error = "pipeline_running"


class PipelineNotRunningError(DirectWriteError):
    status_code = 409
    error = "pipeline_not_running"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def lost_data(report: FleetReport, writer: str) -> str | None:
    """Why a run lost data, if it did: events the writer did not acknowledge, rows that did
    not reach the real-time table. Such a run fails (its figures are kept): they measure a
    pipeline that lost data."""
    lost = []
    counters = report.counters
    if counters.failed:
        sample = counters.error_samples[0] if counters.error_samples else "no reason given"
        lost.append(
            f"{counters.failed:,} of {counters.produced:,} events were not acknowledged "
            f"by {writer} (first error: {sample})"
        )
    sink = report.sink or {}
    if sink.get("failed_rows"):
        lost.append(
            f"{sink['failed_rows']:,} rows did not reach the real-time table (refused, or "
            f"failing {FLUSH_ATTEMPTS} attempts; last error: {sink.get('last_error')})"
        )
    return "; ".join(lost) or None


class PipelineRun:
    def __init__(
        self,
        runtime: Runtime,
        config: PipelineConfig,
        hub: PushHub,
        connector: PostgresConnector,
        settings: PipelineSettings,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.hub = hub
        self.connector = connector
        self.settings = settings
        self.id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        self.state: RunState = "running"
        # preparing, writing, flushing (the real-time sink), settling (the copy and sync
        # catching up), finishing, done
        self.phase = "preparing"
        self.error: str | None = None
        self.started_at = _now_iso()
        self.finished_at: str | None = None
        self._t0 = time.monotonic()
        self._t_end: float | None = None
        self.freshness = Freshness()
        self.bad_events: dict[str, int] = {}
        self.stop_event = asyncio.Event()
        # The fleet's process, once started; writing once it said it is ready.
        self.fleet: FleetProcess | None = None
        self.writing = False
        self.serving: LocalServing | WorkspaceServing | None = None
        self.serving_status: dict[str, Any] = {}
        self.rows_in_postgres: dict[str, int | None] = {"realtime": None, "synced": None}
        # Freshness percentiles, recomputed with each status poll (~1/s) rather than per
        # request: a summary walks every histogram.
        self._summary: dict[str, Any] = {}
        self.loop_lag_ms: list[float] = []
        self.pushed_events_start = 0
        self.cpu_start = time.process_time()
        self.cpu_s: float | None = None
        self.pushed_events: int | None = None
        self.table: TableRef = telemetry.TABLE.with_tables(delta_table=settings.bronze_table)
        self.task: asyncio.Task[None] | None = None

    # -- counting -----------------------------------------------------------------------

    def count_bad(self, kind: str) -> None:
        self.bad_events[kind] = self.bad_events.get(kind, 0) + 1

    def record(self, path: str, hop: str, lags_us: list[int]) -> None:
        if hop in HOPS.get(path, ()):
            self.freshness.record_us(path, hop, lags_us)

    # -- the run ------------------------------------------------------------------------

    async def execute(self) -> None:
        outcome: RunState = "failed"
        try:
            await self._execute()
            outcome = "completed"
        except Exception as exc:
            self.error = exc.message if isinstance(exc, DirectWriteError) else repr(exc)
            log.error("pipeline.failed", run_id=self.id, error=self.error)
        finally:
            self.phase = "finishing"
            self.writing = False
            if self.fleet is not None:
                self.fleet.stop()
                await self.fleet.finish()
            self.cpu_s = time.process_time() - self.cpu_start
            self.pushed_events = self.hub.events_pushed - self.pushed_events_start
            await self._refresh_status()
            self._t_end = time.monotonic()
            self.finished_at = _now_iso()
            # Last: a reader that sees the final state sees the final counts with it.
            self.state, self.phase = outcome, "done"
            log.info("pipeline.finished", run_id=self.id, status=self.state)

    async def _execute(self) -> None:
        cfg = self.config
        runtime = self.runtime
        workload = dataclasses.replace(telemetry.WORKLOAD, table=self.table)
        await runtime.ensure_tables(workload)
        from writers import writer_class

        if writer_class(cfg.writer).family != "zerobus":
            raise WriterUnavailableError(f"the fleet writes through Zerobus; {cfg.writer} is not")
        local = runtime.targets.mode == "local"
        job = await asyncio.to_thread(
            fleet_job,
            self.id,
            runtime.targets,
            writer=cfg.writer,
            table=self.table,
            drivers=cfg.drivers,
            rate=cfg.rate,
            duration_s=cfg.duration_s,
            seed=cfg.seed,
            # Locally the same ForeachWriter contract runs in the fleet's process, fed its
            # acked batches; on a workspace the bundle's streaming job
            # (pipeline/jobs/realtime_job.py) writes.
            realtime_mode=cfg.realtime_mode if local else None,
        )
        self.fleet = fleet = await FleetProcess.start(job)
        await self._until(fleet, "ready")
        if local:
            self.serving = LocalServing(runtime.targets, self.settings)
        else:
            self.serving = WorkspaceServing(runtime.targets, self.settings)
        await self.serving.start(
            sync_interval_s=cfg.sync_interval_s, run_id=self.id, realtime_mode=cfg.realtime_mode
        )
        self.hub.use_realtime_mode(TableStatements(cfg.realtime_mode))
        self.pushed_events_start = self.hub.events_pushed
        self.cpu_start = time.process_time()
        poller = asyncio.create_task(self._poll_status())
        probe = asyncio.create_task(self._probe_loop())
        stopper = asyncio.create_task(self._stop_when_told(fleet))
        try:
            self.phase = "writing"
            self.writing = True
            fleet.go()
            await self._until(fleet, "generated")
            # No event accepted after this; every one accepted before reaches the fleet
            # ahead of the seal and is written before the sink flushes.
            self.writing = False
            fleet.seal()
            await self._until(fleet, "flushing")
            self.phase = "flushing"
            await self._until(fleet, "done")
            self.phase = "settling"
            if not self.stop_event.is_set():
                await self._settle()
                # The last sync's rows pushed and received: their hops are the run's too.
                if not await self.hub.settle(PUSH_SETTLE_S):
                    log.warning("pipeline.push_not_settled", run_id=self.id, s=PUSH_SETTLE_S)
            lost = lost_data(fleet.report, self.config.writer)
            if lost is not None:
                raise WriteFailedError(lost)
        finally:
            for task in (poller, probe, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _until(self, fleet: FleetProcess, kind: str) -> None:
        """Read the fleet's messages up to one of `kind`; its failure is the run's."""
        while True:
            message = await fleet.receive()
            if message["type"] == "done" and message.get("error"):
                raise WriterUnavailableError(message["error"])
            if message["type"] == kind or message["type"] == "done":
                return

    async def _stop_when_told(self, fleet: FleetProcess) -> None:
        await self.stop_event.wait()
        self.writing = False
        fleet.stop()

    async def _settle(self) -> None:
        """Wait until the copy and the sync reached what bronze holds (local mode)."""
        if not isinstance(self.serving, LocalServing):
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT_S + 2 * self.config.sync_interval_s
        while time.monotonic() < deadline:
            status = await self.serving.status()
            copy, sync = status["copy"], status["sync"]
            latest = copy.get("source_latest_version")
            copied = copy.get("last_copied_source_version")
            if latest is not None and copied is not None and copied >= latest:
                target = copy.get("target_version")
                done = sync.get("last_processed_commit_version")
                if target is not None and done is not None and done >= target:
                    return
            await asyncio.sleep(0.2)
        raise WriterUnavailableError(
            f"the copy and the sync did not catch up within {SETTLE_TIMEOUT_S:g} s of the end"
        )

    async def _probe_loop(self) -> None:
        """How late the event loop wakes a 50 ms sleep: what every hop stamped here waits."""
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.05)
            if len(self.loop_lag_ms) < 100_000:
                self.loop_lag_ms.append((time.perf_counter() - began - 0.05) * 1000)

    async def _poll_status(self) -> None:
        while True:
            await self._refresh_status()
            await asyncio.sleep(STATUS_POLL_S)

    async def _refresh_status(self) -> None:
        if self.serving is not None:
            try:
                self.serving_status = await self.serving.status()
            except DirectWriteError as exc:
                self.serving_status = {**self.serving_status, "problem": exc.message}
        # The copy on the loop (the hops are recorded there); the walk over its counts,
        # ~20 ms at 2,000 events/s, in a thread, not holding up the hops stamped here.
        self._summary = await asyncio.to_thread(self.freshness_view().summary)
        try:
            self.rows_in_postgres = await self._count_rows()
        except Exception as exc:  # counts are informative; the run goes on
            log.warning("pipeline.count_failed", error=str(exc))

    async def _count_rows(self) -> dict[str, int | None]:
        from psycopg import errors, sql

        statements = TableStatements(self.config.realtime_mode)
        counts: dict[str, int | None] = {}
        conn = await self.connector.connect()
        try:
            for path, table in (
                ("realtime", statements.table),
                ("synced", self.settings.synced_postgres_table),
            ):
                schema, name = table.split(".")
                try:
                    cur = await conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
                    )
                    row = await cur.fetchone()
                    counts[path] = int(row[0]) if row else 0
                except errors.UndefinedTable:
                    counts[path] = None
        finally:
            await conn.close()
        return counts

    def submit_events(self, events: list[Any]) -> dict[str, Any]:
        """Events from outside: the good ones written like the fleet's, the bad counted."""
        if self.fleet is None or not self.writing or self.state != "running":
            raise PipelineNotRunningError("no pipeline run is writing events now")
        before = dict(self.bad_events)
        batch = events_batch(
            events,
            batch_id=f"ext-{uuid.uuid4().hex[:10]}",
            source="external",
            now_us=wall_us(),
            bad=self.count_bad,
        )
        if batch is not None:
            self.fleet.submit(batch)
        rejected = {k: v - before.get(k, 0) for k, v in self.bad_events.items()}
        return {
            "accepted": batch.num_rows if batch is not None else 0,
            "rejected": {k: v for k, v in rejected.items() if v},
        }

    # -- reporting ----------------------------------------------------------------------

    def freshness_view(self) -> Freshness:
        """The app's hops, the stack's (local mode) and the fleet process's."""
        stack = self.serving_status.get("freshness") or {}
        fleet = self.fleet.report.freshness if self.fleet is not None else {}
        return self.freshness.merged_with(stack).merged_with(fleet)

    def status(self) -> dict[str, Any]:
        report = self.fleet.report if self.fleet else FleetReport()
        fleet = report.counters
        end = self._t_end or time.monotonic()
        realtime: dict[str, Any] = {
            "rows_in_postgres": self.rows_in_postgres.get("realtime"),
            "mode": self.config.realtime_mode,
        }
        if report.sink is not None:
            realtime.update(report.sink)
        synced: dict[str, Any] = {
            "rows_in_postgres": self.rows_in_postgres.get("synced"),
            "sync": self.serving_status.get("sync", {}),
            "copy": self.serving_status.get("copy", {}),
        }
        return {
            "id": self.id,
            "status": "stopping"
            if self.state == "running" and self.stop_event.is_set()
            else self.state,
            "phase": self.phase,
            "config": self.config.model_dump(),
            "mode": self.runtime.targets.mode,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_s": round(end - self._t0, 3),
            "events_produced": fleet.produced,
            "events_acked": fleet.acked,
            "events_failed": fleet.failed,
            "write_errors": fleet.error_samples,
            "fleet_process": {
                "pid": self.fleet.pid if self.fleet else None,
                "cpu_s": report.cpu_s,
            },
            "bad_events": dict(self.bad_events),
            "paths": {"realtime": realtime, "synced": synced},
            "loop_lag_ms": spread(self.loop_lag_ms),
            "push": {
                "listen_problem": self.hub.listen_problem,
                "poll_problem": self.hub.poll_problem,
                "clients": sum(len(f.clients) for f in self.hub.feeds.values()),
            },
            "freshness": self._summary,
            "error": self.error,
        }

    def result(self) -> dict[str, Any]:
        """The result file: like a benchmark's (config, environment, mode) plus histograms."""
        view = self.freshness_view()
        cpu = None
        if self.cpu_s is not None and self.pushed_events:
            cpu = round(1000 * self.cpu_s / (self.pushed_events / 1000), 3)
        return {
            "schema_version": RESULT_SCHEMA_VERSION,
            "kind": "pipeline",
            **self.status(),
            "environment": capture_environment(self.runtime.targets),
            "histograms": view.encoded(),
            "cpu": {
                "process_cpu_s": round(self.cpu_s, 3) if self.cpu_s is not None else None,
                "events_pushed": self.pushed_events,
                "cpu_ms_per_1000_events_pushed": cpu,
                "fleet_process_cpu_s": self.fleet.report.cpu_s if self.fleet else None,
                "note": "the app process's CPU over the run per 1,000 driver updates sent on "
                "WebSockets; the fleet (generator and Zerobus client) and, locally, the "
                "real-time writer run in a process of their own (fleet_process_cpu_s)",
            },
        }


class PipelineService:
    def __init__(self, runtime: Runtime, settings: PipelineSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or PipelineSettings()
        self.run: PipelineRun | None = None
        self._hub: PushHub | None = None
        self._connector: PostgresConnector | None = None

    def _bad(self, kind: str) -> None:
        if self.run is not None:
            self.run.count_bad(kind)

    def _record(self, path: str, hop: str, lags: list[int]) -> None:
        if self.run is not None and self.run.state == "running":
            self.run.record(path, hop, lags)

    def _status(self) -> dict[str, Any] | None:
        return self.run.status() if self.run is not None else None

    async def hub(self) -> PushHub:
        if self._hub is None:
            self._connector = PostgresConnector(self.runtime.targets)
            self._hub = PushHub(
                self._connector,
                synced_table=self.settings.synced_postgres_table,
                record=self._record,
                bad=self._bad,
                status=self._status,
                correct_offset=self.runtime.targets.mode == "databricks",
                observed_hops=self.runtime.targets.mode == "databricks",
            )
            await self._hub.start()
        return self._hub

    async def start(self, config: PipelineConfig) -> PipelineRun:
        if self.run is not None and self.run.state == "running":
            raise PipelineBusyError(f"pipeline run {self.run.id} is running; stop it first")
        hub = await self.hub()
        assert self._connector is not None
        run = PipelineRun(self.runtime, config, hub, self._connector, self.settings)
        self.run = run
        run.task = asyncio.create_task(run.execute(), name=f"pipeline-{run.id}")
        return run

    async def stop(self) -> PipelineRun | None:
        if self.run is not None and self.run.state == "running":
            self.run.stop_event.set()
        return self.run

    async def close(self) -> None:
        run = self.run
        if run is not None and run.task is not None and not run.task.done():
            run.stop_event.set()
            await run.task
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
