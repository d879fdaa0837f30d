"""Running `python -m emulator` as a child process and learning where it listens.

Used by the app in local mode, by the CLI and by the test fixtures: start the process,
read its one JSON line of endpoints, and stop it with SIGTERM (or SIGKILL, to test
crash recovery).

One data directory has one stack. A running stack holds an exclusive `flock` on
`OWNER_FILE` in its data directory for as long as it lives (the kernel drops it when the
process dies, however it dies) and writes its pid there, then its endpoints once it is
ready. The file holds the token, so only the user may read it (0600). Another process on
the same machine finds the running stack with `find_running_stack` instead of starting a
second one on the same data, which would take the first one's live Postgres for an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from emulator.child_env import stack_environment

log = structlog.get_logger(__name__)

# The directory that holds the `emulator` package (the checkout, or site-packages when
# installed): the child imports the same copy of the code as its parent.
_ROOT = Path(__file__).resolve().parent.parent


OWNER_FILE = "local-stack.owner.json"
# `python -m emulator` exits with this when another live stack owns its data directory.
EXIT_IN_USE = 3
_ACQUIRE_ATTEMPTS = 20  # a reader holds the lock shared for a moment: try again briefly
# The stack stops itself (cleanly, stopping its Postgres) when the process of this pid is no
# longer its parent: an app that dies leaves no stack, and so no Postgres, behind.
PARENT_PID_ENV = "LOCAL_STACK_PARENT_PID"


class LocalStackStartError(RuntimeError):
    pass


class LocalStackInUseError(LocalStackStartError):
    """Another live process owns the data directory's stack; nothing of it was touched."""

    def __init__(self, data_dir: Path, pid: int | None, detail: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.pid = pid
        owner = f"process {pid}" if pid else "another process"
        super().__init__(
            f"the local stack in {self.data_dir} belongs to {owner}, which is still "
            f"running{detail}; stop that process, or use another DATA_DIR, or set "
            "LOCAL_STACK_URL and LOCAL_STACK_TOKEN to use a stack that runs elsewhere"
        )


@dataclass(frozen=True)
class RunningStack:
    """A live stack found in a data directory: its pid and endpoints (with the token)."""

    pid: int
    endpoints: dict[str, Any] = field(repr=False)


class StackOwnership:
    """A stack's claim on its data directory, held from start to stop (see the module doc)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / OWNER_FILE
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Claim the directory; returns the pid of a dead earlier owner taken over, if any.

        Raises LocalStackInUseError, touching nothing, when a live process owns it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for attempt in range(_ACQUIRE_ATTEMPTS):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _ACQUIRE_ATTEMPTS - 1:
                        raise LocalStackInUseError(
                            self.path.parent, _read_owner(fd).get("pid")
                        ) from None
                    time.sleep(0.05)
            os.fchmod(fd, 0o600)  # also when an older file was made with other modes
            previous = _read_owner(fd).get("pid")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write({"pid": os.getpid()})
        return previous if isinstance(previous, int) else None

    def publish(self, endpoints: dict[str, Any]) -> None:
        """Say where the stack listens, for other processes of the same user."""
        self._write({"pid": os.getpid(), "endpoints": endpoints})

    def release(self) -> None:
        # Emptied, not removed: a process that opened the file meanwhile would lock a
        # removed file while a third one locks a new one.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def _write(self, doc: dict[str, Any]) -> None:
        assert self._fd is not None
        data = json.dumps(doc).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
    except (OSError, ValueError):  # being rewritten this very moment, or not ours
        return {}
    return doc if isinstance(doc, dict) else {}


def find_running_stack(data_dir: Path, *, wait_s: float = 30.0) -> RunningStack | None:
    """The live stack that owns `data_dir`, else None (no owner, or a dead one's file).

    An owner still starting is waited for up to `wait_s`; raises LocalStackInUseError when
    it does not become ready, and LocalStackStartError when the file cannot be read (a
    stack of another user)."""
    path = Path(data_dir) / OWNER_FILE
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LocalStackStartError(f"cannot read the local stack's owner file: {exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False  # nobody holds it: the owner is gone (closing drops ours)
            except BlockingIOError:
                held = True
            doc = _read_owner(fd)
        finally:
            os.close(fd)
        if not held:
            return None
        pid, endpoints = doc.get("pid"), doc.get("endpoints")
        if isinstance(pid, int) and isinstance(endpoints, dict):
            return RunningStack(pid, endpoints)
        if time.monotonic() >= deadline:
            raise LocalStackInUseError(
                Path(data_dir), pid if isinstance(pid, int) else None, ", but is not ready"
            )
        time.sleep(0.1)


def owner_pid(data_dir: Path) -> int | None:
    """The pid the owner file names (live or not), for messages."""
    try:
        fd = os.open(Path(data_dir) / OWNER_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _read_owner(fd).get("pid")
    finally:
        os.close(fd)
    return pid if isinstance(pid, int) else None


class LocalStackProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        token: str | None = None,
        args: list[str] | None = None,
        log_path: Path | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        """`exit_with_parent`: the stack stops itself when this process dies (the app's
        stack; a test's stack that outlives a SIGKILL of its parent would not)."""
        self.data_dir = Path(data_dir)
        self.token = token
        self.args = list(args or [])
        self.log_path = log_path or self.data_dir / "local-stack.log"
        self.exit_with_parent = exit_with_parent
        self.endpoints: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        # Set by stop(): the exit that follows is wanted, a supervisor does not restart it.
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def poll(self) -> int | None:
        """The exit code once the process ended (reaped: no zombie is left), else None."""
        return self._proc.poll() if self._proc is not None else None

    def restart(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Start it again after it died: the same data, token and (when free) ports, so
        clients keep their endpoints. Raises LocalStackStartError when it does not start."""
        if self._proc is not None and self._proc.poll() is None:
            raise LocalStackStartError(f"the local stack (pid {self._proc.pid}) is still running")
        if self.endpoints:
            self.args = ports_args(self.endpoints) + _without_ports(self.args)
        return self.start(timeout_s)

    def start(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Start the stack and wait for its endpoints line."""
        self.stopping = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = stack_environment()  # an allowlist: no workspace or app secrets reach it
        if self.token:
            env["LOCAL_STACK_TOKEN"] = self.token  # not on the command line, where ps shows it
        if self.exit_with_parent:
            env[PARENT_PID_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        data_dir = str(self.data_dir.resolve())  # the child runs in _ROOT, not in our cwd
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "emulator", "--data-dir", data_dir, *self.args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            cwd=_ROOT,
            # Its own session: a Ctrl-C at the terminal goes to the parent, which decides
            # when to stop the stack (after committing what it holds), not to the stack.
            start_new_session=True,
        )
        log_file.close()
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if self._proc.poll() is not None or remaining <= 0:
                self.kill()
                if self._proc.returncode == EXIT_IN_USE:
                    raise LocalStackInUseError(self.data_dir, owner_pid(self.data_dir))
                raise LocalStackStartError(
                    f"the local stack did not start ({self._why()}); see {self.log_path}"
                )
            ready, _, _ = select.select([self._proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    continue
                line += chunk
        self.endpoints = json.loads(line.decode())
        return self.endpoints

    def _why(self) -> str:
        if self._proc is None or self._proc.returncode is None:
            return "timed out waiting for its endpoints"
        tail = ""
        if self.log_path.exists():
            tail = self.log_path.read_text(errors="replace")[-2000:]
        return f"exit code {self._proc.returncode}: {tail.strip()}"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then wait; returns the exit code."""
        self.stopping = True
        if self._proc is None or self._proc.poll() is not None:
            return self._proc.returncode if self._proc else None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the stack's data is concerned."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> LocalStackProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PORT_OPTIONS = (
    "--zerobus-port",
    "--api-port",
    "--zerobus-rest-port",
    "--mqtt-port",
    "--kafka-port",
    "--postgres-port",
)


def ports_args(endpoints: dict[str, Any]) -> list[str]:
    """The arguments that start a stack on the ports `endpoints` name."""
    args = [
        "--zerobus-port",
        str(urlsplit(endpoints["zerobus_endpoint"]).port),
        "--api-port",
        str(urlsplit(endpoints["api_url"]).port),
    ]
    if endpoints.get("zerobus_rest_url"):
        args += ["--zerobus-rest-port", str(urlsplit(endpoints["zerobus_rest_url"]).port)]
    if endpoints.get("mqtt_endpoint"):
        args += ["--mqtt-port", endpoints["mqtt_endpoint"].rsplit(":", 1)[1]]
    if endpoints.get("kafka_bootstrap"):
        args += ["--kafka-port", endpoints["kafka_bootstrap"].rsplit(":", 1)[1]]
    if endpoints.get("postgres_dsn"):
        args += ["--postgres-port", str(urlsplit(endpoints["postgres_dsn"]).port)]
    else:
        args.append("--no-postgres")
    return args


def _without_ports(args: list[str]) -> list[str]:
    """`args` less the port options (and --no-postgres) that `ports_args` sets again."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _PORT_OPTIONS:
            skip = True
        elif arg != "--no-postgres" and not arg.startswith(tuple(f"{o}=" for o in _PORT_OPTIONS)):
            kept.append(arg)
    return kept


def shortened(text: str, head: int = 150, tail: int = 350) -> str:
    """A long error's start (what failed) and end (the log's last lines: why)."""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]} … {text[-tail:]}"


def describe_exit(code: int) -> str:
    """An exit code as words: 'killed by SIGKILL', 'exited with code 1'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Backoff:
    """Delays between restart attempts: first_s, then doubling up to max_s."""

    first_s: float = 0.25
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """The wait before attempt `attempt` (1 = the first restart: none)."""
        if attempt <= 1:
            return 0.0
        return float(min(self.max_s, self.first_s * 2 ** (attempt - 2)))


@dataclass
class SupervisorStatus:
    """What a supervisor says about its process: `state` is running, restarting (it died
    and a restart is under way), down (restarts failed so far; more follow, with backoff),
    shared (another process runs the stack now) or stopped; `reason` says why when not
    running."""

    state: str = "running"
    reason: str | None = None
    pid: int | None = None
    restarts: int = 0
    attempt: int = 0
    last_exit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "pid": self.pid,
            "restarts": self.restarts,
            "attempt": self.attempt,
            "last_exit": self.last_exit,
        }


Sleep = Callable[[float], Awaitable[None]]


class StackSupervisor:
    """Watches a started LocalStackProcess and restarts it when it dies.

    Every `poll_interval_s` the process is polled (which reaps it: no zombie stays). An
    exit that `stop()` did not ask for is a crash: the stack is started again on the same
    data, token and ports (its clients keep their endpoints; the new stack takes the dead
    one's Postgres over), with `backoff` between failed attempts, for as long as it takes.
    `sleep` is injectable so that tests need not wait for real delays.
    """

    def __init__(
        self,
        process: LocalStackProcess,
        *,
        poll_interval_s: float = 0.2,
        backoff: Backoff | None = None,
        start_timeout_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        on_shared: Callable[[], None] | None = None,
    ) -> None:
        """`on_shared`: called when, instead of a restart, another live process turned out
        to own the data directory's stack (it took over first: the CLI that shared ours);
        watching ends then, and state says shared."""
        self.process = process
        self._on_shared = on_shared
        self.poll_interval_s = poll_interval_s
        self.backoff = backoff or Backoff()
        self.start_timeout_s = start_timeout_s
        self._sleep = sleep
        self.status = SupervisorStatus(pid=process.pid)
        self._task: asyncio.Task[None] | None = None
        self._restarted = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="local-stack-supervisor")

    async def stop(self) -> None:
        """Stop watching; a restart under way finishes first (so that the caller's stop of
        the process finds the new one and stops it)."""
        self.process.stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.status.state, self.status.reason = "stopped", None

    async def wait_restarted(self) -> None:
        """Return after the next successful restart (for tests and benchmarks)."""
        self._restarted.clear()
        await self._restarted.wait()

    async def _watch(self) -> None:
        while True:
            await self._sleep(self.poll_interval_s)
            code = self.process.poll()
            if code is None or self.process.stopping:
                continue
            if not await self._recover(code):
                return

    async def _recover(self, code: int) -> bool:
        """Restart until it runs (True) or another process owns the stack (False)."""
        status = self.status
        status.last_exit = describe_exit(code)
        status.state = "restarting"
        status.reason = f"the local stack (pid {status.pid}) {status.last_exit}; restarting it"
        status.attempt = 0
        log.error("local_stack_died", pid=status.pid, exit=status.last_exit)
        while not self.process.stopping:
            status.attempt += 1
            delay = self.backoff.delay(status.attempt)
            if delay:
                await self._sleep(delay)
            # Shielded: a stop() that comes meanwhile waits for the start to end, then
            # stops what it started (see stop()).
            started = asyncio.ensure_future(
                asyncio.to_thread(self.process.restart, self.start_timeout_s)
            )
            try:
                await asyncio.shield(started)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await started
                raise
            except LocalStackInUseError as exc:
                # Another process (sharing our stack) started its own on the same data and
                # ports first: the clients' endpoints are served; ours is not needed.
                status.state, status.reason, status.pid = "shared", None, exc.pid
                log.warning("local_stack_taken_over_by_another", pid=exc.pid)
                if self._on_shared is not None:
                    self._on_shared()
                return False
            except LocalStackStartError as exc:
                status.state = "down"
                status.reason = (
                    f"the local stack {status.last_exit}, and restart attempt "
                    f"{status.attempt} failed: {shortened(str(exc))}; trying again"
                )
                log.error("local_stack_restart_failed", attempt=status.attempt, reason=str(exc))
                continue
            status.restarts += 1
            status.state, status.reason, status.pid = "running", None, self.process.pid
            log.warning(
                "local_stack_restarted",
                pid=self.process.pid,
                attempt=status.attempt,
                restarts=status.restarts,
            )
            self._restarted.set()
            return True
        return True
