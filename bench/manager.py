"""One benchmark at a time for the app: start, watch, cancel, and keep the results.

Progress goes to subscribers (the WebSocket route) once a second as plain dicts:
`{"type": "progress", ...}` while running and a last `{"type": "finished", ...}`.

Given `worker` targets (the app's), each run goes to a worker process of its own
(`bench.worker_process`): a run that keeps a CPU busy (the null writer) would otherwise
hold the app's event loop, and /health, cancel and a second start would wait on it. A
manager given only a WriterSource (tests' fakes) runs the benchmark on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import structlog

from bench.clients import ClientsRun
from bench.config import BenchmarkConfig, check_memory
from bench.executors import clients_run
from bench.results import RunResult
from bench.runner import BenchmarkRun, ProgressCallback, WriterSource
from bench.store import ResultStore, summary
from bench.worker_process import RunElsewhere, WorkerJob, WorkerProcess, exit_reason, make_job
from dwbench.errors import BenchmarkError, DirectWriteError
from workloads.base import Workload
from workloads.registry import WorkloadRegistry
from writers.base import Targets

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a cancelled worker has to return its partial result before it is killed.
CANCEL_GRACE_S = 5.0


class Run(Protocol):
    """What the app reads of the run going on, inline or in a worker process."""

    @property
    def id(self) -> str: ...

    def progress(self) -> dict[str, Any]: ...

    def result(self) -> RunResult: ...

    def cancel(self) -> None: ...


class RemoteRun(RunElsewhere):
    """A run in a worker process, as the app sees it: the latest result the worker sent
    (until its first message, the result of the run as built here)."""

    def __init__(self, template: BenchmarkRun) -> None:
        super().__init__(template)
        self._result_json: str | None = None
        self._progress: dict[str, Any] | None = None
        self.worker: WorkerProcess | None = None

    @property
    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker is not None else None

    def keep(self, result_json: str, progress: dict[str, Any] | None = None) -> None:
        self._template = None  # its row sources are the worker's now; let them go
        self._result_json = result_json
        if progress is not None:
            self._progress = progress

    def result(self) -> RunResult:
        if self._result_json is not None:
            return RunResult.model_validate_json(self._result_json)
        assert self._template is not None
        return self._template.result()

    def progress(self) -> dict[str, Any]:
        if self._progress is not None:
            return {**self._progress, "worker_pid": self.worker_pid}
        if self._template is not None:
            return {**self._template.progress(), "worker_pid": self.worker_pid}
        result = self.result()
        writers = [{"writer": w.writer, "status": w.status, "rows": w.rows} for w in result.writers]
        return {"run_id": self.id, "status": result.status, "writers": writers}

    def cancel(self) -> None:
        self.cancelled = True
        if self.worker is not None:
            self.worker.send({"type": "cancel"})

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()

    def lost(self, reason: str) -> RunResult:
        """The result of a run whose worker ended without returning one: what its last
        progress showed, failed, with the reason first among the warnings."""
        result = self.result()
        writers = [
            w.model_copy(update={"status": "failed", "error": reason})
            if w.status in ("pending", "running")
            else w
            for w in result.writers
        ]
        return result.model_copy(
            update={
                "status": "failed",
                "partial": True,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
                "writers": writers,
                "warnings": [f"the run stopped on an error: {reason}", *result.warnings],
            }
        )


class BenchmarkManager:
    def __init__(
        self,
        source: WriterSource,
        store: ResultStore,
        environment: Callable[[], dict[str, Any]] = dict,
        *,
        workloads: WorkloadRegistry | None = None,
        prepare: Callable[[Workload], Awaitable[None]] | None = None,
        worker: Targets | None = None,
    ) -> None:
        """`worker`: the targets a worker process builds its writers from; runs go to
        worker processes then (`source` still serves the sweeps)."""
        self.source = source
        self.worker = worker
        self.cancel_grace_s = CANCEL_GRACE_S
        self._reapers: set[asyncio.Task[None]] = set()
        self.store = store
        self.environment = environment
        self.workloads = workloads or WorkloadRegistry()
        self.prepare = prepare
        self._run: Run | None = None
        self._task: asyncio.Task[RunResult] | None = None
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        # Whatever else holds the targets (a sweep: bench.sweep_manager), as the reason a
        # run cannot start now; None when they are free.
        self.busy: Callable[[], str | None] = lambda: None

    @property
    def running(self) -> Run | None:
        if self._run is not None and self._task is not None and not self._task.done():
            return self._run
        return None

    @property
    def worker_pid(self) -> int | None:
        """The pid of the worker process of the run going on (None: none, or inline)."""
        current = self.running
        return current.worker_pid if isinstance(current, RemoteRun | ClientsRun) else None

    async def start(self, config: BenchmarkConfig, *, memory_budget_mib: int | None = None) -> Run:
        """Start a run in the background; BenchmarkError (409) while another one runs,
        ResourceLimitError (422) when its in-flight memory passes `memory_budget_mib`."""
        self._check_free()
        environment = self.environment()

        def build() -> BenchmarkRun:
            run = BenchmarkRun(config, environment=environment, workloads=self.workloads)
            if memory_budget_mib is not None:
                footprint = run.parts[0].factory.footprint()
                check_memory([config], footprint, memory_budget_mib)
            return run

        # In a thread: each writer's row source is built (~0.1-0.5 s for a run), and the
        # estimate builds a sample batch; the app answers meanwhile.
        built = await asyncio.to_thread(build)
        self._check_free()  # another start may have won while this one was built
        run: Run
        if config.clients > 1 or config.executor in ("spark", "databricks-job"):
            if self.worker is None:
                raise BenchmarkError(
                    f"{config.clients} clients run in worker processes, which this app does not "
                    "start (it runs benchmarks in its own process)"
                )
            clients = clients_run(built, self.worker)
            run = clients
            self._task = asyncio.create_task(
                self._execute_clients(clients, self.worker), name=f"benchmark-{clients.id}"
            )
        elif self.worker is not None:
            remote = RemoteRun(built)
            run = remote
            self._task = asyncio.create_task(
                self._execute_remote(remote, self.worker), name=f"benchmark-{remote.id}"
            )
        else:
            run = built
            self._task = asyncio.create_task(self._execute(built), name=f"benchmark-{run.id}")
        self._run = run
        log.info("benchmark_started", run_id=run.id, writers=",".join(config.writers))
        return run

    def _check_free(self) -> None:
        current = self.running
        if current is not None:
            raise BenchmarkError(
                f"benchmark {current.id} is running; cancel it or wait for it to finish"
            )
        if (reason := self.busy()) is not None:
            raise BenchmarkError(reason)

    async def _execute(self, run: BenchmarkRun) -> RunResult:
        if self.prepare is not None:
            try:
                await self.prepare(run.workload)
            except DirectWriteError as exc:
                run.error = f"the workload's tables could not be prepared: {exc.message}"
        result = await run.execute(self.source, on_progress=self._publish)
        return self._finish(result)

    async def _job(self, run: RemoteRun | ClientsRun, targets: Targets) -> WorkerJob:
        """The job a worker gets, once the workload's tables are prepared."""
        if self.prepare is not None:
            try:
                await self.prepare(run.workload)
            except DirectWriteError as exc:
                run.error = f"the workload's tables could not be prepared: {exc.message}"
        return await asyncio.to_thread(make_job, run, targets)

    async def _execute_clients(self, run: ClientsRun, targets: Targets) -> RunResult:
        job = await self._job(run, targets)
        return self._finish(await run.execute(job, self._publish))

    async def _execute_remote(self, run: RemoteRun, targets: Targets) -> RunResult:
        job = await self._job(run, targets)
        return self._finish(await self.run_in_worker(run, job, self._publish))

    async def run_in_worker(
        self, run: RemoteRun, job: WorkerJob, publish: ProgressCallback
    ) -> RunResult:
        """Run `job` in a worker process of its own, its progress to `publish` (with the
        worker's pid): the worker's result, or, when it ended without one, `run.lost`."""
        try:
            worker = await WorkerProcess.start(job)
        except OSError as exc:
            return run.lost(f"the benchmark worker could not be started: {exc}")
        run.worker = worker
        if run.cancelled:  # cancelled while the worker was being started
            worker.send({"type": "cancel"})
        result: RunResult | None = None
        try:
            while result is None:
                try:
                    message = await worker.receive()
                except EOFError:
                    break
                kind = message["type"]
                if kind == "result":
                    result = RunResult.model_validate_json(message["result"])
                elif kind == "progress":
                    progress = message["progress"]
                    # The last progress comes with the run's final status: the run is
                    # over once its result is here and saved, not before.
                    if progress["status"] == "running":
                        run.keep(message["result"], progress)
                    publish({**progress, "worker_pid": worker.pid})
                elif kind == "started":
                    run.keep(message["result"])
        finally:
            if result is None:
                # Gone without a result (killed, crashed) or the manager is closing: make
                # sure it is gone, then say how it ended.
                worker.kill()
                code = await worker.wait()
        if result is None:
            result = run.lost(run.stop_reason or exit_reason(worker.pid, code))
        else:
            # The result is final: the run ends now, the worker exits meanwhile.
            reaper = asyncio.create_task(self._reap(run.id, worker))
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
        return result

    async def _reap(self, run_id: str, worker: WorkerProcess) -> None:
        try:
            code = await asyncio.wait_for(worker.wait(), self.cancel_grace_s)
        except TimeoutError:
            log.warning("benchmark_worker_lingered", run_id=run_id, pid=worker.pid)
            worker.kill()
            code = await worker.wait()
        if code != 0:
            log.warning("benchmark_worker_exit", run_id=run_id, pid=worker.pid, exit_code=code)

    def _finish(self, result: RunResult) -> RunResult:
        try:
            self.store.save(result)
        except OSError as exc:
            log.error("benchmark_not_saved", run_id=result.id, error=str(exc))
        self._broadcast(result.id, {"type": "finished", "run": summary(result)})
        log.info("benchmark_finished", run_id=result.id, status=result.status)
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
        if isinstance(current, RemoteRun | ClientsRun):
            return await self.stop_worker(current, self._task)
        return await self._task

    async def stop_worker(self, run: RemoteRun | ClientsRun, task: asyncio.Task[T]) -> T:
        """A cancelled worker returns its partial result within the grace, or is killed and
        the run kept as its last progress showed it, failed, saying why. `task`: what
        waits on the worker (the run's, or a sweep's whose point it runs)."""
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.cancel_grace_s)
        except TimeoutError:
            pid = run.worker_pid
            run.stop_reason = (
                f"the benchmark worker (pid {pid}) did not stop within "
                f"{self.cancel_grace_s:g} s of the cancel and was killed"
            )
            log.warning("benchmark_worker_unresponsive", run_id=run.id, pid=pid)
            run.kill()
            return await task

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
                if isinstance(current, RemoteRun | ClientsRun):
                    await self.stop_worker(current, self._task)
                else:
                    await self._task
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
