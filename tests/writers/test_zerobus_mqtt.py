"""The zerobus-mqtt writer (paho-mqtt v5 over TLS) against the local stack's MQTT listener:
rows read back exactly, refusals with the server's reason, a crash of the stand-in mid-batch
losing nothing the writer called durable."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import Counter
from typing import Any

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from dwbench.errors import WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from emulator.process import LocalStackProcess
from emulator.tls import LocalTls
from tests.conftest import local_targets, run_sql
from tests.writers import zerobus_json_support as support
from tests.writers.exact_values import exact
from tests.writers.test_workloads import unique_table
from tests.writers.zerobus_json_support import batch_rows, delta_rows, workspace_targets
from workloads import products
from workloads.base import Rows, TableRef
from workloads.schema import TableSchema
from writers import writer_class, writer_metadata
from writers.base import Targets
from writers.zerobus_mqtt import ZerobusMqttSettings, ZerobusMqttWriter

NAME = "zerobus-mqtt"


def products_table(endpoints: dict[str, Any], prefix: str = "mqtt_products") -> TableRef:
    return support.products_table(endpoints, prefix)


def products_rows(table: TableRef, n: int, *, seed: int = 7) -> Rows:
    return support.products_rows(table, n, NAME, seed=seed)


def wire_bytes(endpoints: dict[str, Any], table: str) -> int:
    status = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
    ).json()
    count: int = status["wire_bytes"].get(NAME, {}).get(table, 0)
    return count


@pytest.fixture
async def writer(local_stack):
    instance = ZerobusMqttWriter(local_targets(local_stack))
    await instance.open()
    yield instance
    await instance.close()


def test_registered_with_its_metadata():
    assert writer_class(NAME) is ZerobusMqttWriter
    assert ZerobusMqttWriter.wire_interface == NAME
    assert writer_metadata(NAME) == {
        "name": NAME,
        "label": "Zerobus Ingest (MQTT v5, JSON)",
        "family": "zerobus",
        "color": "#5f3dc4",
        "stores_rows": True,
        "client_distributions": ["paho-mqtt"],
    }


async def test_products_read_back_exactly(local_stack, writer):
    table = products_table(local_stack)
    rows = products_rows(table, 60)
    await writer.prepare(table)
    receipt = await writer.write(rows)
    assert receipt.rows == 60 and receipt.details["publishes"] == 60
    assert exact(batch_rows(local_stack, table, rows.batch_id)) == exact(
        sorted(rows.data.to_pylist(), key=lambda r: next(iter(r.values())))
    )
    assert await writer.count_rows(table, rows.batch_id) == 60
    # One connection and one OAuth token for the table, reused by the next batch.
    await writer.write(products_rows(table, 5, seed=8))
    details = writer.describe()
    assert (details["connects"], details["tokens_fetched"], details["connections"]) == (1, 1, 1)
    assert details["receive_maximum"] == 4096  # the window, from the server's CONNACK
    assert details["auth_mode"].startswith("oauth-m2m (client_id=loca")
    # The payloads counted are what was published; the stand-in counts whole packets.
    second = await writer.write(products_rows(table, 5, seed=9))
    counted = writer.payload_bytes[table.delta_table]
    assert counted > receipt.details["bytes"] + second.details["bytes"]  # three batches
    assert wire_bytes(local_stack, table.delta_table) > counted


async def test_telemetry_reads_back_exactly(local_stack, writer):
    for batch in support.telemetry_batches(local_stack, "mqtt", NAME):
        assert (await writer.write(batch)).rows == 200
        support.assert_read_back(local_stack, batch, NAME)


async def test_nested_types_and_nulls_read_back_exactly(local_stack, writer):
    await support.check_nested_types(local_stack, writer, "mqtt")


async def test_decimal_is_refused_before_writing(local_stack, writer):
    await support.check_decimal_refused(local_stack, writer, "mqtt")
    assert writer.publishes == 0


def token_settings(endpoints: dict[str, Any]) -> ZerobusMqttSettings:
    return ZerobusMqttSettings(
        endpoint=endpoints["mqtt_endpoint"], ca_file=endpoints["ca_file"], auth="token"
    )


async def test_a_wrong_token_is_refused_with_the_servers_reason(local_stack):
    targets = local_targets(local_stack, **{NAME: token_settings(local_stack)})
    good = ZerobusMqttWriter(targets)
    bad = ZerobusMqttWriter(
        Targets(
            mode="local",
            settings=targets.settings,
            workspace_url=local_stack["api_url"],
            local_token=SecretStr("not-the-token"),
            writer_settings=targets.writer_settings,
        )
    )
    table = products_table(local_stack)
    for w in (good, bad):
        await w.open()
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await bad.write(products_rows(table, 3))
        assert failed.value.message == (
            f"the Zerobus MQTT endpoint {local_stack['mqtt_endpoint']} refused the connection: "
            "Not authorized (0x87): invalid or missing bearer token"
        )
        assert bad.publishes == 0 and delta_rows(local_stack, table.delta_table) == []
        assert (await good.write(products_rows(table, 3))).rows == 3  # the stack's token works
        assert good.describe()["auth_mode"] == "bearer token (local stack)"
    finally:
        for w in (good, bad):
            await w.close()


async def test_a_server_the_ca_does_not_vouch_for_is_refused(local_stack, tmp_path):
    other_ca = LocalTls.ensure(tmp_path / "other-ca").ca_file
    settings = ZerobusMqttSettings(ca_file=str(other_ca))
    writer = ZerobusMqttWriter(local_targets(local_stack, **{NAME: settings}))
    await writer.open()
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(products_rows(products.WORKLOAD.table, 1))
    finally:
        await writer.close()
    assert failed.value.message.startswith(
        f"cannot connect to the Zerobus MQTT endpoint {local_stack['mqtt_endpoint']}: "
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    assert writer.publishes == 0


async def test_an_unknown_table_is_refused(local_stack, writer):
    table = products.WORKLOAD.table.with_tables(delta_table="main.default.mqtt_missing")
    with pytest.raises(WriterUnavailableError) as failed:
        await writer.write(products_rows(table, 2))
    assert failed.value.message == (
        f"the Zerobus MQTT endpoint {local_stack['mqtt_endpoint']} refused the connection: "
        "Topic name invalid (0x90): table main.default.mqtt_missing does not exist"
    )


async def test_a_record_that_does_not_fit_fails_the_batch(local_stack, writer):
    name = f"main.default.mqtt_narrow_{secrets.token_hex(3)}"
    run_sql(local_stack, f"CREATE TABLE {name} (id BIGINT NOT NULL, batch_id STRING)")
    wider = TableSchema.from_ddl("id BIGINT NOT NULL, colour STRING, batch_id STRING")
    table = unique_table("narrow", wider).with_tables(delta_table=name)
    data = pa.RecordBatch.from_pylist(
        [{"id": 1, "colour": "red", "batch_id": "b1"}, {"id": 2, "batch_id": "b1"}],
        schema=wider.arrow(),
    )
    with pytest.raises(WriteFailedError) as failed:
        await writer.write(Rows(table, data, "b1"))
    assert failed.value.message == (
        "Zerobus MQTT refused 2 of 2 records: Payload format invalid (0x99): record 0: field "
        "'colour' is not a column of the table (columns: id, batch_id)"
    )
    # Both carry the colour key (null in the second): neither was written.
    assert delta_rows(local_stack, name) == []


async def test_databricks_mode_uses_the_documented_grant(local_stack, capfd, caplog):
    """DATABRICKS_CLIENT_ID/SECRET against {workspace}/oidc/v1/token: the local stack
    stands in for the workspace and for Zerobus (its CA named, as a custom CA would be)."""
    caplog.set_level(logging.DEBUG)
    base = workspace_targets(local_stack, local_stack["oauth_client_secret"])
    settings = ZerobusMqttSettings(
        endpoint=local_stack["mqtt_endpoint"], ca_file=local_stack["ca_file"]
    )
    writer = ZerobusMqttWriter(
        Targets(
            mode="databricks",
            settings=base.settings,
            zerobus_endpoint=base.zerobus_endpoint,
            workspace_url=base.workspace_url,
            warehouse_id="local",
            workspace_auth=base.workspace_auth,
            writer_settings={NAME: settings},
        )
    )
    await writer.open()
    try:
        assert writer._tokens is not None and writer._tokens.client.workspace_id == "127"
        table = products_table(local_stack)
        rows = products_rows(table, 4)
        assert (await writer.write(rows)).rows == 4
        assert len(batch_rows(local_stack, table, rows.batch_id)) == 4
        token = await writer._tokens.get(table.delta_table)
        shown = json.dumps(writer.describe())
    finally:
        await writer.close()
    out, err = capfd.readouterr()
    for text in (shown, out, err, caplog.text):
        assert local_stack["oauth_client_secret"] not in text and token not in text


def test_unconfigured_in_databricks_mode():
    writer = ZerobusMqttWriter(Targets(mode="databricks", settings=Settings(app_mode="databricks")))
    assert writer._config_problem() == (
        "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"
    )


def test_the_databricks_endpoint_is_the_zerobus_host_on_8883(local_stack):
    base = workspace_targets(local_stack, "a-secret")
    host = "1234567890.zerobus.us-west-2.cloud.databricks.com"
    writer = ZerobusMqttWriter(
        Targets(
            mode="databricks",
            settings=base.settings,
            zerobus_endpoint=f"https://{host}",
            workspace_url="https://example.cloud.databricks.com",
            workspace_auth=base.workspace_auth,
        )
    )
    assert writer._config_problem() is None
    oauth = writer._workspace_setup()
    assert writer.endpoint == f"{host}:8883" and writer._host_port() == (host, 8883)
    assert oauth.workspace_id == "1234567890"
    assert oauth.token_url == "https://example.cloud.databricks.com/oidc/v1/token"
    assert "a-secret" not in repr(oauth) and "a-secret" not in json.dumps(writer.describe())


# -- the stand-in killed mid-batch ----------------------------------------------------------

BATCH = 3000


async def test_sigkill_mid_batch_loses_no_row_called_durable(tmp_path):
    token = secrets.token_urlsafe(16)
    first = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres"])
    endpoints = first.start()
    ports = [
        "--zerobus-port", endpoints["zerobus_endpoint"].rsplit(":", 1)[1],
        "--api-port", endpoints["api_url"].rsplit(":", 1)[1],
        "--mqtt-port", endpoints["mqtt_endpoint"].rsplit(":", 1)[1],
    ]  # fmt: skip
    second = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres", *ports])
    table = products.WORKLOAD.table.with_tables(delta_table="main.default.mqtt_crash")
    run_sql(endpoints, table.schema.delta_ddl(table.delta_table))
    writer = ZerobusMqttWriter(
        Targets(
            mode="local",
            settings=Settings(app_mode="local", data_dir=tmp_path / "data"),
            zerobus_endpoint=endpoints["zerobus_endpoint"],
            workspace_url=endpoints["api_url"],
            warehouse_id="local",
            local_token=SecretStr(token),
        )
    )
    await writer.open()
    batches = [products_rows(table, BATCH, seed=k) for k in range(4)]
    durable: list[Rows] = []
    failures: list[str] = []
    try:
        assert (await writer.write(batches[0])).rows == BATCH
        durable.append(batches[0])
        # Kill the stand-in once part of the next batch is acknowledged and part is not.
        task = asyncio.ensure_future(writer.write(batches[1]))
        conn = None
        while not task.done():
            conn = writer._connections.get(table.delta_table)
            if conn is not None and BATCH < conn.acknowledged < 2 * BATCH:
                break
            await asyncio.sleep(0)
        first.kill()
        try:
            await task
            durable.append(batches[1])
        except WriteFailedError as exc:
            failures.append(exc.message)
        await asyncio.to_thread(second.start)
        # The harness's retry: the same batch again (rows the service committed before the
        # kill are then there twice), then the rest.
        for rows in batches[1:] if failures else batches[2:]:
            assert (await writer.write(rows)).rows == BATCH
            durable.append(rows)
        # After the restart: the cached token is refused (the new stack issued none: 0x87),
        # a fresh one fetched, and the connection made again.
        details = writer.describe()
        assert (details["connects"], details["tokens_fetched"]) == (3, 2)
    finally:
        await writer.close()
        first.kill()
        assert second.stop() == 0
    back = delta_rows(endpoints, table.delta_table)
    ids = Counter(r["record_id"] for r in back)
    for rows in durable:  # every batch the writer called durable is there, all of it
        assert all(ids[r] >= 1 for r in rows.data.column("record_id").to_pylist())
    duplicates = sum(n - 1 for n in ids.values())
    print(f"rows={len(back)} unique={len(ids)} duplicates={duplicates} failures={failures}")
    assert len(ids) == 4 * BATCH and duplicates <= BATCH
    if failures:
        assert failures[0].startswith(
            "the MQTT connection for main.default.mqtt_crash was lost after "
        )


async def test_a_value_json_cannot_carry_fails_the_batch_before_sending(local_stack, writer):
    await support.check_nan_refused(local_stack, writer, "mqtt")
