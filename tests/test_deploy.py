"""The deployment files agree with the code: app.yaml, databricks.yml and the setup SQL.

app.yaml may only set variables that `Settings` or a writer's own settings read, the bundle
must send the same command
and variables and declare the resources they refer to, and every products DDL must have the
columns and types the products workload's schema derives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from bench.databricks_job import env_names
from dwbench.settings import Settings
from pipeline.serving import PipelineSettings
from workloads import products
from workloads.products import COLUMNS
from writers import WRITERS, writer_class
from writers.lakebase import LakebaseSettings
from writers.sql import SqlSettings
from writers.zerobus import ZerobusSettings

ROOT = Path(__file__).resolve().parent.parent
APP_YAML = ROOT / "app.yaml"
BUNDLE_YAML = ROOT / "databricks.yml"
SQL = ROOT / "sql"

# Set by Databricks Apps itself ("Databricks Apps environment", default environment
# variables), and by a database resource (PG*), never by app.yaml's values.
PLATFORM_ENV = frozenset(
    {
        "DATABRICKS_APP_NAME",
        "DATABRICKS_WORKSPACE_ID",
        "DATABRICKS_HOST",
        "DATABRICKS_APP_PORT",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "PGAPPNAME",
        "PGDATABASE",
        "PGHOST",
        "PGPORT",
        "PGSSLMODE",
        "PGUSER",
    }
)
# What the app needs in databricks mode beyond what the platform sets.
DATABRICKS_MODE_ENV = frozenset(
    {
        "APP_MODE",
        "ZEROBUS_ENDPOINT",
        "ZEROBUS_TABLE",
        "DATABRICKS_WAREHOUSE_ID",
        "SQL_TABLE",
        "LAKEBASE_INSTANCE_NAME",
        "LAKEBASE_TABLE",
    }
)
# DESIGN.md, "Record schema": Delta / SQL type and NOT NULL per column, and the Postgres type.
# The seed's SQL files must say what the products schema derives (name, type, NOT NULL).
DELTA_SCHEMA = {c.name: (c.type.sql(), not c.nullable) for c in products.SCHEMA.columns}
POSTGRES_TYPES = {c.name: c.type.postgres() for c in products.SCHEMA.columns}
VAR_REF = re.compile(r"\$\{var\.([A-Za-z_][\w-]*)\}")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_]\w*)\}")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def settings_classes() -> list[type[BaseSettings]]:
    """The app's settings, the serving path's and the settings class of every registered
    writer."""
    writers = dict.fromkeys(writer_class(name).settings_class for name in WRITERS)
    return [Settings, PipelineSettings, *writers]


def settings_env_names() -> dict[str, FieldInfo]:
    """Upper-cased environment variable name -> the settings field it fills."""
    names: dict[str, FieldInfo] = {}
    classes = settings_classes()
    for cls in classes:
        # A field inherited from another listed class is that class's setting, shared on
        # purpose (zerobus-arrow reads ZEROBUS_ENDPOINT as zerobus does), not a second one.
        inherited = {
            name
            for base in classes
            if base is not cls and issubclass(cls, base)
            for name in base.model_fields
        }
        for env, field_name, field in env_names(cls):
            if field_name in inherited:
                continue
            assert env not in names, f"{env} is read by two settings fields"
            names[env] = field
    return names


def app_env() -> list[dict[str, Any]]:
    env = load(APP_YAML).get("env") or []
    assert isinstance(env, list)
    return env


def option(command: list[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` in an argv list."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def bundle_app() -> dict[str, Any]:
    apps = load(BUNDLE_YAML)["resources"]["apps"]
    assert len(apps) == 1, "the bundle deploys exactly one app"
    return next(iter(apps.values()))


def bundle_resources() -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in bundle_app()["resources"]}


# --- SQL parsing -------------------------------------------------------------------------


def strip_sql_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def create_table(sql: str) -> tuple[str, list[str]]:
    """The table name and the column/constraint items of the file's first CREATE TABLE."""
    sql = strip_sql_comments(sql)
    m = re.search(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([^\s(]+)\s*\(", sql, re.I)
    assert m, "no CREATE TABLE"
    depth, i = 1, m.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(sql[i], 0)
        i += 1
    return m.group(1), split_top_level(sql[m.end() : i - 1])


def delta_columns(sql: str) -> list[tuple[str, str, bool]]:
    columns = []
    for item in create_table(sql)[1]:
        name, rest = item.split(None, 1)
        rest = re.sub(r"\bCOMMENT\s+'[^']*'", "", rest, flags=re.I).upper()
        not_null = bool(re.search(r"\bNOT\s+NULL\b", rest))
        type_ = re.sub(r"\bNOT\s+NULL\b", "", rest).split()
        columns.append((name.strip("`"), " ".join(type_), not_null))
    return columns


TABLE_CONSTRAINT = re.compile(r"(PRIMARY\s+KEY|CONSTRAINT|UNIQUE|CHECK|FOREIGN\s+KEY)\b", re.I)


def postgres_columns(sql: str) -> tuple[list[tuple[str, str]], str | None]:
    """(column, normalized type) pairs and the primary key column."""
    columns, primary_key = [], None
    for item in create_table(sql)[1]:
        if TABLE_CONSTRAINT.match(item):
            m = re.match(r"(?:CONSTRAINT\s+\S+\s+)?PRIMARY\s+KEY\s*\(\s*(\w+)\s*\)", item, re.I)
            primary_key = m.group(1) if m else primary_key
            continue
        name, rest = item.split(None, 1)
        rest = rest.lower()
        if re.search(r"\bprimary\s+key\b", rest):
            primary_key = name
        rest = re.sub(r"\bdefault\b.*$", "", rest)
        rest = re.sub(r"\b(not\s+null|null|primary\s+key|unique)\b", "", rest)
        type_ = " ".join(rest.split()).replace("timestamp with time zone", "timestamptz")
        columns.append((name.strip('"'), type_))
    return columns, primary_key


def qualified(name: str) -> str:
    name = name.replace('"', "").lower()
    return name if "." in name else f"public.{name}"


def render(sql: str, **values: str) -> str:
    """Replace the given ${name} placeholders, as envsubst with a variable list does."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), sql)


# --- app.yaml ----------------------------------------------------------------------------


def test_the_real_time_job_installs_the_project_and_its_role_reaches_the_app() -> None:
    """The job's ForeachWriter imports the project (pipeline.realtime, pipeline.pg) and its
    dependencies; the app grants the role the job writes as."""
    job = load(BUNDLE_YAML)["resources"]["jobs"]["pipeline_realtime"]
    (task,) = job["tasks"]
    assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    assert load(BUNDLE_YAML)["artifacts"]["dwbench_wheel"]["type"] == "whl"
    env = {e["name"]: e.get("value") for e in bundle_app()["config"]["env"]}
    assert env["PIPELINE_REALTIME_JOB_ROLE"] == task["notebook_task"]["base_parameters"]["user"]


def test_deploy_files_are_yaml_mappings() -> None:
    assert load(APP_YAML)
    assert load(BUNDLE_YAML)


def test_app_runs_main_app_on_all_interfaces_and_the_databricks_port() -> None:
    command = load(APP_YAML)["command"]
    assert isinstance(command, list), "command must be a sequence (it is not run by a shell)"
    assert all(isinstance(arg, str) for arg in command), command
    assert command[0] == "uvicorn"
    assert "main:app" in command
    assert option(command, "--host") == "0.0.0.0"
    # Databricks Apps substitutes $DATABRICKS_APP_PORT in the command, and nothing else.
    assert option(command, "--port") == "$DATABRICKS_APP_PORT"
    assert [arg for arg in command if "$" in arg] == ["$DATABRICKS_APP_PORT"]


def test_every_app_env_var_is_read_by_settings() -> None:
    allowed = set(settings_env_names()) | PLATFORM_ENV
    names = [entry["name"] for entry in app_env()]
    assert len(names) == len(set(names)), f"duplicate names in app.yaml: {names}"
    unknown = sorted(name for name in names if name.upper() not in allowed)
    assert not unknown, f"app.yaml sets variables no settings class reads: {unknown}"


def test_app_env_entries_have_one_source_and_no_secret() -> None:
    env_names = settings_env_names()
    for entry in app_env():
        assert set(entry) <= {"name", "value", "valueFrom"}, entry
        assert ("value" in entry) != ("valueFrom" in entry), entry
        if "value" in entry:
            assert isinstance(entry["value"], str), f"quote {entry['name']}'s value: {entry}"
            field = env_names.get(entry["name"].upper())
            annotation = str(field.annotation) if field else ""
            assert SecretStr.__name__ not in annotation, f"secret {entry['name']} as a literal"


def test_app_env_covers_what_databricks_mode_needs() -> None:
    names = {entry["name"].upper() for entry in app_env()}
    assert names >= DATABRICKS_MODE_ENV, sorted(DATABRICKS_MODE_ENV - names)
    assert not names & {"DATABRICKS_HOST", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"}


def test_settings_from_app_yaml_env_is_databricks_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(settings_env_names()) | PLATFORM_ENV:
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    # What the platform would put in place of each resource reference.
    resolved = {"sql-warehouse": "a1b2c3d4e5f60718", "products-table": "main.dwbench.products"}
    platform = {
        "DATABRICKS_HOST": "dbc-a1b2c3d4-e5f6.cloud.databricks.com",
        "DATABRICKS_CLIENT_ID": "6f1c0d2e-0000-4000-8000-000000000001",
        "DATABRICKS_CLIENT_SECRET": "not-a-real-secret",
        "DATABRICKS_APP_PORT": "8000",
        "PGHOST": "instance-1234.database.cloud.databricks.com",
        "PGPORT": "5432",
        "PGDATABASE": "databricks_postgres",
        "PGUSER": "6f1c0d2e-0000-4000-8000-000000000001",
        "PGSSLMODE": "require",
    }
    literal = {}
    for entry in app_env():
        value = entry["value"] if "value" in entry else resolved[entry["valueFrom"]]
        literal[entry["name"]] = value
        monkeypatch.setenv(entry["name"], value)
    for name, value in platform.items():
        monkeypatch.setenv(name, value)

    s = Settings()
    zerobus, sql, lakebase = ZerobusSettings(), SqlSettings(), LakebaseSettings()

    assert s.app_mode == "databricks" and not s.is_local
    assert s.workspace_url == "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com"
    assert zerobus.endpoint == literal["ZEROBUS_ENDPOINT"]
    assert zerobus.table == sql.table == "main.dwbench.products"
    assert zerobus.record_format == "proto"
    assert sql.warehouse_id == "a1b2c3d4e5f60718"
    assert lakebase.instance_name == literal["LAKEBASE_INSTANCE_NAME"]
    assert lakebase.table == "public.products"
    assert lakebase.host == platform["PGHOST"] and lakebase.port == 5432
    assert lakebase.user == s.databricks_client_id and lakebase.sslmode == "require"
    assert s.databricks_client_secret is not None
    assert s.port == 8000


# --- databricks.yml ----------------------------------------------------------------------


def test_bundle_app_deploys_the_directory_of_app_yaml() -> None:
    source = (BUNDLE_YAML.parent / bundle_app()["source_code_path"]).resolve()
    assert source == APP_YAML.parent
    assert re.fullmatch(r"[a-z0-9-]+|\$\{var\.\w+\}", bundle_app()["name"])


def test_bundle_declares_warehouse_table_and_database_resources() -> None:
    resources = bundle_resources()
    warehouse = resources["sql-warehouse"]["sql_warehouse"]
    assert warehouse == {"id": "${var.warehouse_id}", "permission": "CAN_USE"}
    table = resources["products-table"]["uc_securable"]
    assert table["securable_type"] == "TABLE"
    assert table["securable_full_name"] == "${var.catalog}.${var.schema}.${var.table}"
    assert table["permission"] == "MODIFY"
    database = resources["database"]["database"]
    assert database["permission"] == "CAN_CONNECT_AND_CREATE"
    assert database["instance_name"] == "${var.lakebase_instance}"
    assert database["database_name"] == "${var.lakebase_database}"
    for resource in resources.values():
        kinds = set(resource) - {"name", "description"}
        assert len(kinds) == 1, f"one resource type per entry: {resource}"


def test_app_value_from_names_bundle_resources() -> None:
    declared = set(bundle_resources())
    used = {entry["valueFrom"] for entry in app_env() if "valueFrom" in entry}
    assert used <= declared, sorted(used - declared)


def test_bundle_config_matches_app_yaml() -> None:
    """A bundle deploy sends `config`; it must be app.yaml with the variables filled in."""
    app_yaml, config = load(APP_YAML), bundle_app()["config"]
    variables = load(BUNDLE_YAML)["variables"]
    assert config["command"] == app_yaml["command"]
    ours, theirs = app_env(), config["env"]
    assert [e["name"] for e in theirs] == [e["name"] for e in ours]
    for mine, bundled in zip(ours, theirs, strict=True):
        # The bundle's schema spells it value_from; it ignores valueFrom there.
        assert set(bundled) <= {"name", "value", "value_from"}, bundled
        if "valueFrom" in mine:
            assert bundled.get("value_from") == mine["valueFrom"], bundled
            continue
        value = bundled["value"]
        ref = VAR_REF.fullmatch(value)
        if "<" in mine["value"]:  # a placeholder in app.yaml: the bundle needs a variable
            assert ref, f"{mine['name']}: the bundle must set it from a variable"
        elif ref:
            default = variables[ref.group(1)].get("default")
            assert default == mine["value"], f"{mine['name']}: {default!r} != {mine['value']!r}"
        else:
            assert value == mine["value"], mine["name"]


def test_bundle_variable_references_are_declared() -> None:
    text = BUNDLE_YAML.read_text()
    declared = set(load(BUNDLE_YAML)["variables"])
    used = set(VAR_REF.findall(text))
    assert used <= declared, sorted(used - declared)
    for target in load(BUNDLE_YAML)["targets"].values():
        assert set(target.get("variables") or {}) <= declared


def test_bundle_has_dev_and_prod_targets() -> None:
    targets = load(BUNDLE_YAML)["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert targets["prod"]["mode"] == "production"
    # Production mode requires an explicit root path.
    assert targets["prod"]["workspace"]["root_path"]
    names = {t["variables"]["app_name"] for t in targets.values()}
    assert len(names) == len(targets), "each target deploys its own app"


# --- SQL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["setup_databricks.sql", "products_table.sql"])
def test_delta_ddl_has_the_record_columns_and_types(name: str) -> None:
    sql = (SQL / name).read_text()
    if name == "setup_databricks.sql":
        sql = render(sql, catalog="main", schema="dwbench", table="products")
    columns = delta_columns(sql)
    assert [c[0] for c in columns] == list(COLUMNS)
    assert {c[0]: (c[1], c[2]) for c in columns} == DELTA_SCHEMA


def test_postgres_ddl_has_the_record_columns_and_types() -> None:
    path = SQL / "products_postgres.sql"
    if not path.exists():
        pytest.skip("sql/products_postgres.sql is not written yet")
    columns, primary_key = postgres_columns(path.read_text())
    assert [c[0] for c in columns] == list(COLUMNS)
    assert dict(columns) == POSTGRES_TYPES
    assert primary_key == "record_id"


def test_setup_sql_placeholders_are_documented() -> None:
    for name, expected in [
        ("setup_databricks.sql", {"catalog", "schema", "table", "app_service_principal"}),
        ("setup_lakebase.sql", {"app_service_principal", "lakebase_database"}),
    ]:
        text = (SQL / name).read_text()
        header = text.split("\n\n", 1)[0]
        statements = strip_sql_comments(text)
        assert set(PLACEHOLDER.findall(statements)) == expected, name
        assert set(PLACEHOLDER.findall(header)) >= expected, f"{name}: document them on top"


def test_setup_databricks_grants_what_zerobus_and_sql_need() -> None:
    sql = render(
        strip_sql_comments((SQL / "setup_databricks.sql").read_text()),
        catalog="c",
        schema="s",
        table="t",
        app_service_principal="sp",
    )
    grants = {" ".join(g.split()) for g in re.findall(r"GRANT[^;]+;", sql, re.I)}
    assert grants == {
        "GRANT USE CATALOG ON CATALOG c TO `sp`;",
        "GRANT USE SCHEMA ON SCHEMA c.s TO `sp`;",
        "GRANT MODIFY, SELECT ON TABLE c.s.t TO `sp`;",
    }


def test_setup_lakebase_grants_on_the_lakebase_table() -> None:
    sql = strip_sql_comments((SQL / "setup_lakebase.sql").read_text())
    assert "CREATE EXTENSION IF NOT EXISTS databricks_auth;" in sql
    assert "databricks_create_role('${app_service_principal}', 'SERVICE_PRINCIPAL')" in sql
    table = re.search(r"GRANT\s+SELECT,\s*INSERT\s+ON\s+TABLE\s+(\S+)\s+TO", sql, re.I)
    assert table, "no GRANT SELECT, INSERT on the products table"
    assert qualified(table.group(1)) == LakebaseSettings.model_fields["table"].default
    postgres_ddl = SQL / "products_postgres.sql"
    if postgres_ddl.exists():
        assert qualified(create_table(postgres_ddl.read_text())[0]) == qualified(table.group(1))


def test_the_clients_job_runs_the_wheels_task_with_settings_the_task_reads() -> None:
    import tomllib

    from bench.databricks_job import PACKAGE_NAME, TASK_ENTRY_POINT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == PACKAGE_NAME
    assert project["scripts"][TASK_ENTRY_POINT] == "bench.databricks_job:task_main"
    job = load(BUNDLE_YAML)["resources"]["jobs"]["dwbench_clients"]
    (task,) = job["tasks"]
    wheel_task = task["python_wheel_task"]
    assert (wheel_task["package_name"], wheel_task["entry_point"]) == (
        PACKAGE_NAME,
        TASK_ENTRY_POINT,
    )
    assert wheel_task["parameters"] == ["--spec", "{{job.parameters.spec}}"]
    assert [p["name"] for p in job["parameters"]] == ["spec"]
    assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    (cluster,) = job["job_clusters"]
    assert cluster["job_cluster_key"] == task["job_cluster_key"]
    spec = cluster["new_cluster"]
    assert spec["data_security_mode"] == "SINGLE_USER"  # barrier mode needs dedicated access
    read = settings_env_names()
    for name in spec["spark_env_vars"]:
        assert name.upper() in read or name in PLATFORM_ENV, f"{name} is read by no setting"
    # The one secret, as a reference the cluster resolves (never a value in the bundle).
    assert spec["spark_env_vars"]["DATABRICKS_CLIENT_SECRET"] == (
        "{{secrets/${var.clients_secret_scope}/DATABRICKS_CLIENT_SECRET}}"
    )
    assert load(BUNDLE_YAML)["artifacts"]["dwbench_wheel"]["type"] == "whl"
