"""`python -m emulator` as a user runs it: one JSON line, loopback only, clean SIGTERM."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from emulator.__main__ import is_loopback_host
from emulator.process import LocalStackProcess
from tests.conftest import ROOT, products_ddl, run_sql
from tests.emulator.test_zerobus_recovery import BATCH, RecordedAcks, _batch
from tests.emulator.zerobus_support import async_stream, fast_options, read_rows, to_proto

TABLE = "main.default.products"


def test_whole_stack_with_postgres_survives_a_restart(tmp_path):
    token = secrets.token_urlsafe(16)
    stack = LocalStackProcess(tmp_path / "data", token=token)
    endpoints = stack.start()
    try:
        expected = {"zerobus_endpoint", "api_url", "postgres_dsn", "token", "data_dir"}
        assert set(endpoints) >= expected
        for url in (endpoints["zerobus_endpoint"], endpoints["api_url"]):
            assert url.startswith("http://127.0.0.1:")
        assert endpoints["postgres_dsn"].startswith("postgresql://dwbench:")
        with psycopg.connect(endpoints["postgres_dsn"]) as conn:
            conn.execute("CREATE TABLE kept (id int primary key, name text)")
            conn.execute("INSERT INTO kept VALUES (1, 'Smart Watch'), (2, 'Laptop')")
    finally:
        assert stack.stop() == 0
    again = LocalStackProcess(tmp_path / "data", token=token)
    endpoints = again.start()
    try:
        with psycopg.connect(endpoints["postgres_dsn"]) as conn:
            rows = conn.execute("SELECT id, name FROM kept ORDER BY id").fetchall()
        assert rows == [(1, "Smart Watch"), (2, "Laptop")]
    finally:
        assert again.stop() == 0


async def test_sigterm_commits_and_acknowledges_what_it_holds(tmp_path):
    stack = LocalStackProcess(tmp_path / "data", token="t" * 20, args=["--no-postgres"])
    endpoints = stack.start()
    run_sql(endpoints, products_ddl(TABLE))
    acks = RecordedAcks()
    stream = await async_stream(
        endpoints, TABLE, options=fast_options(ack_callback=acks, recovery=False)
    )
    for k in range(30):
        await stream.ingest_records_offset([to_proto(r) for r in _batch(k)])
    code = await asyncio.to_thread(stack.stop)
    await asyncio.sleep(0.5)  # let the SDK deliver the last acks to the callback
    assert code == 0
    rows = read_rows(endpoints, TABLE)
    committed = {int(r["record_id"][1:5]) for r in rows}
    assert len(rows) == len(committed) * BATCH  # whole batches only
    acked = acks.snapshot()
    assert acked, "the stack stopped before acknowledging anything"
    # Acknowledged means committed; committed batches form a prefix of what was sent.
    assert acked <= committed
    assert committed == set(range(len(committed)))


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "127.example.invalid", "127.0.0.1.nip.io", "localhost.evil.example", "::"]
)
def test_refuses_a_non_loopback_host(tmp_path, host):
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--data-dir", str(tmp_path), "--host", host],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--host must be a loopback address" in result.stderr
    assert repr(host) in result.stderr
    assert result.stdout == ""
    assert not any(tmp_path.iterdir()), "nothing is started or written for a refused host"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host):
    assert is_loopback_host(host)


def test_workspace_secrets_stay_out_of_the_stacks_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-secret-token-0123")
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "sp-secret-0123")
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-1.example.com")
    stack = LocalStackProcess(tmp_path / "data", token="t" * 20, args=["--no-postgres"])
    stack.start()
    try:
        assert stack.pid is not None
        environ = Path(f"/proc/{stack.pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0] for entry in environ if entry}
        # An allowlist (emulator.child_env): what the stack needs, no workspace variable.
        assert b"PATH" in names and b"LOCAL_STACK_TOKEN" in names
        assert not names & {b"DATABRICKS_HOST", b"DATABRICKS_TOKEN", b"DATABRICKS_CLIENT_SECRET"}
    finally:
        assert stack.stop() == 0
