"""The app and the CLI on one machine: a stack never takes over another live stack's data.

`make run` (the app) and `dwbench run` (the CLI) both start a local stack in
`.data/local-stack`. The second must not take the first one's live Postgres for an orphan.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from dwbench.runtime import Runtime
from dwbench.settings import Settings
from emulator.postgres import EmbeddedPostgres, PostgresInUseError
from emulator.process import (
    EXIT_IN_USE,
    OWNER_FILE,
    LocalStackInUseError,
    LocalStackProcess,
    find_running_stack,
)
from tests.conftest import run_sql


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's temporary root, as in conftest.py: under root, Postgres runs as an
    # unprivileged user that must traverse the path.
    path = Path(tempfile.mkdtemp(prefix="dwbench-share-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def query(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM kept").fetchone()
    assert row is not None
    return int(row[0])


def test_a_second_stack_leaves_the_live_stacks_postgres_serving(data_dir: Path) -> None:
    first = LocalStackProcess(data_dir / "local-stack", token=secrets.token_urlsafe(16))
    second = LocalStackProcess(data_dir / "local-stack", token=secrets.token_urlsafe(16))
    endpoints = first.start()
    try:
        with psycopg.connect(endpoints["postgres_dsn"]) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept VALUES (1), (2)")
        assert query(endpoints["postgres_dsn"]) == 2
        error: Exception | None = None
        try:
            second.start()
        except Exception as exc:
            error = exc
        assert query(endpoints["postgres_dsn"]) == 2  # the first stack's Postgres still serves
        assert error is not None, "the second stack started on a live stack's data"
        assert isinstance(error, LocalStackInUseError)
        assert error.pid == first.pid
        assert f"belongs to process {first.pid}, which is still running" in str(error)
        assert "another DATA_DIR" in str(error) and "LOCAL_STACK_URL" in str(error)
        assert endpoints["token"] not in str(error)
        assert second._proc is not None and second._proc.returncode == EXIT_IN_USE
        assert status(endpoints) == 200  # the first stack's API too
        assert query(endpoints["postgres_dsn"]) == 2
    finally:
        second.kill()
        assert first.stop() == 0
    log = (data_dir / "local-stack" / "local-stack.log").read_text()
    assert "belongs to process" in log
    assert endpoints["token"] not in log, "the token was logged"


def status(endpoints: dict[str, Any]) -> int:
    resp = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
        timeout=10,
    )
    return resp.status_code


def owner_file(stack_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((stack_dir / OWNER_FILE).read_text())
    return doc


async def test_a_second_runtime_writes_through_the_running_stack(data_dir: Path) -> None:
    """`dwbench run` while the app runs: the CLI's runtime uses the app's stack, and
    stopping the runtime leaves that stack running."""
    stack_dir = data_dir / "local-stack"
    app_stack = LocalStackProcess(stack_dir, token=secrets.token_urlsafe(16))
    endpoints = app_stack.start()
    try:
        with psycopg.connect(endpoints["postgres_dsn"]) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        pg_pid = int((stack_dir / "postgres" / "postmaster.pid").read_text().split()[0])

        runtime = Runtime(Settings(app_mode="local", data_dir=data_dir))
        await runtime.start()
        try:
            assert runtime.stack is None  # nothing of its own started
            assert runtime.endpoints["api_url"] == endpoints["api_url"]
            assert runtime.endpoints["postgres_dsn"] == endpoints["postgres_dsn"]
            # Its start-up created the products table on the running stack.
            run_sql(endpoints, "SELECT count(*) FROM main.default.products")
            assert query(endpoints["postgres_dsn"]) == 1
        finally:
            await runtime.stop()

        assert app_stack._proc is not None and app_stack._proc.poll() is None
        assert query(endpoints["postgres_dsn"]) == 1
        assert status(endpoints) == 200
        pid_now = int((stack_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert pid_now == pg_pid, "the running stack's Postgres was replaced"
    finally:
        assert app_stack.stop() == 0


async def test_a_runtime_refuses_a_running_stack_it_cannot_reach(data_dir: Path) -> None:
    stack_dir = data_dir / "local-stack"
    stack = LocalStackProcess(stack_dir, token=secrets.token_urlsafe(16))
    endpoints = stack.start()
    try:
        assert stack.pid is not None
        os.kill(stack.pid, 19)  # SIGSTOP: alive, owning its data, answering nothing
        runtime = Runtime(Settings(app_mode="local", data_dir=data_dir))
        with pytest.raises(LocalStackInUseError) as error:
            await runtime.start()
        message = str(error.value)
        assert f"belongs to process {stack.pid}, which is still running, but" in message
        assert "does not answer" in message
        assert "stop that process, or use another DATA_DIR, or set LOCAL_STACK_URL" in message
        assert endpoints["token"] not in message
        assert runtime.stack is None
        await runtime.stop()
        os.kill(stack.pid, 18)  # SIGCONT
        assert query_ok(endpoints["postgres_dsn"])
    finally:
        if stack.pid is not None:
            os.kill(stack.pid, 18)
        assert stack.stop() == 0


def query_ok(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_the_owner_file_is_private_and_names_pid_and_endpoints(data_dir: Path) -> None:
    stack_dir = data_dir / "local-stack"
    token = secrets.token_urlsafe(16)
    with LocalStackProcess(stack_dir, token=token) as stack:
        path = stack_dir / OWNER_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        doc = owner_file(stack_dir)
        assert doc["pid"] == stack.pid
        assert doc["endpoints"]["api_url"] == stack.endpoints["api_url"]
        running = find_running_stack(stack_dir)
        assert running is not None and running.pid == stack.pid
        assert token not in repr(running)
    assert owner_file_text(stack_dir) == ""  # emptied on a clean stop
    assert find_running_stack(stack_dir) is None
    assert token not in (stack_dir / "local-stack.log").read_text()


def owner_file_text(stack_dir: Path) -> str:
    return (stack_dir / OWNER_FILE).read_text()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_owner_file_is_taken_over(data_dir: Path) -> None:
    stack_dir = data_dir / "local-stack"
    stack_dir.mkdir()
    stale = {"pid": dead_pid(), "endpoints": {"api_url": "http://127.0.0.1:9", "token": "x"}}
    (stack_dir / OWNER_FILE).write_text(json.dumps(stale))
    (stack_dir / OWNER_FILE).chmod(0o644)
    assert find_running_stack(stack_dir) is None
    with LocalStackProcess(stack_dir, token=secrets.token_urlsafe(16)) as stack:
        assert owner_file(stack_dir)["pid"] == stack.pid
        assert stat.S_IMODE((stack_dir / OWNER_FILE).stat().st_mode) == 0o600
        assert status(stack.endpoints) == 200


def test_a_killed_stacks_orphaned_postgres_is_still_cleaned_up(data_dir: Path) -> None:
    """Its owner dead (SIGKILL), the lock is gone and its Postgres is an orphan: the next
    stack stops it and serves the same data."""
    stack_dir = data_dir / "local-stack"
    token = secrets.token_urlsafe(16)
    first = LocalStackProcess(stack_dir, token=token)
    endpoints = first.start()
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (1), (2), (3)")
    orphan = int((stack_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    first.kill()
    assert psutil.pid_exists(orphan)  # the postmaster outlives its stack
    with LocalStackProcess(stack_dir, token=token) as second:
        assert owner_file(stack_dir)["pid"] == second.pid
        assert query(second.endpoints["postgres_dsn"]) == 3
        now = int((stack_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert now != orphan


def test_postgres_owned_by_a_live_process_is_left_alone(data_dir: Path) -> None:
    """The same rule one level down, for EmbeddedPostgres on its own."""
    pg_dir = data_dir / "pg"
    owner = subprocess.Popen(["sleep", "60"])
    try:
        pg_dir.mkdir(mode=0o700)
        created = psutil.Process(owner.pid).create_time()
        owner_path = data_dir / "pg.owner"
        owner_path.write_text(json.dumps({"pid": owner.pid, "created": created}))
        server = EmbeddedPostgres(pg_dir, password="pw-" + secrets.token_hex(8))
        with pytest.raises(PostgresInUseError, match=f"belongs to process {owner.pid}"):
            server.start()
        assert not (pg_dir / "postmaster.pid").exists()
    finally:
        owner.kill()
        owner.wait()
    server.start()  # its owner gone, the claim is stale
    try:
        assert json.loads(owner_path.read_text())["pid"] == os.getpid()
        assert stat.S_IMODE(owner_path.stat().st_mode) == 0o600
        assert query_ok(server.dsn)
    finally:
        server.stop()
    assert not owner_path.exists()


async def test_a_sharing_runtime_takes_over_when_the_owner_stops(data_dir: Path) -> None:
    """The other way round: `dwbench run` started the stack, the app shares it, the run
    ends. The app starts its own on the same data, ports and token, and keeps working."""
    stack_dir = data_dir / "local-stack"
    cli_stack = LocalStackProcess(stack_dir, token=secrets.token_urlsafe(16))
    endpoints = cli_stack.start()
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    runtime = Runtime(Settings(app_mode="local", data_dir=data_dir))
    try:
        await runtime.start()
        assert runtime.stack is None
        assert cli_stack.stop() == 0
        for _ in range(120):
            if runtime.stack is not None:
                break
            await asyncio.sleep(0.5)
        assert runtime.stack is not None, "the runtime did not take the stack over"
        assert runtime.stack.endpoints["api_url"] == endpoints["api_url"]
        assert runtime.stack.endpoints["postgres_dsn"] == endpoints["postgres_dsn"]
        assert owner_file(stack_dir)["pid"] == runtime.stack.pid
        assert status(endpoints) == 200
        assert query(endpoints["postgres_dsn"]) == 2
    finally:
        await runtime.stop()
        cli_stack.kill()
    assert owner_file_text(stack_dir) == ""  # the runtime stopped what it started


def test_the_cli_says_it_shares_a_running_stack_instead_of_starting_one(data_dir: Path) -> None:
    from dwbench.cli import _stack_plan

    stack_dir = data_dir / "local-stack"
    assert _stack_plan(stack_dir) == (
        f"starting the local stack in {stack_dir} (this takes a few seconds)"
    )
    app_stack = LocalStackProcess(stack_dir, token=secrets.token_urlsafe(16))
    app_stack.start()
    try:
        assert _stack_plan(stack_dir) == (
            f"using the local stack that process {app_stack.pid} runs in {stack_dir} (the "
            "app's, when `make run` is up); it keeps running after this run"
        )
    finally:
        assert app_stack.stop() == 0
