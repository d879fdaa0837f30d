"""Sweeps for the app: start one in the background, watch which point it is at, cancel it.

A sweep holds the same targets as a benchmark run, so the app runs one of either at a time:
the SweepManager refuses to start while the BenchmarkManager has a run, and hooks itself
into that manager (`busy`) so a run is refused while a sweep goes on (both 409).

When the benchmark manager runs its benchmarks in worker processes (the app), each point
does too, one worker per point: the app's event loop only relays progress, so it answers
while a point keeps a core busy, and a cancel reaches the point's worker at once (killed
after the manager's grace if it does not stop).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from bench.manager import BenchmarkManager, RemoteRun
from bench.results import RunResult
from bench.runner import BenchmarkRun, ProgressCallback
from bench.sweep import SweepConfig, SweepPoint, SweepResult, SweepRun, SweepStore, sweep_summary
from bench.worker_process import make_job
from bench.workload import memory_check
from dwbench.errors import BenchmarkError, DirectWriteError
from writers.base import Targets

log = structlog.get_logger(__name__)


class SweepManager:
    def __init__(self, benchmarks: BenchmarkManager) -> None:
        # The benchmark manager's writers, results directory, environment and workloads.
        self.benchmarks = benchmarks
        self.store = SweepStore(benchmarks.store.directory)
        self._run: SweepRun | None = None
        self._task: asyncio.Task[SweepResult] | None = None
        self._progress: dict[str, Any] | None = None
        benchmarks.busy = self._busy

    @property
    def running(self) -> SweepRun | None:
        if self._run is not None and self._task is not None and not self._task.done():
            return self._run
        return None

    def _busy(self) -> str | None:
        current = self.running
        if current is None:
            return None
        return f"sweep {current.id} is running; cancel it or wait for it to finish"

    async def start(self, config: SweepConfig, *, memory_budget_mib: int | None = None) -> SweepRun:
        """Start a sweep in the background; BenchmarkError (409) while a run or sweep goes on,
        ResourceLimitError (422) when a point's in-flight memory passes `memory_budget_mib`."""
        self._check_free()
        workloads = self.benchmarks.workloads
        run = SweepRun(config, environment=self.benchmarks.environment(), workloads=workloads)
        if memory_budget_mib is not None:
            points = [config.point_config(b, c) for b, c in config.grid()]
            # In a thread: the estimate builds the workload's row source and a sample batch.
            workload = workloads.get(config.workload)
            await asyncio.to_thread(memory_check, points, workload, memory_budget_mib)
            self._check_free()  # another start may have won meanwhile
        self._run, self._progress = run, run.progress()
        self._task = asyncio.create_task(self._execute(run), name=f"sweep-{run.id}")
        log.info("sweep_started", sweep_id=run.id, points=len(run.points))
        return run

    def _check_free(self) -> None:
        reason = self._busy()
        bench = self.benchmarks.running
        if bench is not None:
            reason = f"benchmark {bench.id} is running; cancel it or wait for it to finish"
        if reason is not None:
            raise BenchmarkError(reason)

    async def _execute(self, run: SweepRun) -> SweepResult:
        prepare = self.benchmarks.prepare
        if prepare is not None:
            try:
                await prepare(run.workloads.get(run.config.workload))
            except DirectWriteError as exc:
                run.warnings.append(f"the workload's tables could not be prepared: {exc.message}")

        def keep(point: SweepPoint, result: RunResult) -> None:
            try:
                self.store.save_point(run.id, result)
            except OSError as exc:
                log.error("sweep_point_not_saved", sweep_id=run.id, error=str(exc))

        elsewhere = self._in_worker if self.benchmarks.worker is not None else None
        result = await run.execute(
            self.benchmarks.source, self._keep_progress, keep, elsewhere=elsewhere
        )
        try:
            self.store.save(result)
        except OSError as exc:
            log.error("sweep_not_saved", sweep_id=run.id, error=str(exc))
        log.info("sweep_finished", sweep_id=run.id, status=result.status)
        return result

    def _in_worker(self, run: BenchmarkRun) -> _PointInWorker:
        assert self.benchmarks.worker is not None
        return _PointInWorker(self.benchmarks, RemoteRun(run), self.benchmarks.worker)

    def _keep_progress(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def progress(self, sweep_id: str) -> dict[str, Any] | None:
        """Which point the running sweep is at, of how many; None when it is not running."""
        current = self.running
        if current is None or current.id != sweep_id:
            return None
        return {**(self._progress or current.progress()), "status": "running"}

    def get(self, sweep_id: str) -> SweepResult:
        """The running sweep so far, or a stored one; KeyError if unknown."""
        current = self.running
        if current is not None and current.id == sweep_id:
            return current.result()
        return self.store.load(sweep_id)

    def history(self) -> list[dict[str, Any]]:
        sweeps = self.store.list()
        current = self.running
        if current is not None:
            sweeps = [sweep_summary(current.result())] + [
                s for s in sweeps if s["id"] != current.id
            ]
        return sweeps

    async def cancel(self, sweep_id: str) -> SweepResult:
        """Stop the sweep: the point under way is cut short, the rest are skipped."""
        current = self.running
        if current is None or current.id != sweep_id:
            return self.store.load(sweep_id)
        current.cancel()
        assert self._task is not None
        return await self._stopped(current, self._task)

    async def _stopped(self, run: SweepRun, task: asyncio.Task[SweepResult]) -> SweepResult:
        point = run.current
        if isinstance(point, _PointInWorker):
            return await self.benchmarks.stop_worker(point.remote, task)
        return await task

    async def close(self) -> None:
        current = self.running
        if current is not None and self._task is not None:
            current.cancel()
            with contextlib.suppress(Exception):
                await self._stopped(current, self._task)


class _PointInWorker:
    """A sweep point's run in a worker process of its own, as a benchmark run goes."""

    def __init__(self, benchmarks: BenchmarkManager, remote: RemoteRun, targets: Targets) -> None:
        self.benchmarks, self.remote, self.targets = benchmarks, remote, targets

    def cancel(self) -> None:
        self.remote.cancel()

    async def execute(self, on_progress: ProgressCallback | None) -> RunResult:
        job = await asyncio.to_thread(make_job, self.remote, self.targets)
        publish = on_progress if on_progress is not None else _ignore
        return await self.benchmarks.run_in_worker(self.remote, job, publish)


def _ignore(progress: dict[str, Any]) -> None:
    pass
