"""A benchmark run in a worker process of its own, so the app's event loop stays free.

The app (`bench.manager.BenchmarkManager`) starts `python -m bench.worker_process FD`
with an allowlisted environment: no workspace credentials, local stack token or writer
secrets (they would be readable in /proc/<pid>/environ). Everything the worker needs
travels over a private socket pair instead, as length-prefixed pickles:

    app -> worker: one WorkerJob, then {"type": "cancel"} when the user cancels
    worker -> app: {"type": "started", "pid", "result"},
                   {"type": "progress", "progress", "result"} once a second,
                   {"type": "result", "result"} at the end

`result` is the RunResult so far as pydantic JSON. The worker builds its own writers (its
own SDK instances) from the same targets the app uses, with every writer's settings
resolved by the app (the worker never reads them from its environment).

Not `multiprocessing.Process`: its spawn and forkserver children inherit the parent's
environment whole, and none of its start methods takes another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bench.config import BenchmarkConfig
from dwbench.errors import WriterUnavailableError
from emulator.child_env import allowlisted_environment
from workloads.base import Workload
from writers.base import DataWriterInterface, Targets, WriterSettings

if TYPE_CHECKING:
    from bench.results import RunResult
    from bench.runner import BenchmarkRun, Gate, ProgressCallback

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a result with many writers and seconds stays far below
# What the worker's environment keeps from the app's besides the common allowlist of the
# local stack's children (emulator.child_env): the interpreter's, gRPC's, coverage's and the
# SDK's log settings. Nothing else: secrets reach the worker only over its socket.
_PREFIXES = ("PYTHON", "GRPC_", "COVERAGE_", "RUST_LOG")


def worker_environment(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: the allowlist, and the app's import path."""
    env = allowlisted_environment(_PREFIXES, parent=parent)
    # The worker imports the app's modules from where the app found them.
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@dataclass(frozen=True)
class WorkerJob:
    """One run, as the worker rebuilds it: picklable, with the app's resolved targets."""

    run_id: str
    started_at: str
    config: BenchmarkConfig
    workload: Workload
    environment: dict[str, Any]
    # Without workspace_auth (the SDK's Config does not pickle): the worker resolves it
    # again from the same settings.
    targets: Targets
    # The writer registry as the app has it (DWBENCH_EXTRA_WRITERS included).
    writers: dict[str, str]
    # Writers whose settings the app could not resolve, and why: unavailable in the run.
    unresolved: dict[str, str] = field(default_factory=dict)
    # Why the run already has an error (its tables could not be prepared), as in the app.
    error: str | None = None
    # Which of the config's clients this worker is (bench.clients): its share of the run.
    client: int = 0
    # Gated: each writer, once ready, says {"type": "ready", "writer"} and starts on
    # {"type": "go", "writer"} (the clients' start barrier).
    gated: bool = False


def job_targets(targets: Targets, names: list[str]) -> tuple[Targets, dict[str, str]]:
    """The targets a worker gets for these writers: each writer's settings as values (read
    here, from the app's environment), and the writers whose settings could not be read."""
    from writers import writer_class

    resolved: dict[str, WriterSettings] = dict(targets.writer_settings)
    unresolved: dict[str, str] = {}
    for name in names:
        if name in resolved:
            continue
        try:
            cls = writer_class(name)
        except WriterUnavailableError:
            continue  # the worker says so itself, as the app would
        try:
            resolved[name] = targets.writer_config(name, cls.settings_class)
        except ValueError as exc:  # pydantic's ValidationError: a bad setting
            unresolved[name] = f"the {name} writer's settings are invalid: {exc}"
    return dataclasses.replace(targets, writer_settings=resolved, workspace_auth=None), unresolved


def make_job(run: Any, targets: Targets) -> WorkerJob:
    """The job of `run` (a BenchmarkRun, or the app's view of one: its id, start, config,
    workload, environment and error) on these targets. Blocking: reads each writer's
    settings."""
    from writers import WRITERS

    resolved, unresolved = job_targets(targets, run.config.writers)
    return WorkerJob(
        run_id=run.id,
        started_at=run.started_at,
        config=run.config,
        workload=run.workload,
        environment=run.environment,
        targets=resolved,
        writers=dict(WRITERS),
        unresolved=unresolved,
        error=run.error,
    )


class RunElsewhere:
    """The app's view of a run executing in other processes (bench.manager.RemoteRun,
    bench.clients.ClientsRun): what it is, from the run built here (`template`) until the
    workers report."""

    def __init__(self, template: BenchmarkRun) -> None:
        self.id = template.id
        self.config = template.config
        self.workload = template.workload
        self.started_at = template.started_at
        self.environment = template.environment
        self.error: str | None = None  # set by prepare, before any worker starts
        self._template: BenchmarkRun | None = template
        self.cancelled = False
        self.stop_reason: str | None = None  # why its workers were killed, if they were


# -- framing -------------------------------------------------------------------------------


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next message; EOFError when the other side closed its end."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise EOFError(f"a frame of {size} bytes is over the limit")
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise EOFError("the other side closed the connection") from exc
    return pickle.loads(body)  # our own private socket pair: trusted


def read_message_from(file: Any) -> Any:
    """The next message from a blocking binary file (a thread's end of the socket)."""
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other side closed the connection")
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise EOFError(f"a frame of {size} bytes is over the limit")
    body = file.read(size)
    if len(body) < size:
        raise EOFError("the other side closed the connection")
    return pickle.loads(body)  # our own private socket pair: trusted


# -- the app's side ------------------------------------------------------------------------


class WorkerProcess:
    """The app's handle on one worker: send it messages, read its messages, reap it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.reader = reader
        self.writer = writer

    @classmethod
    async def start(
        cls,
        job: Any,
        *,
        module: str = "bench.worker_process",
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """`python -m MODULE FD` with `job` sent over the socket pair (the Spark driver,
        bench.spark_driver, is started this way too, with its own environment)."""
        ours, theirs = socket.socketpair()
        try:
            # Popen in a thread: a fork and exec of a large process is not for the loop.
            process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", module, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env if env is not None else worker_environment(),
                cwd=Path.cwd(),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = cls(process, reader, writer)
        worker.send(job)
        log.info("worker_started", module=module, run_id=job.run_id, pid=process.pid)
        return worker

    def send(self, message: Any) -> None:
        """Queue a message to the worker; a worker gone already is not an error here."""
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def receive(self) -> Any:
        return await read_message(self.reader)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    async def wait(self) -> int:
        """Its exit code (negative: the signal that ended it), once it has exited."""
        code = await asyncio.to_thread(self.process.wait)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        return code


def exit_reason(pid: int, code: int, what: str = "benchmark worker") -> str:
    """How a worker (`what`) ended, in words, for a run that it did not return a result for."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the {what} (pid {pid}) was killed by {name}"
    return f"the {what} (pid {pid}) exited with code {code} before returning a result"


# -- the worker's side ---------------------------------------------------------------------


class _Source:
    """The worker's writers: its own WriterSet, and the writers the app could not set up."""

    def __init__(self, targets: Targets, unresolved: dict[str, str]) -> None:
        from writers import WriterSet

        self.writers = WriterSet(targets)
        self.unresolved = unresolved

    async def get(self, name: str, stream: int = 0) -> DataWriterInterface:
        if name in self.unresolved:
            raise WriterUnavailableError(self.unresolved[name], writer=name)
        return await self.writers.get(name, stream)


def with_workspace_auth(targets: Targets) -> Targets:
    """Databricks mode: the workspace credentials, resolved again from the same settings
    (what the app did at start-up: `dwbench.runtime.workspace_targets`)."""
    if targets.mode != "databricks":
        return targets
    from dwbench.auth import WorkspaceAuthError, resolve_workspace_auth

    try:
        auth = resolve_workspace_auth(targets.settings)
    except WorkspaceAuthError as exc:
        return dataclasses.replace(targets, auth_problem=exc.message)
    return dataclasses.replace(targets, workspace_auth=auth, auth_problem=None)


def client_run(job: WorkerJob, client: int, gate: Gate | None) -> BenchmarkRun:
    """The run of client `client` of `job`, as a worker (or a Spark task) executes it, with
    the app's writer registry."""
    from bench.runner import BenchmarkRun
    from workloads.registry import WorkloadRegistry
    from writers import WRITERS

    WRITERS.clear()
    WRITERS.update(job.writers)
    run = BenchmarkRun(
        job.config,
        run_id=job.run_id,
        environment=job.environment,
        workloads=WorkloadRegistry([job.workload]),
        client=client,
        gate=gate,
    )
    run.started_at = job.started_at
    run.error = job.error
    return run


async def execute_client(
    job: WorkerJob, run: BenchmarkRun, on_progress: ProgressCallback | None = None
) -> RunResult:
    """Run it on its own writers (built from the job's targets), closed at the end."""
    targets = await asyncio.to_thread(with_workspace_auth, job.targets)
    source = _Source(targets, job.unresolved)
    try:
        return await run.execute(source, on_progress)
    finally:
        await source.writers.close()


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    job: WorkerJob = await read_message(reader)
    go: dict[str, asyncio.Event] = {}

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode(message))

    async def gate(name: str) -> None:
        send({"type": "ready", "writer": name})
        started = go.setdefault(name, asyncio.Event())
        cancelled = asyncio.create_task(run.cancel_event.wait())
        released = asyncio.create_task(started.wait())
        await asyncio.wait({cancelled, released}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        released.cancel()

    run = client_run(job, job.client, gate if job.gated else None)

    async def control() -> None:
        while True:
            try:
                message = await read_message(reader)
            except EOFError:
                run.cancel()  # the app is gone: stop, nobody is watching
                return
            if message.get("type") == "cancel":
                run.cancel()
            elif message.get("type") == "go":
                go.setdefault(message["writer"], asyncio.Event()).set()

    def on_progress(progress: dict[str, Any]) -> None:
        send({"type": "progress", "progress": progress, "result": run.result().model_dump_json()})

    send({"type": "started", "pid": os.getpid(), "result": run.result().model_dump_json()})
    listener = asyncio.create_task(control())
    result = await execute_client(job, run, on_progress)
    send({"type": "result", "result": result.model_dump_json()})
    await writer.drain()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    writer.close()
    log.info("benchmark_worker_finished", run_id=run.id, status=result.status)


def serve_on_socket(
    argv: list[str], serve: Callable[[socket.socket], Coroutine[Any, Any, None]]
) -> int:
    """A worker's main: logging configured, then `serve` on the socket whose descriptor the
    app passed as the first argument."""
    from dwbench.log import configure_logging

    configure_logging()
    sock = socket.socket(fileno=int(argv[1]))
    asyncio.run(serve(sock))
    return 0


def main(argv: list[str]) -> int:
    return serve_on_socket(argv, _serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
