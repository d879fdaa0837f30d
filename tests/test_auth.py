"""Workspace auth through databricks-sdk's unified auth (`dwbench.auth`).

No test reaches a workspace: profiles point at the local stack's API, which answers the
SDK's calls (Statement Execution, warehouses, Unity Catalog) and checks its token, so a
profile's token is proven used by the stack accepting it. A wrong token would be refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bench.environment import capture_environment, mode_notice, workspace_facts
from bench.results import RunResult
from dwbench.auth import (
    WorkspaceAuth,
    WorkspaceAuthError,
    auth_line,
    check_profile,
    profiles_in,
    resolve_workspace_auth,
)
from dwbench.settings import Settings
from tests.conftest import run_sql
from tests.test_cli import SMALL_RUN, base_env, dwbench, table_rows
from tests.writers.test_sql import assert_stored_exactly, product_rows
from workloads import products
from writers.base import Targets
from writers.lakebase import LakebaseSettings
from writers.sql import SqlSettings, SqlWriter
from writers.zerobus import ZerobusWriter
from writers.zerobus_arrow import ZerobusArrowWriter
from writers.zerobus_rest import ZerobusRestWriter

SP_SECRET = "sp-secret-" + "x" * 24
PAT_REJECTED = "dapi-not-the-stacks-token-0123456789"

PAT_REASON = (
    "Zerobus Ingest authenticates with a service principal's OAuth secret "
    "(DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or a profile with client_id and "
    "client_secret); profile 'bench' authenticates with pat"
)


@pytest.fixture(autouse=True)
def _no_workspace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads DATABRICKS_* itself: none from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("DATABRICKS_") or name in ("APP_MODE", "ZEROBUS_ENDPOINT"):
            monkeypatch.delenv(name)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(path: Path, stack: dict[str, Any], *, default_token: str | None = None) -> Path:
    sections = []
    if default_token is not None:
        sections.append(f"[DEFAULT]\nhost = {stack['api_url']}\ntoken = {default_token}\n")
    sections.append(f"[bench]\nhost = {stack['api_url']}\ntoken = {stack['token']}\n")
    sections.append(
        f"[sp]\nhost = http://127.0.0.1:{closed_port()}\nclient_id = sp-app-id\n"
        f"client_secret = {SP_SECRET}\n"
    )
    path.write_text("\n".join(sections))
    return path


def profile_settings(config: Path, profile: str | None = "bench", **values: Any) -> Settings:
    return Settings(
        databricks_config_profile=profile,
        databricks_config_file=config,
        workspace_retry_timeout_s=1,
        **values,
    )


@pytest.fixture
def config_file(tmp_path: Path, local_stack: dict[str, Any]) -> Path:
    return write_config(tmp_path / "databrickscfg", local_stack)


@pytest.fixture
def pat_auth(config_file: Path) -> WorkspaceAuth:
    return resolve_workspace_auth(profile_settings(config_file))


def workspace_targets(
    auth: WorkspaceAuth, stack: dict[str, Any], **writer_settings: Any
) -> Targets:
    return Targets(
        mode="databricks",
        settings=Settings(app_mode="databricks"),
        zerobus_endpoint=stack["zerobus_endpoint"],
        workspace_url=auth.host,
        warehouse_id=stack["warehouse_id"],
        workspace_auth=auth,
        writer_settings=writer_settings,
    )


# -- resolution ----------------------------------------------------------------------------


def test_a_pat_profile_resolves_and_its_token_reaches_the_workspace(
    pat_auth: WorkspaceAuth, config_file: Path, local_stack: dict[str, Any]
) -> None:
    assert pat_auth.describe() == {
        "host": local_stack["api_url"],
        "auth_type": "pat",
        "profile": "bench",
        "source": f"profile 'bench' in {config_file}",
    }
    assert pat_auth.client_credentials() is None
    assert local_stack["token"] not in repr(pat_auth.describe()) + pat_auth.summary()
    # The stack checks its token: the profile's was sent.
    warehouse = pat_auth.workspace_client().warehouses.get(local_stack["warehouse_id"])
    assert warehouse.cluster_size == "2X-Small"


def test_profiles_come_from_the_config_file_and_settings_imply_databricks_mode(
    config_file: Path,
) -> None:
    assert profiles_in(config_file) == ["bench", "sp"]
    assert profile_settings(config_file).app_mode == "databricks"


def test_a_missing_profile_names_the_profiles_there_are(config_file: Path) -> None:
    settings = profile_settings(config_file, "nope")
    expected = f"Databricks profile 'nope' not found (profiles in {config_file}: bench, sp)"
    with pytest.raises(WorkspaceAuthError) as caught:
        check_profile(settings)
    assert caught.value.message == expected
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(settings)
    assert caught.value.message == expected


def test_a_profile_without_a_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.cfg"
    with pytest.raises(WorkspaceAuthError) as caught:
        check_profile(profile_settings(missing, "dev"))
    assert caught.value.message == (
        f"Databricks profile 'dev' not found: there is no config file at {missing} (set "
        "DATABRICKS_CONFIG_FILE, or run `databricks auth login --profile dev`)"
    )


def test_an_oauth_m2m_profile_that_cannot_authenticate_says_so_without_its_secret(
    config_file: Path,
) -> None:
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(profile_settings(config_file, "sp"))
    message = caught.value.message
    assert message.startswith(
        f"cannot authenticate to Databricks with profile 'sp' in {config_file}: "
    )
    assert "oauth-m2m" in message
    assert SP_SECRET not in message and "\n" not in message


class OAuthDiscovery:
    """A workspace's OAuth discovery documents on a loopback port (all that resolving
    oauth-m2m credentials asks a workspace for; a token is fetched only when used)."""

    def __init__(self) -> None:
        import http.server
        import threading

        discovery = self

        class DiscoveryAnswers(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                base = discovery.url
                answers = {
                    "/.well-known/databricks-config": {"oidc_endpoint": f"{base}/oidc"},
                    "/oidc/.well-known/oauth-authorization-server": {
                        "authorization_endpoint": f"{base}/oidc/v1/authorize",
                        "token_endpoint": f"{base}/oidc/v1/token",
                    },
                }
                body = json.dumps(answers.get(self.path, {})).encode()
                self.send_response(200 if self.path in answers else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DiscoveryAnswers)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_an_oauth_m2m_profile_serves_zerobus_with_its_client_credentials(
    tmp_path: Path, local_stack: dict[str, Any]
) -> None:
    discovery = OAuthDiscovery()
    try:
        config = tmp_path / "cfg"
        config.write_text(
            f"[sp]\nhost = {discovery.url}\nclient_id = sp-app-id\nclient_secret = {SP_SECRET}\n"
        )
        auth = resolve_workspace_auth(profile_settings(config, "sp"))
    finally:
        discovery.close()
    assert (auth.auth_type, auth.profile) == ("oauth-m2m", "sp")
    assert auth.client_credentials() == ("sp-app-id", SP_SECRET)
    writer = ZerobusWriter(workspace_targets(auth, local_stack))
    availability = await writer.availability()
    assert availability.available, availability.reason
    assert availability.details["auth_mode"] == f"oauth-m2m (client_id=sp-a***, {auth.source})"
    assert SP_SECRET not in repr(availability) + json.dumps(auth.describe())


def test_explicit_settings_come_before_the_config_files_default_profile(
    tmp_path: Path, local_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # DEFAULT holds a token the stack refuses; DATABRICKS_TOKEN holds the right one.
    config = write_config(tmp_path / "cfg", local_stack, default_token=PAT_REJECTED)
    monkeypatch.setenv("DATABRICKS_HOST", local_stack["api_url"])
    monkeypatch.setenv("DATABRICKS_TOKEN", local_stack["token"])
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    settings = Settings(workspace_retry_timeout_s=1)
    assert settings.app_mode == "databricks"
    auth = resolve_workspace_auth(settings)
    assert (auth.auth_type, auth.profile, auth.source) == ("pat", None, "DATABRICKS_TOKEN")
    assert auth.workspace_client().warehouses.get("local").name == "Local SQL warehouse"
    # Without the explicit token, unified auth finds the DEFAULT profile (and its token).
    monkeypatch.delenv("DATABRICKS_TOKEN")
    monkeypatch.delenv("DATABRICKS_HOST")
    fallback = resolve_workspace_auth(Settings(workspace_retry_timeout_s=1))
    assert fallback.auth_type == "pat" and fallback.config.token == PAT_REJECTED


def test_a_profile_and_explicit_credentials_together_are_refused(config_file: Path) -> None:
    settings = profile_settings(
        config_file,
        databricks_host="https://adb-1.example.com",
        databricks_client_id="sp-app-id",
        databricks_client_secret=SecretStr(SP_SECRET),
    )
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(settings)
    assert caught.value.message == (
        "both Databricks profile 'bench' and DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET "
        "are set: unset one, so that it is clear which identity writes"
    )


def test_a_token_and_a_service_principal_together_are_refused(tmp_path: Path) -> None:
    settings = Settings(
        databricks_host="https://adb-1.example.com",
        databricks_token=SecretStr(PAT_REJECTED),
        databricks_client_id="sp-app-id",
        databricks_client_secret=SecretStr(SP_SECRET),
        databricks_config_file=tmp_path / "none.cfg",
    )
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(settings)
    assert caught.value.message == (
        "both DATABRICKS_TOKEN and DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET are set: "
        "unset one, so that it is clear which identity writes"
    )


def test_no_credentials_at_all_says_what_was_tried(tmp_path: Path) -> None:
    settings = Settings(
        app_mode="databricks",
        databricks_config_file=tmp_path / "none.cfg",
        workspace_retry_timeout_s=1,
    )
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(settings)
    assert caught.value.message == (
        "no Databricks credentials: set DATABRICKS_HOST and DATABRICKS_TOKEN (or a service "
        "principal's DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET), or pass --profile "
        f"(no config file at {tmp_path / 'none.cfg'}), or run `databricks auth login`"
    )


def test_a_token_without_a_host(tmp_path: Path) -> None:
    settings = Settings(
        app_mode="databricks",
        databricks_token=SecretStr(PAT_REJECTED),
        databricks_config_file=tmp_path / "none.cfg",
    )
    with pytest.raises(WorkspaceAuthError) as caught:
        resolve_workspace_auth(settings)
    assert caught.value.message == "DATABRICKS_TOKEN is set but DATABRICKS_HOST is not"


# -- the writers ---------------------------------------------------------------------------


@pytest.mark.parametrize("writer_class", [ZerobusWriter, ZerobusArrowWriter, ZerobusRestWriter])
async def test_zerobus_says_a_pat_profile_is_not_what_it_takes(
    pat_auth: WorkspaceAuth, local_stack: dict[str, Any], writer_class: type[Any]
) -> None:
    writer = writer_class(workspace_targets(pat_auth, local_stack))
    availability = await writer.availability()
    assert not availability.available and availability.reason == PAT_REASON
    assert availability.details["auth_mode"] == "none: " + PAT_REASON
    with pytest.raises(Exception) as caught:
        await writer.open()
    assert getattr(caught.value, "message", None) == PAT_REASON


async def test_the_sql_writer_writes_with_the_profiles_config(
    pat_auth: WorkspaceAuth, local_stack: dict[str, Any], products_table: str
) -> None:
    table = products.TABLE.with_tables(products_table, "public.products")
    writer = SqlWriter(
        workspace_targets(pat_auth, local_stack, sql=SqlSettings(table=products_table))
    )
    await writer.open()
    try:
        availability = await writer.availability()
        assert availability.available, availability.reason
        assert availability.details["auth"] == f"pat ({pat_auth.source})"
        rows = product_rows(table, 5)
        receipt = await writer.write(rows)
        assert receipt.rows == 5
        assert await writer.count_rows(table, rows.batch_id) == 5
        assert_stored_exactly(local_stack, rows)
    finally:
        await writer.close()


# -- what results record -------------------------------------------------------------------


def test_databricks_environment_records_auth_and_sizes_without_the_token(
    pat_auth: WorkspaceAuth, local_stack: dict[str, Any]
) -> None:
    facts = workspace_facts(pat_auth, "local", None)
    assert facts == {
        "warehouse": {
            "id": "local",
            "name": "Local SQL warehouse",
            "cluster_size": "2X-Small",
            "warehouse_type": "PRO",
            "enable_serverless_compute": True,
            "min_num_clusters": 1,
            "max_num_clusters": 1,
            "state": "RUNNING",
        },
        "lakebase_instance": {"error": "LAKEBASE_INSTANCE_NAME is not set"},
    }
    missing = workspace_facts(pat_auth, "no-such-warehouse", "my-instance")
    assert missing["warehouse"] == {
        "id": "no-such-warehouse",
        "error": "Warehouse no-such-warehouse does not exist.",
    }
    assert missing["lakebase_instance"]["name"] == "my-instance"
    assert missing["lakebase_instance"]["error"].startswith(
        "No API found for 'GET /api/2.0/database"
    )

    targets = dataclasses.replace(
        workspace_targets(pat_auth, local_stack, lakebase=LakebaseSettings(host="lb.example.com")),
        workspace_facts=facts,
    )
    env = capture_environment(targets)
    assert env["auth"] == pat_auth.describe()
    assert env["workspace"] == facts
    assert local_stack["token"] not in json.dumps(env)
    assert mode_notice(env) == (
        f"Databricks mode: workspace {local_stack['api_url']}, auth pat, SQL warehouse local "
        "(2X-Small, serverless PRO, 1 clusters), Lakebase lb.example.com:5432 (capacity "
        "unknown: LAKEBASE_INSTANCE_NAME is not set)."
    )
    assert env["notice"] == mode_notice(env)  # recorded with the result, for the UI
    assert auth_line(pat_auth, None) == (
        f"workspace auth: {pat_auth.summary()} on {local_stack['api_url']}"
    )
    assert auth_line(None, "no Databricks credentials") == (
        "workspace auth: none: no Databricks credentials"
    )


# -- a CLI run in databricks mode ------------------------------------------------------------


def test_a_cli_run_with_a_pat_profile_writes_through_the_warehouse(
    local_stack: dict[str, Any], config_file: Path, products_table: str, tmp_path: Path
) -> None:
    """`dwbench run --profile bench` against a "workspace" that is the local stack's API: the
    SQL writer writes with the profile's token, Zerobus says what it is missing, and the
    header and the result say which auth and which warehouse size produced the figures."""
    env = base_env(
        DATABRICKS_CONFIG_FILE=str(config_file),
        DATABRICKS_WAREHOUSE_ID=local_stack["warehouse_id"],
        ZEROBUS_ENDPOINT=local_stack["zerobus_endpoint"],
        ZEROBUS_TABLE=products_table,
        SQL_TABLE=products_table,
        DATA_DIR=str(tmp_path),
        WORKSPACE_RETRY_TIMEOUT_S="2",
    )
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--profile", "bench", "--writers", "sql,zerobus", *SMALL_RUN, "--out", out, env=env
    )
    assert proc.returncode == 1, proc.stderr  # zerobus unavailable: a partial run
    assert table_rows(proc.stdout)["status"] == ["completed", "unavailable"]
    assert f"Zerobus Ingest (gRPC, protobuf): unavailable: {PAT_REASON}" in proc.stdout
    assert (
        f"workspace auth: pat (profile 'bench' in {config_file}) on {local_stack['api_url']}"
        in proc.stderr
    )
    notice = (
        f"Databricks mode: workspace {local_stack['api_url']}, auth pat, SQL warehouse local "
        "(2X-Small, serverless PRO, 1 clusters)"
    )
    assert notice + "." in proc.stderr and notice + "." in proc.stdout  # no Lakebase set
    result = RunResult.model_validate_json(out.read_text())
    sql = next(w for w in result.writers if w.writer == "sql")
    assert sql.status == "completed" and sql.rows == 2000
    assert result.environment["auth"]["auth_type"] == "pat"
    assert result.environment["workspace"]["warehouse"]["cluster_size"] == "2X-Small"
    assert run_sql(local_stack, f"SELECT count(*) FROM {products_table}").result.data_array == [
        ["2000"]
    ]
    for text in (proc.stdout, proc.stderr, out.read_text()):
        assert local_stack["token"] not in text


def test_a_cli_run_with_an_unknown_profile_exits_2_naming_the_profiles(
    config_file: Path, tmp_path: Path
) -> None:
    env = base_env(DATABRICKS_CONFIG_FILE=str(config_file), DATA_DIR=str(tmp_path))
    proc = dwbench("run", "--profile", "nope", "--writers", "sql", *SMALL_RUN, env=env)
    assert proc.returncode == 2
    assert (
        f"Databricks profile 'nope' not found (profiles in {config_file}: bench, sp)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


async def test_the_apps_service_principal_resolves_at_start_and_failed_reads_are_reasons(
    tmp_path: Path,
) -> None:
    """Databricks Apps sets DATABRICKS_HOST, DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET:
    the runtime resolves them as oauth-m2m. This workspace issues no tokens, so reading the
    warehouse's size fails, and the failure is recorded, not raised."""
    from dwbench.runtime import Runtime

    discovery = OAuthDiscovery()
    runtime = Runtime(
        Settings(
            app_mode="databricks",
            databricks_host=discovery.url,
            databricks_client_id="app-sp-id",
            databricks_client_secret=SecretStr(SP_SECRET),
            databricks_config_file=tmp_path / "none.cfg",
            workspace_retry_timeout_s=1,
            data_dir=tmp_path,
        ),
        writer_settings={"sql": SqlSettings(warehouse_id="w1")},
    )
    try:
        await runtime.start()
        targets = runtime.targets
        assert targets.workspace_auth is not None and targets.auth_problem is None
        assert targets.workspace_auth.describe() == {
            "host": discovery.url,
            "auth_type": "oauth-m2m",
            "profile": None,
            "source": "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET",
        }
        warehouse = targets.workspace_facts["warehouse"]
        assert warehouse["id"] == "w1" and warehouse["error"]
        env = capture_environment(targets)
        assert SP_SECRET not in json.dumps(env)
        assert "SQL warehouse w1 (size unknown: " in mode_notice(env)
    finally:
        await runtime.stop()
        discovery.close()


def test_profile_with_app_mode_local_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dwbench.cli import main

    monkeypatch.setenv("APP_MODE", "local")
    assert main(["run", "--profile", "bench", "--writers", "null", *SMALL_RUN]) == 2
    assert "--profile runs against a workspace, but APP_MODE is local" in capsys.readouterr().err
