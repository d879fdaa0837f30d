"""The `spark` executor: a run's clients as the tasks of Spark jobs (pyspark).

`SparkRun` (the coordinator, in the app or the CLI) starts `python -m bench.spark_driver FD`
with an allowlisted environment (as a benchmark worker is started: no secret in it; the
JVM and Spark's Python workers inherit it) and sends it the job over a private socket pair.
The driver opens a SparkSession (`--spark-master`, default `local[M]`: M task slots on this
machine), and runs each phase (one writer, or all when `parallel`) as one job of M tasks in
barrier mode (`RDD.barrier()`): task c is client c, runs the client's BenchmarkRun in the
Spark Python worker with its own writers and SDK instances, and returns its result as
JSON, which Spark hands back to the driver (`collect`). The tasks' start barrier is
`BarrierTaskContext.allGather()`: every client has opened and prepared its writers, then all
start at one wall-clock instant agreed from their arrival times. The coordinator merges the
clients' results as for the `processes` executor (`bench.clients`).

What Spark changes: a barrier stage runs all of its tasks or none, so a task that dies fails
the phase for every client (the phase's clients are reported lost with Spark's reason;
earlier phases keep their results); cancel cancels the Spark jobs, which stops the tasks
without their figures. Live progress: each task puts its client's progress and result so far
once a second into a `ProgressSink` that travels with the job — here a private directory of
this machine (`DirectorySink`), for a job run the run's Volume directory
(bench.databricks_job.VolumeSink) — which the coordinator reads once a second, so the app and
the CLI show each client's rows as for the `processes` executor.

    driver <- coordinator: SparkJob, then {"type": "cancel"}
    driver -> coordinator: {"type": "started", "pid", "spark": version, "master"},
                           {"type": "phase", "index", "results": [json per client]},
                           {"type": "phase", "index", "error": text},
                           {"type": "phase", "index", "cancelled": True}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from bench.clients import ClientsRun, _Client, _Phase
from bench.worker_process import (
    WorkerJob,
    WorkerProcess,
    client_run,
    encode,
    execute_client,
    exit_reason,
    read_message_from,
    worker_environment,
)
from emulator.child_env import allowlisted_environment

log = structlog.get_logger(__name__)

# After the tasks' start barrier, how long after the last task arrived they all start.
SPARK_START_DELAY_S = 1.5
# The driver's environment besides the worker's: Java's and Spark's own settings.
_DRIVER_PREFIXES = ("PYTHON", "GRPC_", "COVERAGE_", "RUST_LOG", "JAVA_", "SPARK_", "PYSPARK_")


@dataclass(frozen=True)
class SparkJob:
    """What the driver runs: the run's job, its phases (writers each), and where."""

    run_id: str
    job: WorkerJob
    phases: list[list[str]]
    clients: int
    master: str
    # Where each task puts its progress while it runs (None: it reports when it returns).
    progress: ProgressSink | None = None


class ProgressSink:
    """Where a Spark task puts its client's progress once a second, and where the
    coordinator reads it: one document per phase and client, the latest only. Picklable:
    it travels to the tasks with the job."""

    def put(self, phase: int, client: int, document: dict[str, Any]) -> None:
        raise NotImplementedError

    def get(self, phase: int, client: int) -> dict[str, Any] | None:
        raise NotImplementedError

    @staticmethod
    def name(phase: int, client: int) -> str:
        return f"phase-{phase}-client-{client}.json"


@dataclass(frozen=True)
class DirectorySink(ProgressSink):
    """A private directory of this machine (the local Spark executor's tasks run here)."""

    path: str

    def put(self, phase: int, client: int, document: dict[str, Any]) -> None:
        target = os.path.join(self.path, self.name(phase, client))
        partial = f"{target}.{os.getpid()}.partial"
        with open(partial, "w") as out:
            json.dump(document, out)
        os.replace(partial, target)  # a reader sees the last document whole, or none

    def get(self, phase: int, client: int) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.path, self.name(phase, client))) as found:
                document: dict[str, Any] = json.load(found)
                return document
        except FileNotFoundError:
            return None


def spark_problem() -> str | None:
    """Why the spark executor cannot run here (pyspark or Java missing), or None."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        return "the spark executor needs pyspark (pip install -r requirements.txt)"
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if java is None or not os.path.exists(java):
        return (
            "the spark executor needs Java 17 or later (Debian: apt-get install "
            "openjdk-17-jre-headless; make test installs it)"
        )
    return None


def driver_environment() -> dict[str, str]:
    env = allowlisted_environment(_DRIVER_PREFIXES)
    env["PYTHONPATH"] = worker_environment()["PYTHONPATH"]
    # Spark's Python workers run this interpreter; Spark binds to loopback only.
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


class SparkRun(ClientsRun):
    """A clients run whose clients are Spark tasks (bench.clients.ClientsRun's merge)."""

    executor = "spark"

    def __init__(self, template: Any, master: str | None = None) -> None:
        super().__init__(template)
        self.master = master or f"local[{self.config.clients}]"
        self.driver: WorkerProcess | None = None

    @property
    def worker_pids(self) -> list[int]:
        return [self.driver.pid] if self.driver is not None else []

    def _started_remotely(self) -> bool:
        """Whether its tasks are under way somewhere (the driver, a job run)."""
        return self.driver is not None

    def cancel(self) -> None:
        self.cancelled = True
        if self.driver is not None:
            self.driver.send({"type": "cancel"})

    def kill(self) -> None:
        if self.driver is not None:
            self.driver.kill()

    def _writer_progress(self, phase: _Phase, name: str) -> dict[str, Any]:
        entry = super()._writer_progress(phase, name)
        waiting = entry["status"] == "pending"
        if waiting and self._started_remotely() and phase.clients and not phase.finished:
            # No task has reported yet: the phase going on, as far as it is known.
            started = all(p.finished for p in self.phases[: self.phases.index(phase)])
            if started:
                entry = {**entry, "status": "running", "phase": "running as Spark tasks"}
        return entry

    async def _run_phases(self, job: WorkerJob) -> None:
        if (problem := spark_problem()) is not None:
            self.error = problem
            return
        with tempfile.TemporaryDirectory(prefix="dwbench-spark-progress-") as where:
            sink = DirectorySink(where)  # mkdtemp's mode 0700: this user's only
            watcher = asyncio.create_task(self._watch(sink))
            try:
                await self._drive_phases(job, sink)
            finally:
                await stop_task(watcher)

    async def _watch(self, sink: ProgressSink, interval_s: float = 1.0) -> None:
        """Read the tasks' progress once a second."""
        while True:
            await self._read_progress(sink)
            await asyncio.sleep(interval_s)

    async def _read_progress(self, sink: ProgressSink) -> None:
        """Each running client's latest progress and result so far, as a worker's would be
        (read in a thread, as the sink may be remote; applied here, on the loop, where a
        phase's results are, and never over them)."""
        wanted = [
            (index, client)
            for index, phase in enumerate(self.phases)
            if not phase.finished
            for client in phase.clients
        ]
        try:
            found = await asyncio.to_thread(_read_all, sink, wanted)
        except Exception as exc:  # a remote sink's hiccup: progress shows again next time
            log.warning("spark_progress_unread", run_id=self.id, reason=str(exc))
            return
        for index, client, document in found:
            if document is not None and not self.phases[index].finished:
                client.progress = document["progress"]
                client.result_json = document["result"]

    async def _drive_phases(self, job: WorkerJob, sink: ProgressSink) -> None:
        spark_job = SparkJob(
            run_id=self.id,
            job=job,
            phases=[p.writers for p in self.phases],
            clients=self.config.clients,
            master=self.master,
            progress=sink,
        )
        try:
            driver = await WorkerProcess.start(
                spark_job, module="bench.spark_driver", env=driver_environment()
            )
        except OSError as exc:
            self.error = f"the Spark driver could not be started: {exc}"
            return
        self.driver = driver
        if self.cancelled:
            driver.send({"type": "cancel"})
        for phase in self.phases:
            phase.clients = [_Client(c) for c in range(self.config.clients)]
        got_all = False
        try:
            while not got_all:
                try:
                    message = await driver.receive()
                except EOFError:
                    break
                if message["type"] == "started":
                    self.environment = {
                        **self.environment,
                        "spark": {"version": message["spark"], "master": message["master"]},
                    }
                elif message["type"] == "phase":
                    self._phase_done(self.phases[message["index"]], message)
                    got_all = all(p.finished for p in self.phases)
        finally:
            if not got_all:
                driver.kill()
            code = await driver.wait()
        await self._read_progress(sink)  # what the tasks put last, before they were stopped
        for phase in self.phases:
            if not phase.finished:
                # The driver ended before this phase did.
                reason = self.stop_reason or exit_reason(driver.pid, code, "Spark driver")
                self._phase_done(phase, {"error": reason})

    def _phase_done(self, phase: _Phase, message: dict[str, Any]) -> None:
        phase.finished = True
        if "results" in message:
            for client, result_json in zip(phase.clients, message["results"], strict=True):
                client.result_json = result_json
                client.done = True
            return
        for client in phase.clients:
            if message.get("cancelled"):
                client.cancelled = True  # its last progress kept, as a worker's would be
            else:
                client.lost = message["error"]
            client.done = True


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _read_all(
    sink: ProgressSink, wanted: list[tuple[int, _Client]]
) -> list[tuple[int, _Client, dict[str, Any] | None]]:
    return [(index, client, sink.get(index, client.index)) for index, client in wanted]


# -- the driver process ----------------------------------------------------------------------


def _task(payload: bytes, phase: int, sink: ProgressSink | None) -> Any:
    """The function each barrier task runs over its one-element partition (the client)."""

    def run(partition: Iterator[int]) -> Iterator[str]:
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        client = next(iter(partition))
        job: WorkerJob = pickle.loads(payload)
        lock = threading.Lock()

        def barrier() -> None:
            # Every task says when it arrived; all start at an instant agreed from that.
            # (Spark hands a barrier's release to its tasks up to about a second apart,
            # so releasing on the barrier alone spread the clients' starts by up to 1 s.)
            with lock:  # one barrier call at a time per task (writers run in parallel)
                arrived = context.allGather(repr(time.time()))
            start_at = max(float(t) for t in arrived) + SPARK_START_DELAY_S
            if (delay := start_at - time.time()) > 0:
                time.sleep(delay)

        async def gate(_name: str) -> None:
            await asyncio.to_thread(barrier)

        run_ = client_run(job, client, gate)
        on_progress = None
        if sink is not None:

            def on_progress(progress: dict[str, Any]) -> None:
                document = {"progress": progress, "result": run_.result().model_dump_json()}
                try:
                    sink.put(phase, client, document)
                except Exception as exc:  # progress is for watching: the run goes on
                    log.warning("spark_task_progress_failed", client=client, reason=str(exc))

        result = asyncio.run(execute_client(job, run_, on_progress))
        yield result.model_dump_json()

    return run


def _drive(spark_job: SparkJob, sock: socket.socket) -> None:
    from pyspark import __version__ as spark_version
    from pyspark.sql import SparkSession

    def send(message: dict[str, Any]) -> None:
        sock.sendall(encode(message))

    spark = (
        SparkSession.builder.master(spark_job.master)
        .appName(f"dwbench-{spark_job.run_id}")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.python.worker.reuse", "false")
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    cancelled = threading.Event()

    def control() -> None:
        reader = sock.makefile("rb")
        while True:
            try:
                message = read_message_from(reader)
            except EOFError:
                message = {"type": "cancel"}  # the coordinator is gone
            if message.get("type") == "cancel":
                cancelled.set()
                sc.cancelAllJobs()
                return

    threading.Thread(target=control, daemon=True).start()
    send({"type": "started", "pid": os.getpid(), "spark": spark_version, "master": sc.master})
    try:
        run_phases(sc, spark_job, send, cancelled)
    finally:
        spark.stop()


def run_phases(
    sc: Any, spark_job: SparkJob, send: Callable[[dict[str, Any]], None], cancelled: threading.Event
) -> None:
    """Each phase of `spark_job` as one barrier job of its clients on SparkContext `sc`;
    `send` gets each phase's {"type": "phase", "index", "results" | "error" | "cancelled"}
    (the driver here, and a databricks-job task: bench.databricks_job)."""
    for index, writers in enumerate(spark_job.phases):
        if cancelled.is_set():
            send({"type": "phase", "index": index, "cancelled": True})
            continue
        config = spark_job.job.config.model_copy(update={"writers": writers})
        job = dataclasses.replace(spark_job.job, config=config)
        rdd = sc.parallelize(range(spark_job.clients), spark_job.clients)
        try:
            task = _task(pickle.dumps(job), index, spark_job.progress)
            results = rdd.barrier().mapPartitions(task).collect()
        except Exception as exc:  # a task failed, or the job was cancelled
            if cancelled.is_set():
                send({"type": "phase", "index": index, "cancelled": True})
            else:
                send({"type": "phase", "index": index, "error": _spark_reason(exc)})
            continue
        send({"type": "phase", "index": index, "results": list(results)})


def _spark_reason(exc: BaseException) -> str:
    """Spark's reason for a failed job, first line (its Java stack traces stay in the log)."""
    text = str(exc).strip().splitlines()
    first = next((line for line in text if "Exception" in line or "Error" in line), None)
    line = (first or (text[0] if text else repr(exc))).lstrip(": ")
    return f"the Spark job failed: {line[:400]}"


def main(argv: list[str]) -> int:
    from dwbench.log import configure_logging

    configure_logging()
    sock = socket.socket(fileno=int(argv[1]))
    reader = sock.makefile("rb")
    spark_job: SparkJob = read_message_from(reader)
    _drive(spark_job, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
