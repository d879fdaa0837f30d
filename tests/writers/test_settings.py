"""Each writer's own settings: the environment variables they always had, values in Targets.

The variables are set in the environment (monkeypatch.setenv) and read by the settings
classes themselves; a value in `Targets.writer_settings` replaces the environment for that
writer. Secrets stay SecretStr and never show in what a writer describes.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings

from bench.environment import capture_environment
from dwbench.errors import WriterUnavailableError
from dwbench.runtime import Runtime
from dwbench.settings import Settings
from writers import WRITERS, writer_class, writer_config
from writers.base import Targets, WriterSettings
from writers.lakebase import LakebaseSettings, LakebaseWriter
from writers.sql import SqlSettings
from writers.zerobus import ZerobusJsonWriter, ZerobusSettings, ZerobusWriter

PASSWORD = "pg-password-do-not-show-1f3a"
CLIENT_SECRET = "sp-secret-do-not-show-9c2e"

# Every variable a writer read from `Settings` before it had settings of its own: the
# variable, the class and field that read it now, the value set and the value expected.
VARIABLES: list[tuple[str, type[WriterSettings], str, str, Any]] = [
    ("ZEROBUS_ENDPOINT", ZerobusSettings, "endpoint", "123.zerobus.example.com", None),
    ("ZEROBUS_TABLE", ZerobusSettings, "table", "main.bench.zb", None),
    ("ZEROBUS_RECORD_FORMAT", ZerobusSettings, "record_format", "json", None),
    ("ZEROBUS_ACK_TIMEOUT_S", ZerobusSettings, "ack_timeout_s", "2.5", 2.5),
    ("DATABRICKS_WAREHOUSE_ID", SqlSettings, "warehouse_id", "a1b2c3d4e5f60718", None),
    ("SQL_TABLE", SqlSettings, "table", "main.bench.sql", None),
    ("PGHOST", LakebaseSettings, "host", "instance.database.example.com", None),
    ("PGPORT", LakebaseSettings, "port", "6543", 6543),
    ("PGDATABASE", LakebaseSettings, "database", "databricks_postgres", None),
    ("PGUSER", LakebaseSettings, "user", "app-sp", None),
    ("PGSSLMODE", LakebaseSettings, "sslmode", "verify-full", None),
    ("LAKEBASE_INSTANCE_NAME", LakebaseSettings, "instance_name", "my-instance", None),
    ("LAKEBASE_TABLE", LakebaseSettings, "table", "public.lb", None),
    ("LAKEBASE_WRITE_MODE", LakebaseSettings, "write_mode", "insert", None),
    ("LAKEBASE_WRITE_TIMEOUT_S", LakebaseSettings, "write_timeout_s", "7", 7.0),
]
# What they defaulted to in `Settings`.
DEFAULTS: dict[type[WriterSettings], dict[str, Any]] = {
    ZerobusSettings: {
        "endpoint": None,
        "table": "main.default.products",
        "record_format": "proto",
        "ack_timeout_s": 60.0,
    },
    SqlSettings: {
        "warehouse_id": None,
        "table": "main.default.products",
    },
    LakebaseSettings: {
        "host": None,
        "port": 5432,
        "database": None,
        "user": None,
        "password": None,
        "sslmode": None,
        "instance_name": None,
        "table": "public.products",
        "write_mode": "copy",
        "write_timeout_s": 120.0,
        "pool_max_size": 128,
    },
}


def env_names(cls: type[BaseSettings]) -> list[str]:
    """The variables a settings class reads (its fields' aliases, else prefix + name)."""
    prefix = cls.model_config.get("env_prefix", "") or ""
    return [
        f.validation_alias if isinstance(f.validation_alias, str) else prefix + name
        for name, f in cls.model_fields.items()
    ]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the app's or a writer's settings from the outside environment."""
    classes = [Settings, *(writer_class(name).settings_class for name in WRITERS)]
    prefixed = ("LAKEBASE_HOST", "LAKEBASE_PASSWORD", "SQL_WAREHOUSE_ID")
    for name in [n for cls in classes for n in env_names(cls)] + list(prefixed):
        for variant in (name, name.lower(), name.upper()):
            monkeypatch.delenv(variant, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local(**writer_settings: WriterSettings) -> Targets:
    return Targets(
        mode="local", settings=Settings(app_mode="local"), writer_settings=writer_settings
    )


# -- the environment ---------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "cls", "field", "raw", "expected"), VARIABLES)
def test_each_variable_still_sets_its_field(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    cls: type[WriterSettings],
    field: str,
    raw: str,
    expected: Any,
) -> None:
    monkeypatch.setenv(variable, raw)
    config = cls()
    assert getattr(config, field) == (raw if expected is None else expected)
    others = {k: v for k, v in DEFAULTS[cls].items() if k != field}
    assert {k: getattr(config, k) for k in others} == others


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("pghost", "lower.example.com")
    monkeypatch.setenv("Zerobus_Table", "main.mixed.case")
    assert LakebaseSettings().host == "lower.example.com"
    assert ZerobusSettings().table == "main.mixed.case"


def test_defaults_are_the_ones_settings_had() -> None:
    for cls, defaults in DEFAULTS.items():
        config = cls()
        assert {k: getattr(config, k) for k in cls.model_fields} == defaults


def test_aliased_fields_read_only_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """PGHOST, not LAKEBASE_HOST: a field with an alias takes no prefixed name."""
    monkeypatch.setenv("LAKEBASE_HOST", "wrong.example.com")
    monkeypatch.setenv("LAKEBASE_PASSWORD", "wrong")
    monkeypatch.setenv("SQL_WAREHOUSE_ID", "wrong")
    assert LakebaseSettings().host is None and LakebaseSettings().password is None
    assert SqlSettings().warehouse_id is None
    # Constructed in code, a field goes by its name.
    assert LakebaseSettings(host="h", port=1).host == "h"
    assert SqlSettings(warehouse_id="w").warehouse_id == "w"


def test_the_app_settings_no_longer_hold_writer_fields() -> None:
    moved = {"zerobus_table", "sql_driver", "databricks_warehouse_id", "pghost", "lakebase_table"}
    assert not moved & set(Settings.model_fields)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ZEROBUS_ACK_TIMEOUT_S", "0"),
        ("ZEROBUS_RECORD_FORMAT", "avro"),
        ("PGPORT", "not-a-port"),
        ("LAKEBASE_WRITE_MODE", "upsert"),
        ("LAKEBASE_WRITE_TIMEOUT_S", "-1"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    cls = next(c for name, c, *_ in VARIABLES if name == variable)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        cls()


def test_writers_read_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROBUS_TABLE", "main.env.zb")
    monkeypatch.setenv("ZEROBUS_RECORD_FORMAT", "json")
    monkeypatch.setenv("ZEROBUS_ACK_TIMEOUT_S", "3")
    monkeypatch.setenv("LAKEBASE_WRITE_MODE", "insert")
    monkeypatch.setenv("LAKEBASE_WRITE_TIMEOUT_S", "9")
    zerobus = ZerobusWriter(local())
    assert (zerobus.table, zerobus.record_format, zerobus.ack_timeout_s) == (
        "main.env.zb",
        "json",
        3,
    )
    assert isinstance(zerobus.config, ZerobusSettings)
    lakebase = LakebaseWriter(local())
    assert (lakebase.write_mode, lakebase.write_timeout_s) == ("insert", 9.0)


# -- values in Targets -------------------------------------------------------------------


async def test_a_value_in_targets_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = LakebaseSettings(table="public.x")  # built where no LAKEBASE_* is set
    monkeypatch.setenv("LAKEBASE_TABLE", "public.from_env")
    monkeypatch.setenv("LAKEBASE_WRITE_MODE", "insert")
    writer = LakebaseWriter(local(lakebase=given))
    assert writer.config is given
    assert writer.default_table == "public.x" and writer.write_mode == "copy"
    details = (await writer.availability()).details
    assert details["table"] == "public.x" and details["write_mode"] == "copy"
    from_env = LakebaseWriter(local())
    assert (from_env.default_table, from_env.write_mode) == ("public.from_env", "insert")


def test_values_are_by_writer_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROBUS_TABLE", "main.env.zb")
    targets = local(zerobus=ZerobusSettings(table="main.given.zb"))
    assert ZerobusWriter(targets).table == "main.given.zb"
    assert ZerobusJsonWriter(targets).table == "main.env.zb"  # zerobus-json has its own entry
    both = local(**{"zerobus-json": ZerobusSettings(table="main.json.zb")})
    assert ZerobusJsonWriter(both).table == "main.json.zb"


def test_a_value_of_another_writers_class_is_refused() -> None:
    with pytest.raises(TypeError, match="lakebase is configured by LakebaseSettings"):
        LakebaseWriter(local(lakebase=SqlSettings()))


def test_every_registered_writer_takes_its_settings_from_targets() -> None:
    for name in WRITERS:
        cls = writer_class(name)
        given = cls.settings_class()
        writer = cls(local(**{name: given}))
        assert writer.config is given, name
        assert writer_config(local(**{name: given}), name) is given


async def test_runtime_tables_and_environment_follow_the_targets(tmp_path: Path) -> None:
    runtime = Runtime(
        Settings(app_mode="local", data_dir=tmp_path),
        writer_settings={
            "zerobus": ZerobusSettings(table="main.given.products"),
            "lakebase": LakebaseSettings(table="public.given_products"),
        },
    )
    table = runtime.workloads.get("products").table
    assert (table.delta_table, table.postgres_table) == (
        "main.given.products",
        "public.given_products",
    )
    env = capture_environment(runtime.targets)
    assert env["tables"]["zerobus"] == "main.given.products"
    assert env["tables"]["lakebase"] == "public.given_products"
    assert env["tables"]["sql"] == "main.default.products"


async def test_databricks_targets_name_the_endpoint_and_warehouse_of_the_writers_settings(
    tmp_path: Path,
) -> None:
    runtime = Runtime(
        Settings(
            app_mode="databricks",
            databricks_host="adb-1.example.com",
            data_dir=tmp_path,
            databricks_config_file=tmp_path / "no.cfg",
            workspace_retry_timeout_s=1,
        ),
        writer_settings={
            "zerobus": ZerobusSettings(endpoint="1.zerobus.example.com"),
            "sql": SqlSettings(warehouse_id="w-given"),
        },
    )
    await runtime.start()
    try:
        targets = runtime.targets
        assert targets.mode == "databricks"
        assert targets.zerobus_endpoint == "1.zerobus.example.com"
        assert targets.warehouse_id == "w-given"
        assert targets.workspace_url == "https://adb-1.example.com"
        # No credentials for it: every workspace writer says why.
        assert targets.workspace_auth is None
        assert targets.auth_problem == (
            "no Databricks credentials for https://adb-1.example.com: set DATABRICKS_TOKEN (or "
            "a service principal's DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET), or pass "
            f"--profile (no config file at {tmp_path / 'no.cfg'}), or run `databricks auth "
            "login --host https://adb-1.example.com`"
        )
    finally:
        await runtime.stop()


# -- secrets ---------------------------------------------------------------------------


def shown(value: Any) -> str:
    """Everything a value would put into a response or a log line."""
    if isinstance(value, BaseModel):
        return repr(value) + str(value) + value.model_dump_json()
    return repr(value)


def set_secrets(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", "app-sp-id")
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("ZEROBUS_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("DATABRICKS_WAREHOUSE_ID", "w1")
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(port))
    monkeypatch.setenv("PGDATABASE", "db")
    monkeypatch.setenv("PGUSER", "app-sp-id")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.setenv("LAKEBASE_INSTANCE_NAME", "my-instance")


def test_secrets_stay_secret_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    set_secrets(monkeypatch, closed_port())
    settings, lakebase = Settings(), LakebaseSettings()
    assert isinstance(settings.databricks_client_secret, SecretStr)
    assert isinstance(lakebase.password, SecretStr)
    assert settings.databricks_client_secret.get_secret_value() == CLIENT_SECRET
    assert lakebase.password.get_secret_value() == PASSWORD
    assert isinstance(LakebaseSettings(password=PASSWORD).password, SecretStr)
    for value in (settings, lakebase, LakebaseSettings(password=PASSWORD)):
        assert CLIENT_SECRET not in shown(value) and PASSWORD not in shown(value)


@pytest.mark.parametrize("mode", ["databricks", "local"])
async def test_no_writer_shows_a_secret(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    set_secrets(monkeypatch, closed_port())
    settings = Settings(app_mode=mode)
    targets = Targets(mode="databricks" if mode == "databricks" else "local", settings=settings)
    for name in WRITERS:
        writer = writer_class(name)(targets)
        try:
            seen = [shown(writer.config), shown(await writer.availability())]
            describe = getattr(writer, "describe", None)
            if describe is not None:
                seen.append(shown(describe()))
            if isinstance(writer, LakebaseWriter) and mode == "local":
                # No DSN from a local stack: it logs in with PGHOST and PGPASSWORD.
                with pytest.raises(WriterUnavailableError) as caught:
                    await writer.open()
                seen += [caught.value.message, shown(await writer.availability())]
            for text in seen:
                assert PASSWORD not in text and CLIENT_SECRET not in text, (name, text)
        finally:
            await writer.close()
