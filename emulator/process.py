"""Running `python -m emulator` as a child process and learning where it listens.

Used by the app in local mode, by the CLI and by the test fixtures: start the process,
read its one JSON line of endpoints, and stop it with SIGTERM (or SIGKILL, to test
crash recovery).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The directory that holds the `emulator` package (the checkout, or site-packages when
# installed): the child imports the same copy of the code as its parent.
_ROOT = Path(__file__).resolve().parent.parent


class LocalStackStartError(RuntimeError):
    pass


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
        env = dict(os.environ)
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
