"""Databricks mode end to end, as far as the local stack allows: `dwbench run` with
APP_MODE=databricks and a personal access token for the local stack's API, or its OAuth
client as a service principal (OAuth M2M: the SDK finds the token endpoint from the host's
metadata and signs in with client credentials). The CLI resolves
the workspace credentials with the SDK's unified auth and reads the warehouse
(`warehouses.get`); its clients, in worker processes or Spark tasks, get the job without
those credentials and resolve them again from the same settings, then write through the
Statement Execution API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.results import RunResult
from tests.conftest import run_sql
from tests.test_cli import base_env, dwbench, stack_env

pytestmark = pytest.mark.slow

TABLE = "main.default.cli_databricks_mode"


@pytest.fixture(scope="module")
def table(local_stack: dict[str, Any]) -> str:
    """The products table, created by a local-mode run (databricks mode creates no tables)."""
    env = {**stack_env(local_stack), "ZEROBUS_TABLE": TABLE, "SQL_TABLE": TABLE}
    proc = dwbench(
        "run", "--writers", "sql", "--records", "10", "--batch-size", "10", "--warmup", "0",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return TABLE


def databricks_env(stack: dict[str, Any], data_dir: Path, auth: str = "pat") -> dict[str, str]:
    """Databricks mode on the stack, as a user (a token) or a service principal (OAuth M2M
    with the stack's client)."""
    if auth == "pat":
        credentials = {"DATABRICKS_TOKEN": stack["token"]}
    else:
        credentials = {
            "DATABRICKS_CLIENT_ID": stack["oauth_client_id"],
            "DATABRICKS_CLIENT_SECRET": stack["oauth_client_secret"],
        }
    return base_env(
        APP_MODE="databricks",
        DATABRICKS_HOST=stack["api_url"],
        DATABRICKS_WAREHOUSE_ID=stack["warehouse_id"],
        ZEROBUS_TABLE=TABLE,
        DATA_DIR=str(data_dir),
        **credentials,
    )


@pytest.mark.parametrize(
    ("executor", "auth"),
    [("processes", "pat"), ("processes", "oauth-m2m"), ("spark", "oauth-m2m")],
)
def test_clients_resolve_the_workspace_credentials_again_and_write_through_the_warehouse(
    local_stack: dict[str, Any], table: str, tmp_path: Path, executor: str, auth: str
) -> None:
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--writers", "sql", "--clients", "2", "--executor", executor,
        "--records", "2000", "--batch-size", "200", "--concurrency", "2", "--warmup", "0",
        "--out", out, env=databricks_env(local_stack, tmp_path, auth),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"1 stream x 2 clients ({executor})" in proc.stdout
    text = out.read_text()
    for secret in (local_stack["token"], local_stack["oauth_client_secret"]):
        assert secret not in text
    run = RunResult.model_validate_json(text)
    assert run.status == "completed", run.warnings
    assert run.environment["mode"] == "databricks"
    assert run.environment["auth"]["auth_type"] == auth
    assert run.environment["workspace"]["warehouse"]["id"] == local_stack["warehouse_id"]
    (w,) = run.writers
    assert (w.writer, w.rows, w.failed_batches) == ("sql", 2_000, 0)
    assert [c.rows for c in w.workers or []] == [1_000, 1_000]
    resp = run_sql(
        local_stack,
        f"SELECT count(*), count(DISTINCT record_id) FROM {table} WHERE batch_id LIKE '{run.id}-%'",
    )
    assert [int(v) for v in resp.result.data_array[0]] == [2_000, 2_000]


def test_without_credentials_every_client_says_why_and_writes_nothing(
    local_stack: dict[str, Any], table: str, tmp_path: Path
) -> None:
    env = databricks_env(local_stack, tmp_path)
    del env["DATABRICKS_TOKEN"]
    env["DATABRICKS_CONFIG_FILE"] = str(tmp_path / "no-such-databrickscfg")
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--writers", "sql", "--clients", "2", "--records", "400", "--batch-size", "200",
        "--warmup", "0", "--out", out, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    run = RunResult.model_validate_json(out.read_text())
    (w,) = run.writers
    assert w.status == "unavailable" and w.rows == 0
    host, config = local_stack["api_url"], env["DATABRICKS_CONFIG_FILE"]
    reason = (
        f"no Databricks credentials for {host}: set DATABRICKS_TOKEN (or a service principal's "
        "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET), or pass --profile (no config file "
        f"at {config}), or run `databricks auth login --host {host}`"
    )
    assert w.error == f"worker client 0: {reason}"
    for client in (0, 1):
        assert f"SQL warehouse: worker client {client} unavailable: {reason}" in run.warnings
    resp = run_sql(local_stack, f"SELECT count(*) FROM {table} WHERE batch_id LIKE '{run.id}-%'")
    assert int(resp.result.data_array[0][0]) == 0
