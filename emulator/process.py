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

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.child_env import stack_environment

# The directory that holds the `emulator` package (the checkout, or site-packages when
# installed): the child imports the same copy of the code as its parent.
_ROOT = Path(__file__).resolve().parent.parent


OWNER_FILE = "local-stack.owner.json"
# `python -m emulator` exits with this when another live stack owns its data directory.
EXIT_IN_USE = 3
_ACQUIRE_ATTEMPTS = 20  # a reader holds the lock shared for a moment: try again briefly


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.token = token
        self.args = list(args or [])
        self.log_path = log_path or self.data_dir / "local-stack.log"
        self.endpoints: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Start the stack and wait for its endpoints line."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = stack_environment()  # an allowlist: no workspace or app secrets reach it
        if self.token:
            env["LOCAL_STACK_TOKEN"] = self.token  # not on the command line, where ps shows it
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
