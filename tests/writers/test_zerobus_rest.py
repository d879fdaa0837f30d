"""The zerobus-rest writer against the local stack's REST route and OAuth token route:
rows read back exactly, the service's errors passed on, retries bounded, secrets kept."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from dwbench.errors import WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
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
from writers.zerobus_oauth import TableTokens
from writers.zerobus_rest import ZerobusRestSettings, ZerobusRestWriter

NAME = "zerobus-rest"


def products_table(endpoints: dict[str, Any], prefix: str = "rest_products") -> TableRef:
    return support.products_table(endpoints, prefix)


def products_rows(table: TableRef, n: int, *, seed: int = 7) -> Rows:
    return support.products_rows(table, n, NAME, seed=seed)


@pytest.fixture
async def writer(local_stack):
    instance = ZerobusRestWriter(local_targets(local_stack))
    await instance.open()
    yield instance
    await instance.close()


def test_registered_with_its_metadata():
    assert writer_class(NAME) is ZerobusRestWriter
    assert writer_metadata(NAME) == {
        "name": NAME,
        "label": "Zerobus Ingest (REST, JSON)",
        "family": "zerobus",
        "color": "#d9480f",
        "stores_rows": True,
        "client_distributions": ["httpx"],
    }


async def test_products_read_back_exactly(local_stack, writer):
    table = products_table(local_stack)
    rows = products_rows(table, 50)
    await writer.prepare(table)
    receipt = await writer.write(rows)
    assert receipt.rows == 50 and receipt.details["attempts"] == 1
    assert exact(batch_rows(local_stack, table, rows.batch_id)) == exact(
        sorted(rows.data.to_pylist(), key=lambda r: next(iter(r.values())))
    )
    assert await writer.count_rows(table, rows.batch_id) == 50
    # Through the OAuth path: one token for the table, reused for the next batch.
    await writer.write(products_rows(table, 5, seed=8))
    assert writer.describe()["tokens_fetched"] == 1
    assert writer.describe()["auth_mode"].startswith("oauth-m2m (client_id=loca")


async def test_telemetry_reads_back_exactly(local_stack, writer):
    for batch in support.telemetry_batches(local_stack, "rest", NAME):
        assert (await writer.write(batch)).rows == 200
        support.assert_read_back(local_stack, batch, NAME)


async def test_nested_types_and_nulls_read_back_exactly(local_stack, writer):
    await support.check_nested_types(local_stack, writer, "rest")


async def test_decimal_is_refused_before_writing(local_stack, writer):
    await support.check_decimal_refused(local_stack, writer, "rest")
    assert writer.requests == 0


async def test_a_wrong_token_fails_with_the_service_error(local_stack):
    targets = local_targets(
        local_stack,
        **{NAME: ZerobusRestSettings(endpoint=local_stack["zerobus_rest_url"], auth="token")},
    )
    good = ZerobusRestWriter(targets)
    bad = ZerobusRestWriter(
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
        with pytest.raises(WriteFailedError) as failed:
            await bad.write(products_rows(table, 3))
        assert failed.value.message == (
            "Zerobus REST answered HTTP 401 UNAUTHENTICATED: invalid or missing bearer token"
        )
        assert bad.requests == 1  # a 4xx is not tried again
        assert delta_rows(local_stack, table.delta_table) == []
        assert (await good.write(products_rows(table, 3))).rows == 3  # the stack's token works
        assert good.describe()["auth_mode"] == "bearer token (local stack)"
    finally:
        for w in (good, bad):
            await w.close()


async def test_an_unknown_table_is_not_found(local_stack, writer):
    table = products.WORKLOAD.table.with_tables(delta_table="main.default.rest_missing")
    with pytest.raises(WriteFailedError) as failed:
        await writer.write(products_rows(table, 2))
    assert failed.value.message == (
        "Zerobus REST answered HTTP 404 NOT_FOUND: table main.default.rest_missing does not exist"
    )


async def test_a_schema_mismatch_is_invalid_and_writes_nothing(local_stack, writer):
    name = f"main.default.rest_narrow_{secrets.token_hex(3)}"
    run_sql(local_stack, f"CREATE TABLE {name} (id BIGINT NOT NULL, batch_id STRING)")
    wider = TableSchema.from_ddl("id BIGINT NOT NULL, colour STRING, batch_id STRING")
    table = unique_table("narrow", wider).with_tables(delta_table=name)
    data = pa.RecordBatch.from_pylist(
        [{"id": 1, "colour": "red", "batch_id": "b1"}], schema=wider.arrow()
    )
    with pytest.raises(WriteFailedError) as failed:
        await writer.write(Rows(table, data, "b1"))
    assert failed.value.message == (
        "Zerobus REST answered HTTP 400 INVALID_PARAMETER_VALUE: record 0: field 'colour' is "
        "not a column of the table (columns: id, batch_id)"
    )
    assert delta_rows(local_stack, name) == []


async def test_databricks_mode_uses_the_documented_grant(local_stack):
    """DATABRICKS_CLIENT_ID/SECRET against {workspace}/oidc/v1/token, the Zerobus endpoint
    from the zerobus writer's setting: here the local stack stands in for both."""
    writer = ZerobusRestWriter(workspace_targets(local_stack, local_stack["oauth_client_secret"]))
    await writer.open()
    try:
        assert writer.endpoint == local_stack["zerobus_rest_url"]
        # The workspace id in the token's resource: the first label of the Zerobus host.
        assert writer._tokens is not None and writer._tokens.client.workspace_id == "127"
        table = products_table(local_stack)
        rows = products_rows(table, 4)
        assert (await writer.write(rows)).rows == 4
        assert len(batch_rows(local_stack, table, rows.batch_id)) == 4
    finally:
        await writer.close()


async def test_a_wrong_secret_is_unavailable_and_never_shown(local_stack, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "wrong-" + secrets.token_hex(12)
    writer = ZerobusRestWriter(workspace_targets(local_stack, secret))
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
        assert writer.requests == 0 and delta_rows(local_stack, table.delta_table) == []
        shown = [failed.value.message, repr(writer.describe()), repr(writer._tokens.client)]
    finally:
        await writer.close()
    out, err = capfd.readouterr()
    for text in [*shown, out, err, caplog.text]:
        assert secret not in text
        assert local_stack["oauth_client_secret"] not in text


async def test_no_secret_or_token_in_output_of_a_good_run(local_stack, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    writer = ZerobusRestWriter(local_targets(local_stack))
    await writer.open()
    try:
        table = products_table(local_stack)
        await writer.write(products_rows(table, 2))
        assert writer._tokens is not None
        token = await writer._tokens.get(table.delta_table)
        shown = json.dumps(writer.describe())
    finally:
        await writer.close()
    out, err = capfd.readouterr()
    for text in (shown, out, err, caplog.text):
        assert local_stack["oauth_client_secret"] not in text and token not in text


async def test_tokens_are_cached_until_shortly_before_expiry(local_stack, writer):
    assert writer._tokens is not None
    now = {"t": 0.0}
    tokens = TableTokens(writer._tokens.client, httpx.AsyncClient(), clock=lambda: now["t"])
    first = await tokens.get("main.default.products")
    assert await tokens.get("main.default.products") == first and tokens.fetched == 1
    await tokens.get("main.default.other")  # one token per table
    assert tokens.fetched == 2
    now["t"] = 3600 - 60 - 0.001  # the stack's tokens live 3600 s; fetched anew 60 s before
    assert await tokens.get("main.default.products") == first
    now["t"] += 0.002
    assert await tokens.get("main.default.products") != first and tokens.fetched == 3
    await tokens._http.aclose()


class FlakyService:
    """A Zerobus REST stand-in answering a scripted status per request, for retries."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        if status == 200:
            return httpx.Response(200, json={})
        return httpx.Response(
            status, json={"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}
        )


async def scripted_writer(local_stack, handler) -> tuple[ZerobusRestWriter, list[float]]:
    writer = ZerobusRestWriter(local_targets(local_stack))
    writer.transport = httpx.MockTransport(handler)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    writer._sleep = sleep
    await writer.open()
    return writer, slept


async def test_5xx_is_retried_with_exponential_backoff(local_stack):
    service = FlakyService([503, 502, 200])
    writer, slept = await scripted_writer(local_stack, service)
    try:
        table = products.WORKLOAD.table
        receipt = await writer.write(products_rows(table, 3))
        assert receipt.details["attempts"] == 3 and slept == [0.2, 0.4]
        bodies = [json.loads(r.content) for r in service.requests]
        assert bodies[0] == bodies[1] == bodies[2] and len(bodies[0]) == 3
        assert service.requests[0].url.path == "/zerobus/v1/tables/main.default.products/insert"
        assert service.requests[0].headers["content-type"] == "application/json"
        assert service.requests[0].headers["authorization"].startswith("Bearer ")
    finally:
        await writer.close()


async def test_giving_up_says_how_many_tries(local_stack):
    service = FlakyService([503])
    writer, slept = await scripted_writer(local_stack, service)
    try:
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(products_rows(products.WORKLOAD.table, 3))
        assert failed.value.message == (
            "Zerobus REST answered HTTP 503 TEMPORARILY_UNAVAILABLE: try later "
            "(gave up after 4 tries)"
        )
        assert len(service.requests) == 4 and slept == [0.2, 0.4, 0.8]
        assert writer.last_error == failed.value.message
    finally:
        await writer.close()


async def test_a_request_without_an_answer_is_not_sent_again(local_stack):
    seen: list[httpx.Request] = []

    def no_answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    writer, slept = await scripted_writer(local_stack, no_answer)
    try:
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(products_rows(products.WORKLOAD.table, 3))
        assert failed.value.message == (
            "no answer within 60 s; the rows are not counted as written (the service may "
            "still commit them)"
        )
        assert len(seen) == 1 and slept == []
    finally:
        await writer.close()


async def test_an_unreachable_endpoint_is_retried_then_unavailable(local_stack):
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    writer, slept = await scripted_writer(local_stack, refused)
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(products_rows(products.WORKLOAD.table, 1))
        assert failed.value.message == (
            f"cannot connect to {local_stack['zerobus_rest_url']}: connection refused "
            "(gave up after 4 tries)"
        )
        assert slept == [0.2, 0.4, 0.8]
    finally:
        await writer.close()


def test_unconfigured_in_databricks_mode():
    writer = ZerobusRestWriter(Targets(mode="databricks", settings=Settings(app_mode="databricks")))
    assert writer._config_problem() == (
        "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"
    )


async def test_the_api_lists_it(client):
    listed = {w["name"]: w for w in client.get("/api/v1/writers").json()}
    assert (listed[NAME]["available"], listed[NAME]["reason"]) == (True, None)
    assert listed[NAME]["details"]["endpoint"].startswith("http://127.0.0.1:")


async def test_a_refused_cached_token_is_fetched_anew_once(local_stack):
    """A 401 on a cached token (the service restarted, say) means nothing was written: the
    writer fetches a new token and sends the batch once more; a second 401 fails."""
    service = FlakyService([200, 401, 200])
    writer, slept = await scripted_writer(local_stack, service)
    try:
        table = products.WORKLOAD.table
        await writer.write(products_rows(table, 1))
        assert (await writer.write(products_rows(table, 2))).rows == 2
        assert len(service.requests) == 3 and slept == []
        assert writer.describe()["tokens_fetched"] == 2
        tokens = [r.headers["authorization"] for r in service.requests]
        assert tokens[0] == tokens[1] != tokens[2]
    finally:
        await writer.close()
    always = FlakyService([401])
    writer, slept = await scripted_writer(local_stack, always)
    try:
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(products_rows(products.WORKLOAD.table, 1))
        assert failed.value.message.startswith("Zerobus REST answered HTTP 401 ")
        assert len(always.requests) == 2 and slept == []
    finally:
        await writer.close()


async def test_a_value_json_cannot_carry_fails_the_batch_before_sending(local_stack, writer):
    await support.check_nan_refused(local_stack, writer, "rest")
