"""Supervision: the app restarts its local stack, the stack restarts its Postgres.

Real processes throughout: a `Runtime` in local mode starts its own stack on a data
directory of the test's; the test SIGKILLs the stack child or the postmaster while
writers write through the runtime, and asserts that

- the runtime reaps the dead child (no zombie) and starts a new one on the same data,
  token and ports (the writers' targets stay right);
- availability says restarting / down with the reason, then available again;
- writes succeed again without an app restart, and every row a write acknowledged is in
  the table, read back independently (deltalake, psycopg);
- a runtime stopped cleanly leaves no stack or Postgres behind, and a stack whose app
  died stops itself and its Postgres.

Deadlines are generous upper bounds, not measurements (bench/recovery_bench.py measures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import pytest
from deltalake import DeltaTable
from psycopg import sql

from api.models import WriterInfo
from api.routes.writers import writer_info
from dwbench.errors import DirectWriteError
from dwbench.runtime import Runtime
from dwbench.settings import Settings
from emulator.process import OWNER_FILE, Backoff, LocalStackProcess, StackSupervisor
from tests.conftest import run_sql
from workloads import products
from workloads.base import Rows, TableRef

T = TypeVar("T")
RECOVERY_DEADLINE_S = 10.0  # the bound on writes succeeding again
STATE_DEADLINE_S = 10.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's temporary root: under root, Postgres runs as an unprivileged user
    # that must traverse the path (as in conftest.py).
    path = Path(tempfile.mkdtemp(prefix="dwbench-heal-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def poll(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], deadline_s: float, what: str
) -> T:
    """Probe until `done`; returns that answer. Fails, saying `what`, after the deadline."""
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                value = await probe()
                if done(value):
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} (within {deadline_s:g} s)") from None


@contextlib.asynccontextmanager
async def local_runtime(data_dir: Path) -> Any:
    runtime = Runtime(Settings(app_mode="local", data_dir=data_dir))
    runtime.stack_poll_interval_s = 0.05  # test-time: notice at once, back off briefly
    runtime.stack_backoff = Backoff(first_s=0.05, max_s=0.5)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def postmaster_pid(data_dir: Path) -> int:
    text = (data_dir / "local-stack" / "postgres" / "postmaster.pid").read_text()
    return int(text.split("\n", 1)[0])


def kill_postmaster(pid: int) -> None:
    """SIGKILL the postmaster, and wait until its backends are gone too."""
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    _gone, alive = psutil.wait_procs([proc, *children], timeout=10)
    assert not alive, f"postgres processes alive after the postmaster's SIGKILL: {alive}"


def gone(pid: int) -> bool:
    """Not running: exited and reaped (a zombie counts as left behind)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def postgres_gone(pid: int, deadline_s: float = 30.0) -> bool:
    """The postmaster exited, within the deadline (pg_ctl's stop returns when its pid file
    is gone, a moment before the process). Not our child: its reaper is init, so a zombie
    counts as gone."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def new_delta_table(runtime: Runtime) -> TableRef:
    name = f"main.default.heal_{secrets.token_hex(3)}"
    table = products.WORKLOAD.table.with_tables(delta_table=name)
    run_sql(runtime.endpoints, table.schema.delta_ddl(name))
    return table


def delta_ids(runtime: Runtime, table: TableRef) -> Counter[str]:
    path = Path(runtime.endpoints["data_dir"], "tables", *table.delta_table.split("."))
    assert table.id_column is not None
    data = DeltaTable(str(path)).to_pyarrow_table(columns=[table.id_column])
    return Counter(data.column(0).to_pylist())


def postgres_ids(runtime: Runtime, table: TableRef) -> Counter[str]:
    schema, name = table.postgres_table.split(".")
    assert table.id_column is not None
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.Identifier(table.id_column), sql.Identifier(schema, name)
    )
    with psycopg.connect(runtime.endpoints["postgres_dsn"], connect_timeout=5) as conn:
        return Counter(row[0] for row in conn.execute(query).fetchall())


@dataclass
class Load:
    """Writers writing batches through the runtime's writer set, as a benchmark does:
    each task writes, records what was acknowledged or failed, and goes on."""

    runtime: Runtime
    table: TableRef
    writers: list[str]
    rows: int = 100
    acked: list[tuple[float, str, Rows]] = field(default_factory=list)
    failed: list[tuple[float, str, DirectWriteError]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _k: int = 0

    def start(self, concurrency: int = 4) -> None:
        make = products.WORKLOAD.batches(seed=5)

        async def run(i: int) -> None:
            name = self.writers[i % len(self.writers)]
            loop = asyncio.get_running_loop()
            while not self._stop.is_set():
                self._k += 1
                batch_id = f"heal{self._k:04d}x{secrets.token_hex(4)}"
                rows = Rows(self.table, make(self._k, self.rows, batch_id, name), batch_id)
                try:
                    writer = await self.runtime.writers.get(name)
                    async with asyncio.timeout(30):
                        await writer.write(rows)
                except DirectWriteError as exc:
                    self.failed.append((loop.time(), name, exc))
                    await asyncio.sleep(0.05)  # a refused connection fails at once
                    continue
                self.acked.append((loop.time(), name, rows))

        self._tasks = [asyncio.create_task(run(i)) for i in range(concurrency)]

    async def until_acked(
        self, n: int, *, after: float = 0.0, by: str | None = None, deadline_s: float = 30.0
    ) -> None:
        """Until n writes (of writer `by`, if given) that ended after `after` were acked."""
        async with asyncio.timeout(deadline_s):
            while sum(t > after and by in (None, w) for t, w, _ in self.acked) < n:
                for task in self._tasks:
                    if task.done():
                        task.result()  # a task that raised: say why
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def check(self, ids: Counter[str]) -> None:
        """Every acknowledged row is in the table (once or more: at-least-once)."""
        assert self.acked, "nothing was acknowledged"
        for _, _, rows in self.acked:
            missing = [i for i in batch_ids(rows) if ids[i] < 1]
            assert not missing, f"batch {rows.batch_id} was acknowledged, {len(missing)} rows lost"


def batch_ids(rows: Rows) -> list[str]:
    column = rows.table.id_column
    assert column is not None
    ids: list[str] = rows.data.column(column).to_pylist()
    return ids


def reason_of(info: WriterInfo) -> str:
    assert info.reason, f"{info.name}: {info.status} without a reason"
    return info.reason


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_app_restarts_its_stack_killed_under_load(data_dir: Path) -> None:
    async with local_runtime(data_dir) as runtime:
        assert runtime.stack is not None and runtime.supervisor is not None
        endpoints = dict(runtime.stack.endpoints)
        table = new_delta_table(runtime)
        load = Load(runtime, table, ["zerobus", "sql"])
        load.start(concurrency=4)
        await load.until_acked(8)
        old_pid = runtime.stack.pid
        assert old_pid is not None
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        os.kill(old_pid, signal.SIGKILL)

        info = await poll(
            lambda: writer_info(runtime, "zerobus"),
            lambda i: i.status in ("restarting", "down"),
            STATE_DEADLINE_S,
            "availability never said the stack was restarting",
        )
        assert not info.available
        assert f"the local stack (pid {old_pid}) killed by SIGKILL" in reason_of(info)
        assert info.details["local_stack"]["last_exit"] == "killed by SIGKILL"
        sql_info = await writer_info(runtime, "sql")
        assert sql_info.status in ("restarting", "down") and "SIGKILL" in reason_of(sql_info)

        # Writes succeed again, with no restart of the app, through the same writers.
        for name in ("zerobus", "sql"):
            await load.until_acked(2, after=killed_at, by=name, deadline_s=RECOVERY_DEADLINE_S)
        assert gone(old_pid), "the killed stack was left a zombie"
        info = await poll(
            lambda: writer_info(runtime, "zerobus"),
            lambda i: i.status == "available",
            STATE_DEADLINE_S,
            "the zerobus writer did not become available again",
        )
        assert info.available and info.reason is None
        assert info.details["local_stack"]["restarts"] == 1
        assert info.details["local_stack"]["state"] == "running"
        for name in ("sql", "lakebase"):
            info = await poll(
                lambda n=name: writer_info(runtime, n),  # type: ignore[misc]
                lambda i: i.status == "available",
                STATE_DEADLINE_S,
                f"the {name} writer did not become available again",
            )
        now = loop.time()
        for name in ("zerobus", "sql"):
            await load.until_acked(2, after=now, by=name)  # both writers go on writing
        await load.stop()
        load.check(delta_ids(runtime, table))
        # The same endpoints: clients were not moved.
        moved = {k for k, v in runtime.stack.endpoints.items() if k != "pid" and endpoints[k] != v}
        assert not moved, f"the restarted stack moved: {moved}"
        assert runtime.stack.pid != old_pid
        new_pid, pg_pid = runtime.stack.pid, postmaster_pid(data_dir)
        assert new_pid is not None
    # Stopped cleanly: nothing left behind.
    assert gone(new_pid), "the restarted stack outlived the runtime"
    assert postgres_gone(pg_pid), "Postgres outlived the runtime"
    assert (data_dir / "local-stack" / OWNER_FILE).read_text() == ""


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_stack_restarts_its_postgres_killed_under_lakebase_load(data_dir: Path) -> None:
    async with local_runtime(data_dir) as runtime:
        table = products.WORKLOAD.table.with_tables(
            postgres_table=f"public.heal_{secrets.token_hex(3)}"
        )
        writer = await runtime.writers.get("lakebase")
        await writer.prepare(table)
        load = Load(runtime, table, ["lakebase"])
        load.start(concurrency=4)
        await load.until_acked(8)
        dsn = runtime.endpoints["postgres_dsn"]
        loop = asyncio.get_running_loop()
        old = postmaster_pid(data_dir)
        port = int(dsn.rsplit(":", 1)[1].split("/", 1)[0])
        # Its port taken before the stack can restart it (a restart takes well under a
        # second, too short to watch), the restart fails: down, with the reason, until the
        # port is free. The stack is paused meanwhile, so that it notices only after.
        assert runtime.stack is not None and runtime.stack.pid is not None
        stack_pid = runtime.stack.pid
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Past the dead server's TIME_WAIT sockets; a listener still excludes another.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(stack_pid, signal.SIGSTOP)
        try:
            killed_at = loop.time()
            kill_postmaster(old)
            blocker.bind(("127.0.0.1", port))
            blocker.listen()
            os.kill(stack_pid, signal.SIGCONT)
            info = await poll(
                lambda: writer_info(runtime, "lakebase"),
                lambda i: i.status == "down",
                STATE_DEADLINE_S,
                "availability never said Postgres was down",
            )
        finally:
            os.kill(stack_pid, signal.SIGCONT)
            blocker.close()
        assert not info.available
        assert reason_of(info).startswith(
            f"Postgres is down: the postmaster (pid {old}) is gone, and restart attempt "
        ), info.reason
        assert f"failed: port 127.0.0.1:{port} is already in use" in reason_of(info)
        assert "trying again" in reason_of(info)
        assert info.details["postgres"]["state"] == "down"
        await load.until_acked(6, after=killed_at, deadline_s=RECOVERY_DEADLINE_S)
        services = await runtime.stack_services()
        assert services is not None and services["postgres"]["restarts"] == 1
        assert services["postgres"]["state"] == "running"
        assert runtime.endpoints["postgres_dsn"] == dsn  # the same port: clients stay right
        info = await poll(
            lambda: writer_info(runtime, "lakebase"),
            lambda i: i.available,
            STATE_DEADLINE_S,
            "the lakebase writer did not become available again",
        )
        await load.stop()
        load.check(postgres_ids(runtime, table))
        assert runtime.supervisor is not None
        assert runtime.supervisor.status.restarts == 0  # the stack itself lived on

        # The pool idle, with connections to the server: kill it again, no availability
        # polls to refresh the pool meanwhile; the first write after the restart succeeds.
        kill_postmaster(postmaster_pid(data_dir))
        await poll(
            runtime.stack_services,
            lambda s: s is not None and s["postgres"]["restarts"] == 2,
            RECOVERY_DEADLINE_S,
            "the stack did not restart its Postgres a second time",
        )
        make = products.WORKLOAD.batches(seed=9)
        first = Rows(table, make(0, 50, "healfirst", "lakebase"), "healfirst")
        receipt = await writer.write(first)
        assert receipt.rows == 50
        assert postgres_ids(runtime, table)[batch_ids(first)[0]] == 1
        stack_log = (data_dir / "local-stack" / "local-stack.log").read_text()
        assert "event=postgres.died" in stack_log and "event=postgres.restarted" in stack_log
        pg_pid = postmaster_pid(data_dir)
    assert postgres_gone(pg_pid), "Postgres outlived the runtime"


@pytest.mark.timeout(60)
async def test_availability_answers_within_its_timeout_while_the_stack_hangs(
    data_dir: Path,
) -> None:
    """The stack SIGSTOPped (alive, answering nothing): every check answers, with a reason,
    within the (injected, small) timeouts."""
    async with local_runtime(data_dir) as runtime:
        assert runtime.stack is not None and runtime.stack.pid is not None
        sql_writer = await runtime.writers.get("sql")
        for name in ("zerobus", "lakebase"):
            await runtime.writers.get(name)
        sql_writer.availability_timeout_s = 0.3  # type: ignore[attr-defined]
        runtime.availability_timeout_s = 0.6
        os.kill(runtime.stack.pid, signal.SIGSTOP)
        try:
            # The SQL writer's own check gives up first, and says so.
            availability = await sql_writer.availability()
            assert not availability.available
            host = runtime.endpoints["api_url"]
            assert availability.reason == (
                f"the SQL API at {host} did not answer within 0.3 s (warehouses.get local)"
            )
            # Every writer's line of /debug/writers answers, none with an empty reason.
            infos = await asyncio.gather(
                *(writer_info(runtime, n) for n in ("zerobus", "sql", "zerobus-rest"))
            )
            by_name = {i.name: i for i in infos}
            # (zerobus's check is a TCP connect, which a paused process's kernel accepts.)
            for info in (by_name["sql"], by_name["zerobus-rest"]):
                assert not info.available, info
                assert info.status == "unavailable"
                assert reason_of(info)
            assert by_name["sql"].reason == (
                f"the SQL API at {host} did not answer within 0.3 s (warehouses.get local)"
            )
            assert by_name["zerobus-rest"].reason == (
                "no answer to the availability check within 0.6 s"
            )
        finally:
            os.kill(runtime.stack.pid, signal.SIGCONT)
        info = await poll(
            lambda: writer_info(runtime, "sql"),
            lambda i: i.available,
            STATE_DEADLINE_S,
            "the sql writer did not become available again",
        )


@pytest.mark.timeout(120)
async def test_a_stack_whose_restart_fails_is_down_with_the_reason_until_it_restarts(
    data_dir: Path,
) -> None:
    process = LocalStackProcess(
        data_dir / "stack", token=secrets.token_urlsafe(16), args=["--no-postgres"]
    )
    endpoints = process.start()
    supervisor = StackSupervisor(process, poll_interval_s=0.05, backoff=Backoff(0.05, 0.2))
    supervisor.start()
    blocker: socket.socket | None = None
    try:
        port = int(endpoints["api_url"].rsplit(":", 1)[1])
        old = process.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await poll(
            lambda: _async(supervisor.status.state),
            lambda s: s != "running",
            STATE_DEADLINE_S,
            "the supervisor did not notice",
        )
        # Something else takes the stack's API port before the restart binds it.
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # the first attempt may have bound it already
            blocker.bind(("127.0.0.1", port))
            blocker.listen()
        if blocker.getsockname()[1] == port:
            await poll(
                lambda: _async(supervisor.status.state),
                lambda s: s == "down",
                30,
                "a failed restart did not say down",
            )
            reason = supervisor.status.reason or ""
            assert re.match(
                r"the local stack killed by SIGKILL, and restart attempt \d+ failed: the local "
                r"stack did not start \(exit code 1: ",
                reason,
            ), reason
            assert "OSError: [Errno 98] Address already in use" in reason
            assert reason.endswith("local-stack.log; trying again"), reason
            assert endpoints["token"] not in reason
            blocker.close()
            blocker = None
        await poll(
            lambda: _async(supervisor.status.state),
            lambda s: s == "running",
            60,
            "the stack was not restarted once its port was free",
        )
        assert supervisor.status.restarts == 1 and process.pid != old and gone(old)
        assert {k: v for k, v in process.endpoints.items() if k != "pid"} == {
            k: v for k, v in endpoints.items() if k != "pid"
        }
        run_sql(process.endpoints, "SELECT 1")
    finally:
        if blocker is not None:
            blocker.close()
        await supervisor.stop()
        process.stop()
    assert process.poll() == 0


async def _async(value: T) -> T:
    return value


_APP_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from dwbench.runtime import Runtime
from dwbench.settings import Settings

async def main():
    runtime = Runtime(Settings(app_mode="local", data_dir=Path(sys.argv[1])))
    await runtime.start()
    print("STACK " + json.dumps({"stack": runtime.stack.pid}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stack_whose_app_died_stops_itself_and_its_postgres(data_dir: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    app = subprocess.Popen(
        [sys.executable, "-c", _APP_SCRIPT, str(data_dir)],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    stack_pid = -1
    try:
        assert app.stdout is not None
        line = b""
        for line in app.stdout:  # the runtime logs to stdout too
            if line.startswith(b"STACK "):
                break
        assert line.startswith(b"STACK "), "the app did not start"
        stack_pid = json.loads(line[6:])["stack"]
        pg_pid = postmaster_pid(data_dir)
        app.kill()
        app.wait()
        stack = psutil.Process(stack_pid)
        # Not our child: wait for it to be gone (its reaper is init).
        _gone, alive = psutil.wait_procs([stack], timeout=60)
        assert not alive, "the stack outlived its app"
        assert postgres_gone(pg_pid), "Postgres outlived the app"
        stack_log = (data_dir / "local-stack" / "local-stack.log").read_text()
        assert "event=local_stack_parent_gone" in stack_log
        assert "event=postgres.stopped" in stack_log
    finally:
        if app.poll() is None:
            app.kill()
        with contextlib.suppress(Exception):
            psutil.Process(stack_pid).kill()


@pytest.mark.timeout(120)
async def test_a_stack_another_process_restarted_first_is_shared_not_fought_over(
    data_dir: Path,
) -> None:
    """The CLI sharing our stack takes it over when it dies, before our restart: the
    supervisor says shared and stops trying, rather than failing for ever."""
    token = secrets.token_urlsafe(16)
    ours = LocalStackProcess(data_dir / "stack", token=token, args=["--no-postgres"])
    endpoints = ours.start()
    gate = asyncio.Event()

    async def gated_sleep(_seconds: float) -> None:  # the test decides when it looks
        await gate.wait()

    shared: list[bool] = []
    supervisor = StackSupervisor(ours, sleep=gated_sleep, on_shared=lambda: shared.append(True))
    supervisor.start()
    other = LocalStackProcess(data_dir / "stack", token=token, args=ours.args)
    try:
        assert ours.pid is not None
        os.kill(ours.pid, signal.SIGKILL)
        await asyncio.to_thread(ours._proc.wait if ours._proc else lambda: None)
        other.args = [*_ports_of(endpoints), *other.args]
        await asyncio.to_thread(other.start)
        gate.set()
        await poll(
            lambda: _async(supervisor.status.state),
            lambda s: s == "shared",
            60,
            "the supervisor did not see the other owner",
        )
        assert shared == [True]
        assert supervisor.status.pid == other.pid and supervisor.status.reason is None
        run_sql(endpoints, "SELECT 1")  # the same endpoints, served by the other process
    finally:
        await supervisor.stop()
        assert other.stop() == 0


def _ports_of(endpoints: dict[str, Any]) -> list[str]:
    from emulator.process import ports_args

    return [a for a in ports_args(endpoints) if a != "--no-postgres"]
