"""A run over M clients, each a worker process of its own (the `processes` executor).

The coordinator here starts one worker (`bench.worker_process`) per client with the same
job and the client's number; the worker builds its own writers and SDK instances and
writes its share of the run (`bench.workload.BatchFactory`: batches c, c + M, ...; the
open-loop rate split exactly: `bench.runner`). Each worker reports progress once a second
and returns its result; the coordinator merges the clients' results writer by writer
(`bench.merge.merge_workers`: histograms added, seconds aligned by wall clock) into one
result of the usual shape, with each client's figures and the skew between them.

Writers run one after another unless `parallel`: the coordinator starts the M workers of a
writer together and the next writer's only when all of them are done, so the clients of a
writer overlap and no client's writer runs next to another writer.

A client whose worker dies (killed, crashed) leaves its last progress, marked failed with
how it ended; the others' results are kept and the run is partial, saying which client was
lost. Cancel reaches every worker; one not stopped within the grace is killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bench.environment import host_load, host_load_warnings, host_sample
from bench.merge import merge_workers
from bench.results import RunResult, WriterResult
from bench.runner import BenchmarkRun, ProgressCallback, registry_label
from bench.worker_process import RunElsewhere, WorkerJob, WorkerProcess, exit_reason

log = structlog.get_logger(__name__)

_NOT_DONE = ("pending", "running")


@dataclass
class _Client:
    """One client's worker of the phase going on, and what it last sent."""

    index: int
    worker: WorkerProcess | None = None
    result_json: str | None = None
    progress: dict[str, Any] | None = None
    lost: str | None = None  # how its worker ended without a result
    cancelled: bool = False  # stopped by the run's cancel before it returned a result
    done: bool = False


@dataclass
class _Phase:
    """Writers the clients run together: one writer, or all of them when `parallel`."""

    writers: list[str]
    clients: list[_Client] = field(default_factory=list)
    finished: bool = False
    # The start barrier: which clients are ready for each writer, and writers released.
    ready: dict[str, set[int]] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)

    def release(self) -> None:
        """Send go for each writer every client still here is ready for."""
        lost = {c.index for c in self.clients if c.lost is not None}
        for name in self.writers:
            if name in self.released:
                continue
            if len(self.ready.get(name, set()) | lost) == len(self.clients):
                self.released.add(name)
                for c in self.clients:
                    if c.worker is not None and c.lost is None:
                        c.worker.send({"type": "go", "writer": name})


class ClientsRun(RunElsewhere):
    """A run spread over `config.clients` worker processes, as the app and the CLI see it:
    start it with `execute(job)`, read `progress()` and `result()`, `cancel()` it."""

    def __init__(self, template: BenchmarkRun) -> None:
        super().__init__(template)
        self.phases = (
            [_Phase(list(self.config.writers))]
            if self.config.parallel
            else [_Phase([name]) for name in self.config.writers]
        )
        self.status = "running"
        self.finished_at: str | None = None
        # The host's load over the whole run (every client shares this host).
        self.host_probe: Callable[[], dict[str, Any]] = host_sample
        self.host_load: dict[str, Any] | None = None

    # -- what the app reads ------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        """The first live worker's pid (the app shows one)."""
        pids = self.worker_pids
        return pids[0] if pids else None

    @property
    def worker_pids(self) -> list[int]:
        return [
            c.worker.pid
            for phase in self.phases
            for c in phase.clients
            if c.worker is not None and not c.done
        ]

    def cancel(self) -> None:
        self.cancelled = True
        for client in self._current_clients():
            if client.worker is not None:
                client.worker.send({"type": "cancel"})

    def kill(self) -> None:
        for client in self._current_clients():
            if client.worker is not None:
                client.worker.kill()

    def _current_clients(self) -> list[_Client]:
        return [c for phase in self.phases if not phase.finished for c in phase.clients]

    def progress(self) -> dict[str, Any]:
        """The run's progress as a BenchmarkRun reports it, each writer's figures added up
        over its clients, with the clients' own entries under `clients`."""
        writers = []
        for phase in self.phases:
            for name in phase.writers:
                writers.append(self._writer_progress(phase, name))
        return {
            "run_id": self.id,
            "status": self.status,
            "repeat": 0,
            "repeats": 1,
            "clients": self.config.clients,
            "writers": writers,
        }

    def _writer_progress(self, phase: _Phase, name: str) -> dict[str, Any]:
        entries = []
        for client in phase.clients:
            entry = _entry(client.progress, name)
            if entry is not None:
                entries.append({**entry, "client": client.index, "lost": client.lost})
        if not entries:
            return {
                "writer": name,
                "status": "pending",
                "phase": "pending",
                "rows": 0,
                "failed_batches": 0,
                "elapsed_s": 0.0,
                "rows_per_s": 0.0,
                "rows_per_s_last_second": 0,
                "p50_ms": None,
                "p99_ms": None,
                "target_rows": None,
                "target_rows_per_s": self.config.rate,
                "clients": [],
            }
        statuses = [e["status"] for e in entries]
        phases = [e["phase"] for e in entries]
        targets = [e.get("target_rows") for e in entries]
        return {
            "writer": name,
            "status": "running" if "running" in statuses else _first_of(statuses),
            "phase": "measuring" if "measuring" in phases else _first_of(phases),
            "rows": sum(e["rows"] for e in entries),
            "failed_batches": sum(e["failed_batches"] for e in entries),
            "elapsed_s": max(e["elapsed_s"] for e in entries),
            "rows_per_s": round(sum(e["rows_per_s"] for e in entries), 1),
            "rows_per_s_last_second": sum(e["rows_per_s_last_second"] for e in entries),
            # Percentiles do not add: the clients' worst so far until the merge.
            "p50_ms": _most(e["p50_ms"] for e in entries),
            "p99_ms": _most(e["p99_ms"] for e in entries),
            "target_rows": sum(targets) if None not in targets else None,  # type: ignore[arg-type]
            "target_rows_per_s": self.config.rate,
            "clients": entries,
        }

    def result(self) -> RunResult:
        """The merged result so far (each client's latest, merged writer by writer)."""
        begun = any(p.clients for p in self.phases)
        if self._template is not None and not begun and self.error is None:
            return self._template.result().model_copy(update={"status": self.status})
        writers: list[WriterResult] = []
        warnings: list[str] = []
        for phase in self.phases:
            results = [(c, _client_result(c)) for c in phase.clients]
            for name in phase.writers:
                # The clients that sent something of this writer; a client lost before it
                # sent anything is only in the warnings.
                each = [(c, _writer_of(r, name)) for c, r in results if r is not None]
                present = [(c, w) for c, w in each if w is not None]
                if not present:
                    writers.append(self._pending(name, phase))
                    continue
                writers.append(
                    merge_workers(
                        [w for _, w in present], names=[f"client {c.index}" for c, _ in present]
                    )
                )
            warnings += [f"client {c.index} was lost: {c.lost}" for c in phase.clients if c.lost]
        if self.error:
            warnings.insert(0, f"the run stopped on an error: {self.error}")
        warnings += [f"{w.label}: {text}" for w in writers for text in w.warnings]
        environment: dict[str, Any] = {**self.environment, "executor": self.executor}
        if self.host_load is not None:
            environment["host_load"] = self.host_load
            warnings += host_load_warnings(self.host_load)
        status = self.status
        template = self._template
        started = self.started_at
        return RunResult(
            id=self.id,
            status=status,  # type: ignore[arg-type]
            partial=status in ("cancelled", "failed", "partial", "running"),
            started_at=started,
            finished_at=self.finished_at,
            config=self.config,
            workload=template.result().workload if template is not None else self._workload(),
            environment=environment,
            writers=writers,
            warnings=warnings,
        )

    def _workload(self) -> dict[str, Any] | None:
        for phase in self.phases:
            for c in phase.clients:
                r = _client_result(c)
                if r is not None:
                    return r.workload
        return None

    def _pending(self, name: str, phase: _Phase) -> WriterResult:
        """A writer no client has reported on: pending, cancelled before it started, or
        failed with the reason when every client of it was lost."""
        label, stores = registry_label(name)
        lost = [c.lost for c in phase.clients if c.lost]
        if phase.clients and len(lost) == len(phase.clients):
            return WriterResult(
                writer=name, label=label, stores_rows=stores, status="failed", error=lost[0]
            )
        if self.error is not None and not phase.clients:  # the run stopped before it
            return WriterResult(
                writer=name, label=label, stores_rows=stores, status="failed", error=self.error
            )
        return WriterResult(
            writer=name,
            label=label,
            stores_rows=stores,
            status="cancelled" if self.cancelled else "pending",
        )

    # -- running -----------------------------------------------------------------------

    executor = "processes"

    async def execute(
        self, job: WorkerJob, on_progress: ProgressCallback | None = None
    ) -> RunResult:
        """Run every phase through M clients of `job` (its config this run's); the merged
        result. `job.error` set: nothing runs, the result says why."""
        ticker = asyncio.create_task(self._tick(on_progress)) if on_progress else None
        before = self.host_probe()
        try:
            await self._run_phases(job)
            self.status = self._outcome()
        except Exception as exc:  # a coordinator bug: keep what the clients sent, say so
            log.exception("clients_run_failed", run_id=self.id)
            self.status, self.error = "failed", repr(exc)
            self.kill()
        finally:
            if ticker is not None:
                ticker.cancel()
            self.host_load = host_load(before, self.host_probe())
            self.finished_at = dt.datetime.now(dt.UTC).isoformat()
        result = self.result()
        self._template = None
        if on_progress:
            on_progress(self.progress())
        return result

    async def _tick(self, on_progress: ProgressCallback) -> None:
        while True:
            await asyncio.sleep(1.0)
            on_progress(self.progress())

    async def _run_phases(self, job: WorkerJob) -> None:
        for phase in self.phases:
            if self.cancelled or self.error:
                break
            await self._run_phase(phase, job)

    async def _run_phase(self, phase: _Phase, job: WorkerJob) -> None:
        config = self.config.model_copy(update={"writers": phase.writers})
        phase.clients = [_Client(c) for c in range(self.config.clients)]
        try:
            for client in phase.clients:
                one = dataclasses.replace(job, config=config, client=client.index, gated=True)
                try:
                    client.worker = await WorkerProcess.start(one)
                except OSError as exc:
                    client.lost = f"its benchmark worker could not be started: {exc}"
                    client.done = True
                    continue
                if self.cancelled:
                    client.worker.send({"type": "cancel"})
            phase.release()  # clients that could not be started do not hold the others
            await asyncio.gather(*(self._follow(phase, c) for c in phase.clients))
        finally:
            phase.finished = True
            for client in phase.clients:
                if client.worker is not None and not client.done:
                    client.worker.kill()

    async def _follow(self, phase: _Phase, client: _Client) -> None:
        """Read one client's worker to its result, or to its end without one."""
        worker = client.worker
        if worker is None:
            return
        got = False
        try:
            while not got:
                try:
                    message = await worker.receive()
                except EOFError:
                    break
                kind = message["type"]
                if kind == "result":
                    client.result_json = message["result"]
                    got = True
                elif kind == "ready":
                    phase.ready.setdefault(message["writer"], set()).add(client.index)
                    phase.release()
                elif kind in ("progress", "started"):
                    client.result_json = message["result"]
                    if "progress" in message:
                        client.progress = message["progress"]
        finally:
            if not got:
                worker.kill()
            code = await worker.wait()
            client.done = True
        if not got:
            client.lost = self.stop_reason or exit_reason(worker.pid, code)
            log.warning("client_lost", run_id=self.id, client=client.index, reason=client.lost)
            phase.release()  # the others need not wait for it
        else:
            # Its final status, for the progress view.
            result = _client_result(client)
            if result is not None and client.progress is not None:
                statuses = {w.writer: w.status for w in result.writers}
                client.progress = {
                    **client.progress,
                    "writers": [
                        {**e, "status": statuses.get(e["writer"], e["status"]), "phase": "done"}
                        for e in client.progress.get("writers", [])
                    ],
                }

    def _outcome(self) -> str:
        """completed when every client of every writer completed; partial when some writer
        completed in some client; failed when none did."""
        if self.error:
            return "failed"
        if self.cancelled:
            return "cancelled"
        lost = any(c.lost for p in self.phases for c in p.clients)
        merged = self.result().writers
        ran = [w.status == "completed" for w in merged]
        # A writer some of whose clients failed measured the others only: not the run asked.
        whole = all(c.status == "completed" for w in merged for c in w.workers or [])
        if all(ran) and whole and not lost:
            return "completed"
        return "partial" if any(ran) else "failed"


def _client_result(client: _Client) -> RunResult | None:
    """The client's latest result; a lost client's running writers marked failed, a
    cancelled one's cancelled."""
    if client.result_json is None:
        return None
    result = RunResult.model_validate_json(client.result_json)
    if client.cancelled:
        update: dict[str, Any] = {"status": "cancelled"}
    elif client.lost is not None:
        update = {"status": "failed", "error": client.lost}
    else:
        return result
    writers = [w.model_copy(update=update) if w.status in _NOT_DONE else w for w in result.writers]
    return result.model_copy(update={"writers": writers})


def _writer_of(result: RunResult, name: str) -> WriterResult | None:
    return next((w for w in result.writers if w.writer == name), None)


def _entry(progress: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if progress is None:
        return None
    return next((w for w in progress.get("writers", []) if w["writer"] == name), None)


def _first_of(values: list[str]) -> str:
    return values[0] if values else "pending"


def _most(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
