"""One-time job runs and secret scopes: what `databricks-sdk`'s `w.jobs.submit` and
`w.secrets` call, for the `databricks-job` executor (bench.databricks_job).

    POST /api/2.0/secrets/scopes/create  {"scope"}
    POST /api/2.0/secrets/put            {"scope", "key", "string_value"}
    GET  /api/2.0/secrets/list?scope=    {"secrets": [{"key", "last_updated_timestamp"}]}
    POST /api/2.2/jobs/runs/submit       {"run_name", "tasks": [one python_wheel_task]}
    GET  /api/2.2/jobs/runs/get?run_id=  the run: state, status, tasks, times
    POST /api/2.2/jobs/runs/cancel       {"run_id"}

A submitted run's task is a `python_wheel_task` whose library is a wheel in a UC Volume, on
a `new_cluster` (or an `existing_cluster_id`). The local stack stands in for the cluster as
far as one machine can: it opens the wheel, finds the task's entry point in the wheel's own
`entry_points.txt` (else `package_name.entry_point()`, as the service falls back), unpacks
the wheel and runs the entry point in a process of its own with the wheel's code first on
its import path, the parameters as its arguments, the cluster's `spark_env_vars` (secret
references `{{secrets/<scope>/<key>}}` resolved from the scopes here, as the cluster does when
it starts) and Spark's master set to `local[num_workers]` through `PYSPARK_SUBMIT_ARGS`. Its
environment is the local stack children's allowlist besides: no secret of the stack's.

Runs go PENDING -> RUNNING -> TERMINATED with SUCCESS (exit 0), FAILED (the last line the
task printed) or CANCELED (a cancel: SIGTERM to its process group, SIGKILL after a grace).
Submits are refused (501) unless the stack was started with `--jobs`: a run executes the code
it names, so with job runs on, the token opens the host, not only the catalog (the tests
start their stack with it; `make run`'s stack has it off). Secrets live in memory: a
restarted stack has none. Nothing here runs Spark on more than
this machine; the figures of a run here are those of `local[N]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
import time
import zipfile
from configparser import ConfigParser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request

from emulator.child_env import allowlisted_environment
from emulator.oauth import OAuthIssuer
from emulator.volumes import FilesApiError, Volumes, invalid, workspace_authorizer

log = structlog.get_logger(__name__)

CANCEL_GRACE_S = 10.0
_SECRET_REF = re.compile(r"\{\{secrets/([^/{}]+)/([^/{}]+)\}\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MAX_SECRET_BYTES = 128 * 1024  # the service's limit per secret
# What a task's environment keeps from the stack's besides the allowlist: Java and Spark.
_TASK_PREFIXES = ("PYTHON", "JAVA_", "SPARK_", "COVERAGE_")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{name} must be a non-empty string")
    return value


class Secrets:
    """Secret scopes and their keys, in memory."""

    def __init__(self) -> None:
        self.scopes: dict[str, dict[str, tuple[str, int]]] = {}

    def create_scope(self, scope: str) -> None:
        if not _NAME.match(scope):
            raise invalid(f"the scope name {scope!r} must be letters, digits, '-', '_' or '.'")
        if scope in self.scopes:
            raise FilesApiError(400, "RESOURCE_ALREADY_EXISTS", f"Scope {scope} already exists!")
        self.scopes[scope] = {}

    def put(self, scope: str, key: str, value: str) -> None:
        if not _NAME.match(key):
            raise invalid(f"the key {key!r} must be letters, digits, '-', '_' or '.'")
        if len(value.encode()) > _MAX_SECRET_BYTES:
            raise invalid(f"a secret holds up to {_MAX_SECRET_BYTES} bytes")
        self._scope(scope)[key] = (value, int(time.time() * 1000))

    def keys(self, scope: str) -> list[dict[str, Any]]:
        return [
            {"key": k, "last_updated_timestamp": t}
            for k, (_, t) in sorted(self._scope(scope).items())
        ]

    def resolve(self, text: str) -> str:
        """`text` with each {{secrets/scope/key}} replaced by the secret's value."""

        def value(match: re.Match[str]) -> str:
            scope, key = match.group(1), match.group(2)
            found = self.scopes.get(scope, {}).get(key)
            if found is None:
                raise invalid(f"Secret does not exist with scope: {scope} and key: {key}")
            return found[0]

        return _SECRET_REF.sub(value, text)

    def _scope(self, scope: str) -> dict[str, tuple[str, int]]:
        found = self.scopes.get(scope)
        if found is None:
            raise FilesApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Scope {scope} does not exist!")
        return found


@dataclass
class _Run:
    run_id: int
    name: str
    task_key: str
    workers: int
    start_ms: int
    life_cycle: str = "PENDING"
    result: str | None = None
    message: str = ""
    end_ms: int = 0
    process: asyncio.subprocess.Process | None = None
    cancelled: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def describe(self, base_url: str) -> dict[str, Any]:
        state: dict[str, Any] = {"life_cycle_state": self.life_cycle, "state_message": self.message}
        if self.result is not None:
            state["result_state"] = self.result
        terminated = self.life_cycle == "TERMINATED"
        status: dict[str, Any] = {"state": "TERMINATED" if terminated else self.life_cycle}
        if terminated:
            status["termination_details"] = {
                "code": {"SUCCESS": "SUCCESS", "CANCELED": "CANCELED"}.get(
                    self.result or "", "RUN_EXECUTION_ERROR"
                ),
                "message": self.message,
            }
        page = f"{base_url}/jobs/runs/{self.run_id}"
        return {
            "run_id": self.run_id,
            "run_name": self.name,
            "run_type": "SUBMIT_RUN",
            "state": state,
            "status": status,
            "start_time": self.start_ms,
            "end_time": self.end_ms,
            "run_page_url": page,
            "tasks": [
                {
                    "run_id": self.run_id + 1,
                    "task_key": self.task_key,
                    "state": state,
                    "status": status,
                    "start_time": self.start_ms,
                    "end_time": self.end_ms,
                    "run_page_url": page,
                }
            ],
        }


@dataclass
class _Launch:
    """What one task runs: its entry point, parameters, environment and master."""

    module: str
    function: str
    parameters: list[str]
    env: dict[str, str]
    wheel: Path


class JobRuns:
    """One-time runs of python wheel tasks, each a local process (see the module)."""

    def __init__(
        self, data_dir: Path, volumes: Volumes, secrets: Secrets, *, enabled: bool = False
    ) -> None:
        self.enabled = enabled
        self.root = data_dir / "jobs"
        self.volumes = volumes
        self.secrets = secrets
        self.runs: dict[int, _Run] = {}
        self._ids = itertools.count(int(time.time()) % 100_000 * 1000 + 1, 2)

    def submit(self, body: dict[str, Any]) -> int:
        if not self.enabled:
            raise FilesApiError(
                501,
                "NOT_IMPLEMENTED",
                "This local stack runs no jobs: a run executes the code of the wheel it names "
                "on this machine, so job runs are served only by a stack started with --jobs.",
            )
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], dict):
            raise invalid("the local stack runs submits of exactly one task (tasks: [one])")
        task = tasks[0]
        key = _text(task, "task_key")
        launch, workers = self._launch(task)
        run = _Run(
            run_id=next(self._ids),
            name=str(body.get("run_name") or "Untitled"),
            task_key=key,
            workers=workers,
            start_ms=int(time.time() * 1000),
        )
        self.runs[run.run_id] = run
        run.task = asyncio.create_task(self._execute(run, launch), name=f"job-run-{run.run_id}")
        log.info("job_run_submitted", run_id=run.run_id, entry=f"{launch.module}:{launch.function}")
        return run.run_id

    def get(self, run_id: Any) -> _Run:
        try:
            found = self.runs.get(int(run_id))
        except (TypeError, ValueError):
            raise invalid(f"run_id must be an integer, got {run_id!r}") from None
        if found is None:
            raise FilesApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} does not exist.")
        return found

    def cancel(self, run_id: Any) -> None:
        run = self.get(run_id)
        if run.life_cycle == "TERMINATED":
            return
        run.cancelled = True
        run.life_cycle = "TERMINATING"
        if run.process is not None and run.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGTERM)

    async def close(self) -> None:
        for run in self.runs.values():
            if run.life_cycle != "TERMINATED":
                self.cancel(run.run_id)
        pending = [r.task for r in self.runs.values() if r.task is not None]
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, CANCEL_GRACE_S + 5)

    # -- the task ----------------------------------------------------------------------------

    def _launch(self, task: dict[str, Any]) -> tuple[_Launch, int]:
        wheel_task = task.get("python_wheel_task")
        if not isinstance(wheel_task, dict):
            raise invalid(
                "the local stack runs python_wheel_task tasks only (the task has "
                f"{sorted(k for k in task if k.endswith('_task'))})"
            )
        package = _text(wheel_task, "package_name")
        entry = _text(wheel_task, "entry_point")
        parameters = wheel_task.get("parameters") or []
        if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
            raise invalid("python_wheel_task.parameters must be a list of strings")
        wheels = [
            lib["whl"]
            for lib in task.get("libraries") or []
            if isinstance(lib, dict) and "whl" in lib
        ]
        if len(wheels) != 1 or not isinstance(wheels[0], str):
            raise invalid('the task needs exactly one library {"whl": "/Volumes/..."}')
        wheel = self.volumes.file_path(wheels[0])
        if not wheel.is_file():
            raise invalid(f"Library {wheels[0]} does not exist.")
        cluster = task.get("new_cluster")
        if cluster is None and isinstance(task.get("existing_cluster_id"), str):
            cluster = {}
        if not isinstance(cluster, dict):
            raise invalid("the task needs new_cluster or existing_cluster_id")
        workers = cluster.get("num_workers", 1)
        if not isinstance(workers, int) or not 0 <= workers <= 64:
            raise invalid("new_cluster.num_workers must be an integer 0-64 here")
        env_vars = cluster.get("spark_env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise invalid("new_cluster.spark_env_vars must map names to strings")
        # Resolved as the cluster starts: a missing secret fails the submit here.
        resolved = {k: self.secrets.resolve(v) for k, v in env_vars.items()}
        module, function = _entry_point(wheel, package, entry)
        slots = max(workers, 1)
        env = allowlisted_environment(_TASK_PREFIXES)  # not the stack's LOCAL_STACK_* token
        env.update(resolved)
        env["PYSPARK_PYTHON"] = sys.executable
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
        env["PYSPARK_SUBMIT_ARGS"] = (
            f"--master local[{slots}] --conf spark.ui.enabled=false "
            "--conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 "
            "pyspark-shell"
        )
        return _Launch(module, function, list(parameters), env, wheel), slots

    async def _execute(self, run: _Run, launch: _Launch) -> None:
        where = self.root / str(run.run_id)
        log_path = where / "task.log"
        try:
            lib = where / "lib"
            await asyncio.to_thread(_unpack, launch.wheel, lib)
            env = {**launch.env, "PYTHONPATH": str(lib)}
            if run.cancelled:
                raise asyncio.CancelledError
            run.life_cycle = "RUNNING"
            out = await asyncio.to_thread(open, log_path, "wb")
            with out:
                run.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    "import sys; from importlib import import_module as m; "
                    f"sys.argv = [{launch.function!r}, *sys.argv[1:]]; "
                    f"sys.exit(getattr(m({launch.module!r}), {launch.function!r})())",
                    *launch.parameters,
                    env=env,
                    cwd=where,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
                code = await self._wait(run, run.process)
            if run.cancelled:
                run.result, run.message = "CANCELED", "Run cancelled."
            elif code == 0:
                run.result, run.message = "SUCCESS", ""
            else:
                run.result = "FAILED"
                run.message = f"Workload failed (exit code {code}): {_last_line(log_path)}"
        except asyncio.CancelledError:
            run.result, run.message = "CANCELED", "Run cancelled."
        except Exception as exc:  # the wheel could not be unpacked, the process not started
            log.exception("job_run_failed", run_id=run.run_id)
            run.result, run.message = "INTERNAL_ERROR", f"the run could not start: {exc}"
        finally:
            run.life_cycle = "TERMINATED"
            run.end_ms = int(time.time() * 1000)
            log.info("job_run_finished", run_id=run.run_id, result=run.result)

    async def _wait(self, run: _Run, process: asyncio.subprocess.Process) -> int:
        """The task's exit code; after a cancel (SIGTERM), SIGKILL once the grace is over."""
        killer: asyncio.TimerHandle | None = None
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(process.wait()), 0.5)
                except TimeoutError:
                    if run.cancelled and killer is None:
                        loop = asyncio.get_running_loop()
                        killer = loop.call_later(CANCEL_GRACE_S, _kill_group, process)
        finally:
            if killer is not None:
                killer.cancel()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _entry_point(wheel: Path, package: str, entry: str) -> tuple[str, str]:
    """(module, function) of the task: the wheel's console script or entry point named
    `entry`, else `package.entry`."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
            text = zf.read(names[0]).decode() if names else ""
    except (zipfile.BadZipFile, OSError) as exc:
        raise invalid(f"the library {wheel.name} is not a wheel: {exc}") from None
    parser = ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    for section in parser.sections():
        if entry in parser[section]:
            target = parser[section][entry].split("[")[0].strip()
            module, _, function = target.partition(":")
            return module.strip(), function.strip()
    return package, entry


def _unpack(wheel: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            target = (dest / member).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ValueError(f"the wheel's member {member!r} leaves its directory")
        zf.extractall(dest)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no output"
    kept = [line for line in lines if line]
    return kept[-1][:500] if kept else "no output"


def jobs_router(runs: JobRuns, token: str, oauth: OAuthIssuer | None = None) -> APIRouter:
    """The Jobs runs and Secrets APIs over `runs`, guarded as the Files API is."""
    router = APIRouter(dependencies=[Depends(workspace_authorizer(token, oauth))])

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise invalid("the body must be JSON") from None
        if not isinstance(body, dict):
            raise invalid("the body must be a JSON object")
        return body

    @router.post("/api/2.0/secrets/scopes/create")
    async def create_scope(request: Request) -> dict[str, Any]:
        runs.secrets.create_scope(_text(await body_of(request), "scope"))
        return {}

    @router.post("/api/2.0/secrets/put")
    async def put_secret(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        runs.secrets.put(_text(body, "scope"), _text(body, "key"), _text(body, "string_value"))
        return {}

    @router.get("/api/2.0/secrets/list")
    async def list_secrets(scope: str) -> dict[str, Any]:
        return {"secrets": runs.secrets.keys(scope)}

    @router.post("/api/2.2/jobs/runs/submit")
    async def submit(request: Request) -> dict[str, Any]:
        return {"run_id": runs.submit(await body_of(request))}

    @router.get("/api/2.2/jobs/runs/get")
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        return runs.get(run_id).describe(str(request.base_url).rstrip("/"))

    @router.post("/api/2.2/jobs/runs/cancel")
    async def cancel_run(request: Request) -> dict[str, Any]:
        runs.cancel((await body_of(request)).get("run_id"))
        return {}

    return router
