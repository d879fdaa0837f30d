"""The `databricks-job` executor: a run's clients as the Spark tasks of a one-time job run.

`dwbench run --executor databricks-job --clients 16` (databricks mode) does what the
`spark` executor does on this machine (bench.spark_driver), on a job cluster of the
workspace instead:

1. the project's wheel (DWBENCH_JOB_WHEEL, e.g. the one `databricks bundle deploy` built, or
   one built here from the source) and the run's spec go to a UC Volume
   (DWBENCH_JOB_VOLUME) with the Files API. The spec is JSON with no secret in it: the
   run's id, config, workload name and phases;
2. `w.jobs.submit` starts a one-time run of one `python_wheel_task`
   (`dwbench-job-task --spec <path>`) on a new dedicated-access cluster (RDD barrier mode, the
   clients' start barrier, does not run on serverless or standard access) of
   `DWBENCH_JOB_NUM_WORKERS` workers (default: one per client), or on
   DWBENCH_JOB_EXISTING_CLUSTER_ID. The cluster's environment (`spark_env_vars`) carries
   the settings this process has in its environment (the workspace host, the writers'
   endpoints and tables), each secret one as a reference `{{secrets/<scope>/<NAME>}}` to
   the key of its own name in DWBENCH_JOB_SECRET_SCOPE, which the cluster resolves as it
   starts. Keys missing from the scope refuse the run before anything is submitted;
3. the task (`task_main`, on the cluster's driver) reads its settings and credentials from
   that environment as the app does, reads the spec, and runs each phase as one barrier job
   of M tasks (bench.spark_driver.run_phases), writing each phase's client results to
   `<run dir>/results/phase-<i>.json` in the Volume (`JobSpec.result_path`);
4. this side polls the run (`w.jobs.get_run`) and the results, and merges the clients'
   results as the other executors do (bench.clients). Cancel is `w.jobs.cancel_run`; the
   phases without results are reported with how the run ended.

Live progress: each task uploads its client's progress once a second to `<run dir>/progress/`
(from a thread of its own), which the coordinator reads as it polls. Only the built-in workloads run
this way (the task rebuilds the workload from its name and its own settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import structlog
from pydantic import AliasChoices, AliasPath, BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.config import BenchmarkConfig
from bench.spark_driver import ProgressSink, SparkJob, SparkRun, stop_task
from bench.worker_process import WorkerJob, make_job
from writers.base import Targets

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TASK_ENTRY_POINT = "dwbench-job-task"
PACKAGE_NAME = "direct-write-bench"
# What the wheel is built from: the source tree without these.
_NOT_CODE = {"tests", "build", "dist", "results", "test-artifacts", "node_modules", "docs"}
# Settings of this process that do not travel to the cluster: where this process keeps its
# data and listens, the local stack, this executor's own, and a config file's profile (there
# is no such file on the cluster: its credentials come from the secret scope).
_NOT_FORWARDED = {
    "APP_MODE",
    "DATA_DIR",
    "HOST",
    "DATABRICKS_APP_PORT",
    "LOCAL_STACK_URL",
    "LOCAL_STACK_TOKEN",
    "DATABRICKS_CONFIG_PROFILE",
    "DATABRICKS_CONFIG_FILE",
}
# Credentials the task may sign in with, whichever of them the scope holds.
_AUTH_KEYS = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET")
_TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")
# Polls of the run in a row that may fail (each after the SDK's own retries) before the run
# is cancelled and reported failed with the last reason.
MAX_POLL_FAILURES = 5
# How long a cancelled run is followed for the job run to end (within the app's 5 s grace).
CANCEL_WAIT_S = 3.0


class JobSettings(BaseSettings):
    """DWBENCH_JOB_*: where and how the databricks-job executor runs its clients."""

    model_config = SettingsConfigDict(env_prefix="DWBENCH_JOB_", extra="ignore")

    # A UC Volume path (/Volumes/<catalog>/<schema>/<volume>[/dir]) for the wheel, the spec
    # and the results.
    volume: str | None = None
    # The project's wheel in the workspace (a Volume or workspace file); built here if unset.
    wheel: str | None = None
    existing_cluster_id: str | None = None
    spark_version: str = "16.4.x-scala2.12"
    node_type_id: str | None = None
    num_workers: int | None = Field(default=None, ge=0)
    secret_scope: str | None = None
    poll_interval_s: float = Field(default=5.0, gt=0)
    timeout_s: int = Field(default=3600, ge=60)


class JobSpec(BaseModel):
    """What the task runs, as it is stored in the Volume: nothing secret."""

    run_id: str
    started_at: str
    config: BenchmarkConfig
    workload: str
    delta_table: str
    environment: dict[str, Any]
    phases: list[list[str]]
    clients: int
    error: str | None = None
    run_dir: str  # in the Volume: spec.json, results/ and progress/

    @property
    def progress_dir(self) -> str:
        return f"{self.run_dir}/progress"

    def result_path(self, phase: int) -> str:
        """Where the task puts phase `phase`'s client results."""
        return f"{self.run_dir}/results/phase-{phase}.json"


class JobProblem(Exception):
    """Why the run cannot be submitted, in words for the user."""


# -- the cluster's environment ---------------------------------------------------------------


def env_names(cls: type[BaseSettings]) -> Iterable[tuple[str, str, FieldInfo]]:
    """(environment variable, field name, field) for each name a field of a settings class
    reads: its prefix and name, or its alias (each of an alias's choices)."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    for name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        if alias is None:
            choices: list[Any] = [f"{prefix}{name}"]
        elif isinstance(alias, AliasChoices):
            choices = list(alias.choices)
        else:
            choices = [alias]
        for choice in choices:
            env = choice.path[0] if isinstance(choice, AliasPath) else choice
            yield str(env).upper(), name, info


def is_secret(info: FieldInfo) -> bool:
    return SecretStr in (info.annotation, *typing.get_args(info.annotation))


def task_environment(
    writers: list[str], scope: str | None, scope_keys: set[str], host: str,
    environ: dict[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The cluster's spark_env_vars for these writers: this process's settings as values,
    its secrets and the scope's credentials as references into `scope`. JobProblem when a
    secret is not in the scope, or the task would have no credentials."""
    from dwbench.settings import Settings
    from writers import writer_class
    from writers.lakebase import LakebaseSettings
    from writers.sql import SqlSettings
    from writers.zerobus import ZerobusSettings

    source = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    # The settings the run uses (each secret one must be in the scope), and those the task
    # reads besides to find its tables and endpoints, as the app does (values only).
    used: list[type[BaseSettings]] = [Settings]
    for name in writers:
        settings_class = writer_class(name).settings_class
        if settings_class not in used:
            used.append(settings_class)
    context = [c for c in (ZerobusSettings, LakebaseSettings, SqlSettings) if c not in used]
    env = {"APP_MODE": "databricks", "DATABRICKS_HOST": host}
    missing: list[str] = []
    for cls in [*used, *context]:
        for var, _name, info in env_names(cls):
            if var in _NOT_FORWARDED or var in env or var not in source:
                continue
            if not is_secret(info):
                env[var] = source[var]
            elif var in scope_keys:
                env[var] = f"{{{{secrets/{scope}/{var}}}}}"
            elif cls in used:
                missing.append(var)
    for key in _AUTH_KEYS:
        if key in scope_keys and key not in env:
            env[key] = f"{{{{secrets/{scope}/{key}}}}}"
    if missing:
        raise JobProblem(
            f"the job's tasks need {', '.join(missing)}, which this process has in its "
            f"environment: put each into secret scope {scope or '(DWBENCH_JOB_SECRET_SCOPE)'} "
            "under its own name (databricks secrets put-secret <scope> <NAME>)"
        )
    signs_in = "DATABRICKS_TOKEN" in env or {
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
    } <= set(env)
    if not signs_in:
        raise JobProblem(
            "the job's tasks need workspace credentials: put DATABRICKS_TOKEN, or "
            "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a service principal), into "
            f"secret scope {scope or '(set DWBENCH_JOB_SECRET_SCOPE)'}"
        )
    return env


# -- the wheel ---------------------------------------------------------------------------------


def build_wheel(dest: Path, source: Path = ROOT) -> Path:
    """The project's wheel, built from a copy of `source` (a build in place leaves build/
    and *.egg-info behind) with this environment's setuptools (the dev requirements have it),
    offline."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.startswith(".") or n == "__pycache__"}
        skip |= {n for n in names if n.endswith((".pyc", ".egg-info"))}
        if Path(directory) == source:
            skip |= set(names) & _NOT_CODE
        return skip

    with tempfile.TemporaryDirectory(prefix="dwbench-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(source, src, ignore=ignore)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "--quiet", "--no-input", "wheel", "--no-deps",
             "--no-build-isolation", "--no-index", "-w", str(dest), str(src)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if built.returncode != 0:  # setuptools missing here, say, or a broken tree
            said = (built.stderr or built.stdout).strip()[-400:]
            raise JobProblem(
                f"building the project's wheel failed ({said}); "
                "or set DWBENCH_JOB_WHEEL to a wheel in the workspace (databricks bundle deploy "
                "builds one)"
            )
    (wheel,) = sorted(dest.glob("*.whl"))
    return wheel


# -- the coordinator -------------------------------------------------------------------------


class DatabricksJobRun(SparkRun):
    """A clients run whose clients are the Spark tasks of a one-time job run."""

    executor = "databricks-job"

    def __init__(
        self,
        template: Any,
        targets: Targets,
        settings: JobSettings | None = None,
        *,
        wheel_builder: Callable[[Path], Path] = build_wheel,
        environ: dict[str, str] | None = None,
    ) -> None:
        super().__init__(template, master="databricks job cluster")
        self.targets = targets
        self.job_settings = settings if settings is not None else JobSettings()
        self.wheel_builder = wheel_builder
        self.environ = environ
        self.job_run_id: int | None = None
        self._workspace: Any = None
        self._cancelling = asyncio.Event()

    @property
    def worker_pids(self) -> list[int]:
        return []  # nothing of it runs on this machine

    def _started_remotely(self) -> bool:
        return self.job_run_id is not None

    def cancel(self) -> None:
        self.cancelled = True
        self._cancelling.set()
        self._request_cancel()

    def _request_cancel(self) -> None:
        """`w.jobs.cancel_run`, in a thread of its own (a cancel comes from the loop)."""
        if self.job_run_id is not None:
            threading.Thread(target=self._cancel_remote, daemon=True).start()

    def kill(self) -> None:
        self.cancel()

    def _cancel_remote(self) -> None:
        try:
            self._workspace.jobs.cancel_run(self.job_run_id)
        except Exception as exc:  # the SDK's errors: said, the poll sees the run go on
            log.warning("job_cancel_failed", run_id=self.id, reason=str(exc))

    async def _run_phases(self, job: WorkerJob) -> None:
        for phase in self.phases:
            phase.clients = []
        try:
            spec = await asyncio.to_thread(self._submit, job)
        except JobProblem as exc:
            self.error = str(exc)
            return
        except Exception as exc:  # the SDK's errors (permissions, a bad cluster spec)
            self.error = f"the job run could not be submitted: {exc}"
            return
        from bench.clients import _Client

        for phase in self.phases:
            phase.clients = [_Client(c) for c in range(self.config.clients)]
        assert self._workspace is not None
        sink = VolumeSink(spec.progress_dir, self._workspace)
        watcher = asyncio.create_task(self._watch(sink, self.job_settings.poll_interval_s))
        try:
            ended = await self._follow_run(spec)
        finally:
            await stop_task(watcher)
        await self._read_progress(sink)  # what the tasks put last, before the run ended
        for phase in self.phases:
            if not phase.finished:
                self._phase_done(phase, {"cancelled": True} if self.cancelled else {"error": ended})

    async def _follow_run(self, spec: JobSpec) -> str:
        """Poll the run and its results until it ends; how it ended. After a cancel, the
        run is followed for CANCEL_WAIT_S more at most (the app's Cancel answers within its
        grace): a cluster still stopping then is said in `environment.databricks_job`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.job_settings.timeout_s
        cancel_by: float | None = None
        failures = 0
        while True:
            try:
                state = await asyncio.to_thread(self._state)
                self._apply(await asyncio.to_thread(self._collect, spec))
                failures = 0
            except Exception as exc:  # the SDK retried already; a few more polls before giving up
                failures += 1
                log.warning("job_poll_failed", run_id=self.id, attempt=failures, reason=str(exc))
                if failures >= MAX_POLL_FAILURES:
                    self._request_cancel()
                    return f"the job run could not be read {failures} times in a row: {exc}"
                await self._pause(self.job_settings.poll_interval_s)
                continue
            if state["life_cycle_state"] in _TERMINAL:
                # Results written just before the end are read once more.
                self._apply(await asyncio.to_thread(self._collect, spec))
                return _ended(state)
            if self.cancelled:
                cancel_by = cancel_by if cancel_by is not None else loop.time() + CANCEL_WAIT_S
                if loop.time() >= cancel_by:
                    job = self.environment.get("databricks_job", {})
                    note = (
                        f"cancel_run was requested; the job run was {state['life_cycle_state']} "
                        "when this result was saved"
                    )
                    self.environment = {**self.environment, "databricks_job": {**job, "note": note}}
                    return "cancelled"
            elif loop.time() > deadline:
                self._request_cancel()
                return f"the job run did not end within {self.job_settings.timeout_s} s"
            await self._pause(0.2 if self.cancelled else self.job_settings.poll_interval_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next poll, or until a cancel (then poll at once)."""
        if self.cancelled:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancelling.wait(), seconds)

    def _apply(self, messages: list[tuple[int, dict[str, Any]]]) -> None:
        for index, message in messages:
            if not self.phases[index].finished:
                self._phase_done(self.phases[index], message)

    def _submit(self, job: WorkerJob) -> JobSpec:
        """Upload the wheel and the spec, submit the run; the spec."""
        from databricks.sdk.service import compute, jobs

        settings = self.job_settings
        if self.targets.mode != "databricks":
            raise JobProblem(
                "the databricks-job executor submits a job run to a workspace: it runs in "
                "databricks mode (the local stack has no clusters; use --executor spark)"
            )
        auth = self.targets.workspace_auth
        if auth is None:
            raise JobProblem(f"no workspace credentials: {self.targets.auth_problem}")
        if not settings.volume:
            raise JobProblem(
                "set DWBENCH_JOB_VOLUME to a UC Volume path (/Volumes/<catalog>/<schema>/"
                "<volume>) for the job's wheel, spec and results"
            )
        if not job.workload.builtin:
            raise JobProblem(
                f"workload {job.workload.name} is not built in: the job's tasks rebuild a "
                "workload from its name (run a custom table with --executor processes)"
            )
        if not settings.existing_cluster_id and not settings.node_type_id:
            raise JobProblem(
                "set DWBENCH_JOB_NODE_TYPE_ID (the job cluster's node type) or "
                "DWBENCH_JOB_EXISTING_CLUSTER_ID"
            )
        w = self._workspace = auth.workspace_client()
        scope = settings.secret_scope
        keys = {s.key for s in w.secrets.list_secrets(scope) if s.key} if scope else set()
        env = task_environment(self.config.writers, scope, keys, auth.host, self.environ)
        base = f"{settings.volume.rstrip('/')}/dwbench-jobs"
        wheel = settings.wheel or self._upload_wheel(w, f"{base}/wheels")
        run_dir = f"{base}/runs/{self.id}"
        spec = JobSpec(
            run_id=self.id,
            started_at=self.started_at,
            config=self.config,
            workload=job.workload.name,
            delta_table=job.workload.table.delta_table,
            environment=self.environment,
            phases=[p.writers for p in self.phases],
            clients=self.config.clients,
            error=job.error,
            run_dir=run_dir,
        )
        spec_path = f"{run_dir}/spec.json"
        w.files.upload(spec_path, io.BytesIO(spec.model_dump_json().encode()), overwrite=True)
        cluster = None
        if not settings.existing_cluster_id:
            cluster = compute.ClusterSpec(
                spark_version=settings.spark_version,
                node_type_id=settings.node_type_id,
                num_workers=settings.num_workers
                if settings.num_workers is not None
                else self.config.clients,
                data_security_mode=compute.DataSecurityMode.SINGLE_USER,
                spark_env_vars=env,
            )
        task = jobs.SubmitTask(
            task_key="clients",
            python_wheel_task=jobs.PythonWheelTask(
                package_name=PACKAGE_NAME,
                entry_point=TASK_ENTRY_POINT,
                parameters=["--spec", spec_path],
            ),
            libraries=[compute.Library(whl=wheel)],
            new_cluster=cluster,
            existing_cluster_id=settings.existing_cluster_id,
        )
        waiter = w.jobs.submit(
            run_name=f"dwbench {self.id}",
            tasks=[task],
            timeout_seconds=settings.timeout_s,
            idempotency_token=self.id,
        )
        self.job_run_id = int(waiter.run_id)
        self.environment = {
            **self.environment,
            "databricks_job": {"run_id": self.job_run_id, "wheel": wheel, "spec": spec_path},
        }
        log.info("job_run_submitted", run_id=self.id, job_run_id=self.job_run_id)
        if self.cancelled:
            self._cancel_remote()
        return spec

    def _upload_wheel(self, w: Any, where: str) -> str:
        with tempfile.TemporaryDirectory(prefix="dwbench-dist-") as tmp:
            wheel = self.wheel_builder(Path(tmp))
            data = wheel.read_bytes()
        # Clusters cache a library by its path: a new build goes to a path of its own.
        path = f"{where}/{hashlib.sha256(data).hexdigest()[:16]}/{wheel.name}"
        w.files.upload(path, io.BytesIO(data), overwrite=True)
        return path

    def _state(self) -> dict[str, Any]:
        run = self._workspace.jobs.get_run(self.job_run_id)
        state = run.state
        found = {
            "life_cycle_state": state.life_cycle_state.value if state.life_cycle_state else "",
            "result_state": state.result_state.value if state.result_state else None,
            "state_message": state.state_message or "",
        }
        job = self.environment.get("databricks_job", {})
        self.environment = {
            **self.environment,
            "databricks_job": {**job, "run_page_url": run.run_page_url, "state": found},
        }
        return found

    def _collect(self, spec: JobSpec) -> list[tuple[int, dict[str, Any]]]:
        """Each phase's results that the task has written and are not read yet."""
        found = []
        for index, phase in enumerate(self.phases):
            if not phase.finished:
                message = _download_json(self._workspace, spec.result_path(index))
                if message is not None:
                    found.append((index, message))
        return found


class VolumeSink(ProgressSink):
    """The tasks' progress as files in the run's Volume directory. A task's `put` hands the
    document to an uploader thread (the latest per client wins), so the Files API's round
    trip never holds up the task's event loop; the coordinator's `get` downloads."""

    def __init__(self, directory: str, workspace: Any = None) -> None:
        self.directory = directory
        self._workspace = workspace
        self._pending: dict[str, bytes] = {}
        self._ready = threading.Condition()
        self._uploader: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}  # a task signs in with its own credentials

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    def _client(self) -> Any:
        if self._workspace is None:
            from dwbench.auth import resolve_workspace_auth
            from dwbench.settings import Settings

            self._workspace = resolve_workspace_auth(Settings()).workspace_client()
        return self._workspace

    def put(self, phase: int, client: int, document: dict[str, Any]) -> None:
        with self._ready:
            self._pending[self.name(phase, client)] = json.dumps(document).encode()
            if self._uploader is None:
                self._uploader = threading.Thread(target=self._upload, daemon=True)
                self._uploader.start()
            self._ready.notify()

    def _upload(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch, self._pending = self._pending, {}
            for name, body in batch.items():
                try:
                    path = f"{self.directory}/{name}"
                    self._client().files.upload(path, io.BytesIO(body), overwrite=True)
                except Exception as exc:  # progress is for watching: the run goes on
                    log.warning("job_task_progress_failed", file=name, reason=str(exc))

    def get(self, phase: int, client: int) -> dict[str, Any] | None:
        return _download_json(self._client(), f"{self.directory}/{self.name(phase, client)}")


def _download_json(w: Any, path: str) -> dict[str, Any] | None:
    """A JSON document in the Volume; None while there is none."""
    from databricks.sdk.errors import NotFound

    try:
        got = w.files.download(path)
    except NotFound:
        return None
    document: dict[str, Any] = json.loads(got.contents.read())
    return document


def _ended(state: dict[str, Any]) -> str:
    return (
        f"the job run ended {state['result_state'] or state['life_cycle_state']}: "
        f"{state['state_message'] or 'no message'}"
    )


# -- the task, on the cluster ------------------------------------------------------------------


def task_main(argv: list[str] | None = None) -> int:
    """`dwbench-job-task --spec /Volumes/.../spec.json`: the run's phases on this cluster."""
    import argparse

    from bench.spark_driver import run_phases
    from dwbench.log import configure_logging
    from dwbench.runtime import configured_products, workspace_targets
    from dwbench.settings import Settings
    from workloads.registry import WorkloadRegistry

    parser = argparse.ArgumentParser(prog=TASK_ENTRY_POINT)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    targets = workspace_targets(Targets(mode="databricks", settings=Settings()))
    auth = targets.workspace_auth
    if auth is None:
        print(f"{TASK_ENTRY_POINT}: no workspace credentials: {targets.auth_problem}")
        return 2
    w = auth.workspace_client()
    spec = JobSpec.model_validate_json(w.files.download(args.spec).contents.read())
    workload = WorkloadRegistry(configured_products(targets)).get(spec.workload)
    if workload.table.delta_table != spec.delta_table:
        print(
            f"{TASK_ENTRY_POINT}: workload {spec.workload} is on {workload.table.delta_table} "
            f"here, {spec.delta_table} where the run was started: the cluster's settings differ"
        )
        return 2
    # The job as make_job makes it for a worker, from the spec where the run was started.
    started = SimpleNamespace(
        id=spec.run_id,
        started_at=spec.started_at,
        config=spec.config,
        workload=workload,
        environment=spec.environment,
        error=spec.error,
    )
    job = make_job(started, targets)
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"dwbench-{spec.run_id}").getOrCreate()

    def send(message: dict[str, Any]) -> None:
        if message.get("type") == "phase":
            body = io.BytesIO(json.dumps(message).encode())
            w.files.upload(spec.result_path(message["index"]), body, overwrite=True)

    progress = VolumeSink(spec.progress_dir, w)
    spark_job = SparkJob(spec.run_id, job, spec.phases, spec.clients, "", progress)
    run_phases(spark.sparkContext, spark_job, send, threading.Event())
    return 0
