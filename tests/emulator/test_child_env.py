"""The local stack's processes cannot reveal the secrets of the app that started them."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest
from databricks.sdk.service.sql import StatementState

from emulator.child_env import postgres_environment, stack_environment
from emulator.process import LocalStackProcess
from tests.conftest import workspace_client

APP_SECRETS = ("DATABRICKS_CLIENT_SECRET", "DATABRICKS_TOKEN", "APP_SESSION_SECRET", "PGPASSWORD")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def test_the_stack_and_its_postgres_get_no_app_secret(monkeypatch):
    values = {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in APP_SECRETS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABRICKS_HOST", "https://example.cloud.databricks.com")
    # Outside pytest's temporary root: as root, Postgres runs as a user that must traverse it.
    data_dir = Path(tempfile.mkdtemp(prefix="dwbench-env-"))
    stack = LocalStackProcess(data_dir, token=secrets.token_urlsafe(16))
    endpoints = stack.start()
    try:
        assert stack.pid is not None
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        for pid in (stack.pid, postmaster):
            env = environ_of(pid)
            blob = "\0".join(f"{k}={v}" for k, v in env.items())
            for name, value in values.items():
                assert value not in blob, f"{name} reached process {pid}"
            assert not any(k.startswith("DATABRICKS_") for k in env), sorted(env)
            assert "PATH" in env
        assert environ_of(stack.pid)["LOCAL_STACK_TOKEN"] == stack.token  # its own, only
        # Only what pg_ctl sets for its server itself, none meant for another server.
        pg_vars = {k for k in environ_of(postmaster) if k.startswith("PG")}
        assert pg_vars <= {"PGDATA", "PGSYSCONFDIR", "PG_GRANDPARENT_PID"}, pg_vars

        # Nor can a statement read them, from the stack's environment or the host's files.
        for probe in ("/proc/self/environ", f"/proc/{os.getpid()}/environ"):
            resp = workspace_client(endpoints).statement_execution.execute_statement(
                statement=f"SELECT content FROM read_text('{probe}')",
                warehouse_id=endpoints["warehouse_id"],
                wait_timeout="30s",
            )
            assert resp.status.state == StatementState.FAILED, resp.status
            assert not any(value in str(resp.as_dict()) for value in values.values())
            assert resp.status.error.message.startswith("[UNRESOLVABLE_TABLE_VALUED_FUNCTION]")
    finally:
        assert stack.stop() == 0


@pytest.mark.parametrize("build", [stack_environment, postgres_environment])
def test_the_allowlist_keeps_what_a_process_needs(build):
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/home/dev",
        "TMPDIR": "/tmp/x",
        "PYTHONPATH": "/src",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "DATABRICKS_CLIENT_SECRET": "dbx",
        "PGHOST": "elsewhere",
        "OPENAI_API_KEY": "sk",
    }
    env = build({"EXTRA": "1"}, parent=parent)
    common = {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "EXTRA"}
    expected = common | ({"PYTHONPATH"} if build is stack_environment else set())
    assert set(env) == expected
