"""Session fixtures: one local stack process for the whole run, real sockets throughout."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.process import LocalStackProcess

ROOT = Path(__file__).resolve().parent.parent
# Writers the local stack cannot serve (their own tests check that they say so).
DATABRICKS_ONLY = frozenset({"sql-connector"})


def workspace_client(endpoints: dict[str, Any]) -> Any:
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=endpoints["api_url"], token=endpoints["token"], auth_type="pat")


def run_sql(endpoints: dict[str, Any], statement: str, **kwargs: Any) -> Any:
    """Run one statement through the official SDK; fail the test unless it succeeded."""
    from databricks.sdk.service.sql import StatementState

    w = workspace_client(endpoints)
    resp = w.statement_execution.execute_statement(
        statement=statement, warehouse_id=endpoints["warehouse_id"], wait_timeout="30s", **kwargs
    )
    assert resp.status.state == StatementState.SUCCEEDED, resp.status
    return resp


def products_ddl(table: str) -> str:
    from workloads import products

    return products.SCHEMA.delta_ddl(table)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[dict[str, Any]]:
    """The whole local stack (Zerobus, Statement Execution API, Postgres), shared by the session.

    Its data lives outside pytest's temporary root: as root, Postgres runs as an unprivileged
    user that must traverse the path, and a second pytest session resets that root to 0700.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="dwbench-stack-"))
    # --jobs: the databricks-job executor's tests submit job runs (test_cli_databricks_job).
    stack = LocalStackProcess(data_dir, token=secrets.token_urlsafe(16), args=["--jobs"])
    try:
        endpoints = stack.start()
        yield endpoints
        assert stack.stop() == 0, f"local stack exited uncleanly; see {stack.log_path}"
    finally:
        stack.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def local_targets(endpoints: dict[str, Any], **writer_settings: Any) -> Any:
    """Writer targets on the local stack, as the app resolves them in local mode.

    Keyword arguments are writers' own settings by writer name, in place of the environment:
    `local_targets(stack, lakebase=LakebaseSettings(write_mode="insert"))`.
    """
    from pydantic import SecretStr

    from dwbench.settings import Settings
    from writers.base import Targets

    return Targets(
        mode="local",
        settings=Settings(app_mode="local", data_dir=Path(endpoints["data_dir"])),
        zerobus_endpoint=endpoints["zerobus_endpoint"],
        workspace_url=endpoints["api_url"],
        warehouse_id=endpoints["warehouse_id"],
        local_token=SecretStr(endpoints["token"]),
        postgres_dsn=SecretStr(endpoints["postgres_dsn"]),
        writer_settings=writer_settings,
    )


@pytest.fixture
def products_table(local_stack: dict[str, Any], request: pytest.FixtureRequest) -> str:
    """A fresh, empty products table for one test."""
    name = f"main.default.products_{request.node.name.split('[')[0][-40:]}_{secrets.token_hex(3)}"
    name = name.lower().replace("-", "_")
    run_sql(local_stack, products_ddl(name))
    return name


def app_settings(endpoints: dict[str, Any], **overrides: Any) -> Any:
    """Settings of an app in local mode that uses the given running local stack."""
    from dwbench.settings import Settings

    values: dict[str, Any] = {
        "app_mode": "local",
        "data_dir": Path(endpoints["data_dir"]),
        "local_stack_url": endpoints["api_url"],
        "local_stack_token": endpoints["token"],
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def app_server(local_stack: dict[str, Any]) -> Iterator[Any]:
    """The app on a real socket, in local mode on the session's local stack."""
    from tests.app_server import AppServer

    with AppServer(app_settings(local_stack)) as server:
        yield server


@pytest.fixture(scope="session")
def client(app_server: Any) -> Iterator[Any]:
    with app_server.client() as http:
        yield http
