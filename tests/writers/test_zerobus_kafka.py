"""The zerobus-kafka writer (confluent-kafka, librdkafka) against the local stack's Kafka
listener: rows read back exactly, refusals passed on plainly, nothing lost to a crash."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import SecretStr

from dwbench.errors import WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from emulator.process import LocalStackProcess
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
from writers.zerobus_kafka import ZerobusKafkaSettings, ZerobusKafkaWriter

NAME = "zerobus-kafka"
# Short timeouts: a refused batch must fail in the test's time, not librdkafka's default.
FAST = ZerobusKafkaSettings(delivery_timeout_s=10, request_timeout_s=5)


def delta_rows_missing(endpoints: dict[str, Any], table: str) -> bool:
    return not Path(endpoints["data_dir"], "tables", *table.split(".")).exists()


def products_table(endpoints: dict[str, Any], prefix: str = "kafka_products") -> TableRef:
    return support.products_table(endpoints, prefix)


def products_rows(table: TableRef, n: int, *, seed: int = 7) -> Rows:
    return support.products_rows(table, n, NAME, seed=seed)


def status(endpoints: dict[str, Any]) -> dict[str, Any]:
    import httpx

    return httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
    ).json()


@pytest.fixture
async def writer(local_stack):
    instance = ZerobusKafkaWriter(local_targets(local_stack, **{NAME: FAST}))
    await instance.open()
    yield instance
    await instance.close()


def test_registered_with_its_metadata():
    assert writer_class(NAME) is ZerobusKafkaWriter
    assert writer_metadata(NAME) == {
        "name": NAME,
        "label": "Zerobus Ingest (Kafka, JSON)",
        "family": "zerobus",
        "color": "#a61e4d",
        "stores_rows": True,
        "client_distributions": ["confluent-kafka"],
    }
    assert ZerobusKafkaWriter.wire_interface == "zerobus-kafka"


async def test_products_read_back_exactly_and_bytes_are_counted(local_stack, writer):
    table = products_table(local_stack)
    rows = products_rows(table, 50)
    await writer.prepare(table)
    before = status(local_stack)["wire_bytes"].get("zerobus-kafka", {}).get(table.delta_table, 0)
    receipt = await writer.write(rows)
    assert receipt.rows == 50
    assert exact(batch_rows(local_stack, table, rows.batch_id)) == exact(
        sorted(rows.data.to_pylist(), key=lambda r: next(iter(r.values())))
    )
    assert await writer.count_rows(table, rows.batch_id) == 50
    # The values' bytes, and what the stand-in received for the table: those plus framing.
    sent = writer.payload_bytes[table.delta_table]
    received = status(local_stack)["wire_bytes"]["zerobus-kafka"][table.delta_table] - before
    assert sent > 50 * 100 and sent < received < sent + 50 * 100
    # Through the OAuth path: one token for the table, one producer, reused.
    await writer.write(products_rows(table, 5, seed=8))
    details = writer.describe()
    assert (details["tokens_fetched"], details["producers_created"]) == (1, 1)
    assert details["auth_mode"].startswith("oauth-m2m (client_id=loca")
    assert details["auth_mode"].endswith("), SASL OAUTHBEARER")
    assert details["ca"] == local_stack["ca_file"]


async def test_telemetry_reads_back_exactly(local_stack, writer):
    batches = support.telemetry_batches(local_stack, "kafka", NAME)
    # Concurrent batches of one table share its producer (and the stand-in's commits).
    receipts = await asyncio.gather(*(writer.write(b) for b in batches))
    assert [r.rows for r in receipts] == [200, 200, 200]
    for b in batches:
        support.assert_read_back(local_stack, b, NAME)


async def test_nested_types_and_nulls_read_back_exactly(local_stack, writer):
    await support.check_nested_types(local_stack, writer, "kafka")


async def test_decimal_is_refused_before_writing(local_stack, writer):
    await support.check_decimal_refused(local_stack, writer, "kafka")
    assert writer.records == 0


async def test_a_schema_mismatch_is_an_invalid_record_and_writes_nothing(local_stack, writer):
    name = f"main.default.kafka_narrow_{secrets.token_hex(3)}"
    run_sql(local_stack, f"CREATE TABLE {name} (id BIGINT NOT NULL, batch_id STRING)")
    wider = TableSchema.from_ddl("id BIGINT NOT NULL, colour STRING, batch_id STRING")
    table = unique_table("narrow", wider).with_tables(delta_table=name)
    data = pa.RecordBatch.from_pylist(
        [{"id": 1, "colour": "red", "batch_id": "b1"}], schema=wider.arrow()
    )
    with pytest.raises(WriteFailedError) as failed:
        await writer.write(Rows(table, data, "b1"))
    # librdkafka hands on the error code only (the stand-in's message stays in its answer).
    assert failed.value.message == (
        "Zerobus Kafka refused the batch: INVALID_RECORD: Broker: Broker failed to validate record"
    )
    assert delta_rows(local_stack, name) == []


async def test_an_unknown_table_fails_plainly(local_stack, writer):
    table = products.WORKLOAD.table.with_tables(delta_table="main.default.kafka_missing")
    with pytest.raises(WriteFailedError) as failed:
        await writer.write(products_rows(table, 2))
    assert failed.value.message == (
        "Zerobus Kafka refused the batch: UNKNOWN_TOPIC_OR_PART: Broker: Unknown topic or partition"
    )
    assert delta_rows_missing(local_stack, table.delta_table)


async def test_a_wrong_token_fails_with_the_sasl_reason(local_stack, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    # Bootstrap and CA given: the writer does not ask the stack, the listener checks the token.
    config = ZerobusKafkaSettings(
        auth="token", bootstrap=local_stack["kafka_bootstrap"], ca_file=local_stack["ca_file"]
    )
    targets = local_targets(local_stack, **{NAME: config})
    bad_token = "not-the-token-" + secrets.token_hex(8)
    bad = ZerobusKafkaWriter(
        Targets(
            mode="local",
            settings=targets.settings,
            workspace_url=local_stack["api_url"],
            local_token=SecretStr(bad_token),
            writer_settings=targets.writer_settings,
        )
    )
    table = products_table(local_stack)
    await bad.open()
    try:
        with pytest.raises(WriteFailedError) as failed:
            await bad.write(products_rows(table, 3))
        assert failed.value.message.startswith(
            f"Zerobus Kafka refused the SASL authentication for {table.delta_table}: "
            "_AUTHENTICATION: "
        )
        assert "authentication failed: invalid or missing bearer token" in failed.value.message
        assert bad.describe()["last_error"] == failed.value.message
        assert delta_rows(local_stack, table.delta_table) == []
    finally:
        await bad.close()
    good = ZerobusKafkaWriter(targets)
    await good.open()
    try:
        assert (await good.write(products_rows(table, 3))).rows == 3  # the stack's token works
        assert good.describe()["auth_mode"] == "bearer token (local stack), SASL OAUTHBEARER"
    finally:
        await good.close()
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text, failed.value.message):
        assert bad_token not in text and local_stack["token"] not in text


async def test_a_wrong_secret_is_unavailable_and_never_shown(local_stack, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "wrong-" + secrets.token_hex(12)
    targets = workspace_targets(local_stack, secret)
    targets = Targets(
        **{
            **targets.__dict__,
            "writer_settings": {
                NAME: ZerobusKafkaSettings(bootstrap=local_stack["kafka_bootstrap"])
            },
        }
    )
    writer = ZerobusKafkaWriter(targets)
    await writer.open()
    try:
        table = products_table(local_stack)
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(products_rows(table, 2))
        token_url = f"{local_stack['api_url']}/oidc/v1/token"
        assert failed.value.message == (
            f"the OAuth token endpoint {token_url} refused client loca*** for "
            f"{table.delta_table}: HTTP 401 invalid_client: invalid client id or secret"
        )
        assert writer.records == 0 and delta_rows(local_stack, table.delta_table) == []
        shown = [failed.value.message, json.dumps(writer.describe())]
    finally:
        await writer.close()
    out, err = capfd.readouterr()
    for text in [*shown, out, err, caplog.text]:
        assert secret not in text
        assert local_stack["oauth_client_secret"] not in text


def test_databricks_defaults_to_the_zerobus_host_on_9092():
    writer = ZerobusKafkaWriter(
        Targets(
            mode="databricks",
            settings=workspace_targets(
                {"api_url": "https://w.example", "oauth_client_id": "c", "zerobus_rest_url": ""},
                "s",
            ).settings,
            zerobus_endpoint="https://1234.zerobus.region.cloud.databricks.com",
            workspace_url="https://w.example",
            workspace_auth=workspace_targets(
                {"api_url": "https://w.example", "oauth_client_id": "c", "zerobus_rest_url": ""},
                "s",
            ).workspace_auth,
        )
    )
    oauth = writer._workspace_setup()
    assert writer.bootstrap == "1234.zerobus.region.cloud.databricks.com:9092"
    assert oauth.workspace_id == "1234" and oauth.token_url == "https://w.example/oidc/v1/token"
    config = writer._producer_config("main.default.t")
    assert "ssl.ca.location" not in config  # the system CA store
    assert (config["acks"], config["enable.idempotence"], config["compression.type"]) == (
        "all",
        False,
        "none",
    )


def test_unconfigured_in_databricks_mode():
    writer = ZerobusKafkaWriter(Targets(mode="databricks", settings=Settings()))
    assert writer._config_problem() == (
        "neither ZEROBUS_KAFKA_BOOTSTRAP nor ZEROBUS_ENDPOINT is set (the workspace's Zerobus "
        "Ingest endpoint)"
    )


async def test_sigkill_mid_batch_loses_no_acknowledged_row(tmp_path):
    """The stand-in killed while batches are in flight and restarted on the same ports:
    every batch the writer reported durable is in the table; re-sent ones may be twice."""
    token = secrets.token_urlsafe(16)
    first = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres"])
    endpoints = first.start()
    ports = [
        "--zerobus-port", endpoints["zerobus_endpoint"].rsplit(":", 1)[1],
        "--api-port", endpoints["api_url"].rsplit(":", 1)[1],
        "--zerobus-rest-port", endpoints["zerobus_rest_url"].rsplit(":", 1)[1],
        "--kafka-port", endpoints["kafka_bootstrap"].rsplit(":", 1)[1],
    ]  # fmt: skip
    second = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres", *ports])
    writer = ZerobusKafkaWriter(local_targets({**endpoints, "postgres_dsn": ""}, **{NAME: FAST}))
    table = products_table(endpoints, "kafka_crash")
    durable: list[str] = []
    failed: list[str] = []
    sent: list[Rows] = []
    try:
        await writer.open()

        async def one(k: int) -> None:
            rows = products_rows(table, 100, seed=k)
            sent.append(rows)
            try:
                await writer.write(rows)
            except (WriteFailedError, WriterUnavailableError) as exc:
                failed.append(exc.message)
            else:
                durable.append(rows.batch_id)

        for k in range(10):
            await one(k)
        in_flight = [asyncio.create_task(one(100 + k)) for k in range(10)]
        await asyncio.sleep(0.05)
        first.kill()
        await asyncio.gather(*in_flight)  # those not acknowledged before: unavailable
        await asyncio.to_thread(second.start)
        for k in range(5):
            await one(200 + k)
        rows = delta_rows(endpoints, table.delta_table)
        fetched = writer.describe()["tokens_fetched"]
    finally:
        await writer.close()
        first.kill()
        second.stop()
    ids = Counter((r["batch_id"], r["record_id"]) for r in rows)
    batches = Counter(batch for batch, _ in ids)
    # Every batch reported durable is there whole ...
    assert len(durable) >= 15
    for batch_id in durable:
        assert batches[batch_id] == 100
    # ... nothing appears that was not sent, and duplicates are whole re-sent requests.
    assert set(batches) <= {r.batch_id for r in sent}
    duplicates = sum(n - 1 for n in ids.values())
    print(f"durable={len(durable)} failed={len(failed)} duplicates={duplicates}")
    # The restarted stand-in does not know the first one's OAuth token: refused once, a new
    # one is fetched and the batch sent again.
    assert fetched == 2
    bootstrap = endpoints["kafka_bootstrap"]
    for message in failed:
        assert message.startswith(f"cannot reach the Zerobus Kafka endpoint {bootstrap}: ")


async def test_the_api_lists_it(client):
    listed = {w["name"]: w for w in client.get("/api/v1/writers").json()}
    assert (listed[NAME]["available"], listed[NAME]["reason"]) == (True, None)
    assert listed[NAME]["details"]["bootstrap"].startswith("127.0.0.1:")


async def test_a_value_json_cannot_carry_fails_the_batch_before_sending(local_stack, writer):
    await support.check_nan_refused(local_stack, writer, "kafka")
