"""One benchmark at a time for the app: start, watch, cancel, and keep the results.

Progress goes to subscribers (the WebSocket route) once a second as plain dicts:
`{"type": "progress", ...}` while running and a last `{"type": "finished", ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bench.config import BenchmarkConfig
from bench.results import RunResult
from bench.runner import BenchmarkRun, WriterSource
from bench.store import ResultStore, summary
from dwbench.errors import BenchmarkError, DirectWriteError
from workloads.base import Workload
from workloads.registry import WorkloadRegistry

log = structlog.get_logger(__name__)


class BenchmarkManager:
    def __init__(
        self,
        source: WriterSource,
        store: ResultStore,
        environment: Callable[[], dict[str, Any]] = dict,
        *,
        workloads: WorkloadRegistry | None = None,
        prepare: Callable[[Workload], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.environment = environment
        self.workloads = workloads or WorkloadRegistry()
        self.prepare = prepare
        self._run: BenchmarkRun | None = None
        self._task: asyncio.Task[RunResult] | None = None
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        # Whatever else holds the targets (a sweep: bench.sweep_manager), as the reason a
        # run cannot start now; None when they are free.
        self.busy: Callable[[], str | None] = lambda: None

    @property
    def running(self) -> BenchmarkRun | None:
        if self._run is not None and self._task is not None and not self._task.done():
            return self._run
        return None

    def start(self, config: BenchmarkConfig) -> BenchmarkRun:
        """Start a run in the background; BenchmarkError (409) while another one runs."""
        current = self.running
        if current is not None:
            raise BenchmarkError(
                f"benchmark {current.id} is running; cancel it or wait for it to finish"
            )
        if (reason := self.busy()) is not None:
            raise BenchmarkError(reason)
        run = BenchmarkRun(config, environment=self.environment(), workloads=self.workloads)
        self._run = run
        self._task = asyncio.create_task(self._execute(run), name=f"benchmark-{run.id}")
        log.info("benchmark_started", run_id=run.id, writers=",".join(config.writers))
        return run

    async def _execute(self, run: BenchmarkRun) -> RunResult:
        if self.prepare is not None:
            try:
                await self.prepare(run.workload)
            except DirectWriteError as exc:
                run.error = f"the workload's tables could not be prepared: {exc.message}"
        result = await run.execute(self.source, on_progress=self._publish)
        try:
            self.store.save(result)
        except OSError as exc:
            log.error("benchmark_not_saved", run_id=run.id, error=str(exc))
        self._broadcast(run.id, {"type": "finished", "run": summary(result)})
        log.info("benchmark_finished", run_id=run.id, status=result.status)
        return result

    def _publish(self, progress: dict[str, Any]) -> None:
        self._broadcast(progress["run_id"], {"type": "progress", **progress})

    def _broadcast(self, run_id: str, message: dict[str, Any]) -> None:
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(message)

    def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.setdefault(run_id, set()).add(queue)
        current = self.running
        if current is not None and current.id == run_id:
            queue.put_nowait({"type": "progress", **current.progress()})
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.get(run_id, set()).discard(queue)

    def get(self, run_id: str) -> RunResult:
        """The result so far of the running run, or a stored one; KeyError if unknown."""
        current = self.running
        if current is not None and current.id == run_id:
            return current.result()
        return self.store.load(run_id)

    def is_running(self, run_id: str) -> bool:
        current = self.running
        return current is not None and current.id == run_id

    def _not_while_running(self, run_id: str, what: str) -> None:
        if self.is_running(run_id):
            raise BenchmarkError(f"benchmark {run_id} is running; {what} once it has finished")

    def set_label(self, run_id: str, label: str | None) -> RunResult:
        """Name a finished run; BenchmarkError (409) while it runs, KeyError if unknown."""
        self._not_while_running(run_id, "name it")
        return self.store.set_label(run_id, label)

    def delete(self, run_id: str) -> None:
        """Remove a finished run's files; BenchmarkError (409) while it runs."""
        self._not_while_running(run_id, "delete it")
        self.store.delete(run_id)

    async def cancel(self, run_id: str) -> RunResult:
        """Stop the run; what was measured is kept and marked partial."""
        current = self.running
        if current is None or current.id != run_id:
            return self.store.load(run_id)  # finished already: nothing to cancel
        current.cancel()
        assert self._task is not None
        return await self._task

    def history(self) -> list[dict[str, Any]]:
        runs = self.store.history()
        current = self.running
        if current is not None:
            runs = [summary(current.result()), *[r for r in runs if r["id"] != current.id]]
        return runs

    async def close(self) -> None:
        current = self.running
        if current is not None and self._task is not None:
            current.cancel()
            with contextlib.suppress(Exception):
                await self._task
