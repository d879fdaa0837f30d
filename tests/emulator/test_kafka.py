"""The local stack's Kafka-protocol listener: the producer APIs on the real wire (TLS, SASL
OAUTHBEARER), spoken by librdkafka (confluent-kafka) and by a raw client built on
kafka-python's protocol classes, for what librdkafka does not show (error messages,
record_errors, pipelining, bad frames)."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
import pytest
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.metadata.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse
from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from kafka.record.memory_records import MemoryRecordsBuilder

from emulator.kafka import parse_oauthbearer
from tests.emulator.zerobus_support import product, read_rows, to_json
from writers.zerobus_oauth import authorization_details

INVALID_RECORD = 87
UNSUPPORTED_VERSION = 35


class RawClient:
    """One TLS connection speaking Kafka requests encoded by kafka-python."""

    def __init__(self, endpoints: dict[str, Any]) -> None:
        host, port = endpoints["kafka_bootstrap"].rsplit(":", 1)
        context = ssl.create_default_context(cafile=endpoints["ca_file"])
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, request: Any) -> int:
        self.sock.sendall(self.frame(request))
        return self.correlation

    def frame(self, request: Any) -> bytes:
        self.correlation += 1
        request.with_header(correlation_id=self.correlation, client_id="raw-test")
        return bytes(request.encode(header=True, framed=True))

    def receive(self, response: Any, version: int) -> Any:
        size = int.from_bytes(self._exactly(4), "big")
        return response.decode(self._exactly(size), version=version, header=True)

    def call(self, request: Any, response: Any) -> Any:
        self.send(request)
        return self.receive(response, request.API_VERSION)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def authenticate(self, token: str) -> Any:
        hand = self.call(SaslHandshakeRequest[1](mechanism="OAUTHBEARER"), SaslHandshakeResponse)
        assert hand.error_code == 0
        message = f"n,,\x01auth=Bearer {token}\x01\x01".encode()
        return self.call(SaslAuthenticateRequest[1](auth_bytes=message), SaslAuthenticateResponse)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data


def records(values: list[bytes], *, compression: int = 0, producer_id: int = -1) -> bytes:
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 24)
    if producer_id >= 0:
        builder.set_producer_state(producer_id, 0, 0, False)
    for value in values:
        builder.append(timestamp=None, key=b"ignored", value=value)
    builder.close()
    return bytes(builder.buffer())


def produce(topic: str, data: bytes, *, acks: int = -1, version: int = 8) -> Any:
    partition = ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=data)
    return ProduceRequest[version](
        transactional_id=None,
        acks=acks,
        timeout_ms=10_000,
        topic_data=[ProduceRequest.TopicProduceData(name=topic, partition_data=[partition])],
    )


def partition_of(answer: Any) -> Any:
    return answer.responses[0].partition_responses[0]


def oauth_token(endpoints: dict[str, Any], table: str) -> str:
    resp = httpx.post(
        f"{endpoints['api_url']}/oidc/v1/token",
        data={
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": json.dumps(authorization_details(table)),
        },
        auth=(endpoints["oauth_client_id"], endpoints["oauth_client_secret"]),
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def status(endpoints: dict[str, Any]) -> dict[str, Any]:
    return httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
    ).json()


def producer(endpoints: dict[str, Any], **config: Any) -> Any:
    token = config.pop("token", endpoints["token"])
    return confluent_kafka.Producer(
        {
            "bootstrap.servers": endpoints["kafka_bootstrap"],
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "OAUTHBEARER",
            "oauth_cb": lambda _: (token, time.time() + 3600),
            "ssl.ca.location": endpoints["ca_file"],
            "acks": "all",
            "enable.idempotence": False,
            "compression.type": "none",
            "message.timeout.ms": 10_000,
            "topic.metadata.propagation.max.ms": 1000,
            **config,
        }
    )


def deliver(p: Any, topic: str, values: list[bytes]) -> list[tuple[str | None, int]]:
    """Produce and flush; each record's (error name or None, offset)."""
    reports: list[tuple[str | None, int]] = []
    for value in values:
        p.produce(
            topic,
            value,
            on_delivery=lambda err, msg: reports.append((err and err.name(), msg.offset())),
        )
    assert p.flush(20) == 0
    return reports


@pytest.fixture
def client(local_stack):
    c = RawClient(local_stack)
    yield c
    c.close()


def test_the_bootstrap_is_published_on_loopback(local_stack):
    assert local_stack["kafka_bootstrap"].startswith("127.0.0.1:")
    published = httpx.get(
        f"{local_stack['api_url']}/api/local/endpoints",
        headers={"Authorization": f"Bearer {local_stack['token']}"},
    ).json()
    assert published["kafka_bootstrap"] == local_stack["kafka_bootstrap"]


def test_api_versions_lists_the_producer_apis(client):
    answer = client.call(
        ApiVersionsRequest[3](client_software_name="raw", client_software_version="1"),
        ApiVersionsResponse,
    )
    assert answer.error_code == 0
    assert {(k.api_key, k.min_version, k.max_version) for k in answer.api_keys} == {
        (0, 3, 8),  # Produce
        (1, 4, 4),  # Fetch: listed for librdkafka's record batch v2, not served
        (3, 0, 8),  # Metadata
        (17, 1, 1),  # SaslHandshake
        (18, 0, 3),  # ApiVersions
        (36, 0, 1),  # SaslAuthenticate
    }
    # A version not offered: UNSUPPORTED_VERSION, with the v0 body listing what is.
    client.send(ApiVersionsRequest[4](client_software_name="raw", client_software_version="1"))
    refused = client.receive(ApiVersionsResponse, 4)
    assert refused.error_code == UNSUPPORTED_VERSION
    assert (18, 0, 3) in {(k.api_key, k.min_version, k.max_version) for k in refused.api_keys}


def test_only_sasl_comes_before_authentication(client):
    client.send(MetadataRequest[8](topics=None, allow_auto_topic_creation=False))
    assert client.closed_by_server()


def test_sasl_refuses_other_mechanisms_and_wrong_tokens(local_stack, client):
    plain = client.call(SaslHandshakeRequest[1](mechanism="PLAIN"), SaslHandshakeResponse)
    assert (plain.error_code, plain.mechanisms) == (33, ["OAUTHBEARER"])  # UNSUPPORTED_SASL_...
    wrong = "not-the-token-" + secrets.token_hex(8)
    failed = client.authenticate(wrong)
    assert failed.error_code == 58  # SASL_AUTHENTICATION_FAILED
    assert failed.error_message == "authentication failed: invalid or missing bearer token"
    assert client.closed_by_server()
    # Good or bad, no token reaches the stand-in's log.
    ok = RawClient(local_stack)
    try:
        assert ok.authenticate(local_stack["token"]).error_code == 0
    finally:
        ok.close()
    logged = Path(local_stack["data_dir"], "local-stack.log").read_text()
    assert "kafka_sasl_failed" in logged
    assert wrong not in logged and local_stack["token"] not in logged


def test_an_idempotent_librdkafka_producer_is_told_it_is_not_supported(local_stack):
    """No InitProducerId is offered: librdkafka stops the producer with a fatal error."""
    p = producer(local_stack, **{"enable.idempotence": True})
    deadline = time.monotonic() + 20
    with pytest.raises(confluent_kafka.KafkaException) as fatal:
        while time.monotonic() < deadline:
            p.poll(0.1)
    error = fatal.value.args[0]
    assert (error.fatal(), error.name()) == (True, "_UNSUPPORTED_FEATURE")
    assert error.str().startswith("Idempotent producer not supported by any of the 1 connected")


def test_the_oauthbearer_client_message_is_parsed_strictly():
    assert parse_oauthbearer(b"n,,\x01auth=Bearer abc\x01\x01") == "Bearer abc"
    assert parse_oauthbearer(b"n,a=me,\x01host=h\x01auth=Bearer abc\x01\x01") == "Bearer abc"
    for bad, why in [
        (b"n,,\x01auth=Bearer abc\x01", "does not end with \\x01\\x01"),
        (b"x\x01auth=Bearer abc\x01\x01", "has no GS2 header (n,,)"),
        (b"n,,\x01host=h\x01\x01", "has no auth=Bearer <token>"),
    ]:
        with pytest.raises(ValueError) as refused:
            parse_oauthbearer(bad)
        assert str(refused.value) == f"the OAUTHBEARER client message {why}"


def test_metadata_names_tables_as_topics(local_stack, client, products_table):
    assert client.authenticate(local_stack["token"]).error_code == 0
    answer = client.call(
        MetadataRequest[8](
            topics=[
                MetadataRequest.MetadataRequestTopic(name=products_table),
                MetadataRequest.MetadataRequestTopic(name="main.default.no_such_table"),
            ],
            allow_auto_topic_creation=True,
        ),
        MetadataResponse,
    )
    host, port = local_stack["kafka_bootstrap"].rsplit(":", 1)
    assert [(b.node_id, b.host, b.port) for b in answer.brokers] == [(1, host, int(port))]
    found, missing = answer.topics
    assert (found.name, found.error_code) == (products_table, 0)
    assert [(p.partition_index, p.leader_id, p.replica_nodes) for p in found.partitions] == [
        (0, 1, [1])
    ]
    assert (missing.error_code, missing.partitions) == (3, [])  # UNKNOWN_TOPIC_OR_PARTITION
    # All topics: every table.
    every = client.call(MetadataRequest[8](topics=None), MetadataResponse)
    assert products_table in {t.name for t in every.topics}


def test_a_token_scoped_to_another_table_is_not_authorized(local_stack, products_table):
    other = products_table + "_other"
    c = RawClient(local_stack)
    try:
        assert c.authenticate(oauth_token(local_stack, other)).error_code == 0
        answer = c.call(produce(products_table, records([to_json(product(1)).encode()])),
                        ProduceResponse)  # fmt: skip
        refused = partition_of(answer)
        assert refused.error_code == 29  # TOPIC_AUTHORIZATION_FAILED
        assert refused.error_message == f"the OAuth token does not grant writes on {products_table}"
    finally:
        c.close()
    assert read_rows(local_stack, products_table) == []
    # The table's own token writes.
    c = RawClient(local_stack)
    try:
        assert c.authenticate(oauth_token(local_stack, products_table)).error_code == 0
        answer = c.call(produce(products_table, records([to_json(product(1)).encode()])),
                        ProduceResponse)  # fmt: skip
        assert (partition_of(answer).error_code, partition_of(answer).base_offset) == (0, 0)
    finally:
        c.close()
    assert len(read_rows(local_stack, products_table)) == 1


def test_produce_rules_refuse_acks_compression_and_producer_ids(
    local_stack, client, products_table
):
    assert client.authenticate(local_stack["token"]).error_code == 0
    value = to_json(product(1)).encode()
    cases = [
        (produce(products_table, records([value]), acks=1), 21,
         "acks=1 is not supported: Zerobus needs acks=all (-1)"),
        (produce(products_table, records([value], compression=1)), 76,
         "compressed record batches are not supported: set compression.type=none"),
        (produce(products_table, records([value], producer_id=7)), INVALID_RECORD,
         "idempotent and transactional producers are not supported: set "
         "enable.idempotence=false"),
    ]  # fmt: skip
    for request, code, message in cases:
        refused = partition_of(client.call(request, ProduceResponse))
        assert (refused.error_code, refused.error_message) == (code, message)
        assert refused.base_offset == -1
    # An API not offered whose answer can say so: UNSUPPORTED_VERSION.
    init = client.call(
        InitProducerIdRequest[1](transactional_id=None, transaction_timeout_ms=1000),
        InitProducerIdResponse,
    )
    assert init.error_code == UNSUPPORTED_VERSION
    assert read_rows(local_stack, products_table) == []


def test_librdkafka_with_acks_1_or_compression_is_refused(local_stack, products_table):
    value = to_json(product(1)).encode()
    assert deliver(producer(local_stack, acks=1), products_table, [value]) == [
        ("INVALID_REQUIRED_ACKS", None)
    ]
    gzip = producer(local_stack, **{"compression.type": "gzip"})
    assert deliver(gzip, products_table, [value]) == [("UNSUPPORTED_COMPRESSION_TYPE", None)]
    assert read_rows(local_stack, products_table) == []


def test_a_record_that_does_not_fit_writes_nothing_of_its_batch(local_stack, products_table):
    """INVALID_RECORD with the field's error and the record's index; meanwhile a good
    producer (librdkafka) on the same table has all its rows committed."""
    good_values = [to_json(product(i, prefix="good")).encode() for i in range(300)]
    reports: list[Any] = []

    def good_producer() -> None:
        p = producer(local_stack)
        for chunk in range(3):
            reports.extend(deliver(p, products_table, good_values[chunk * 100 : chunk * 100 + 100]))

    thread = threading.Thread(target=good_producer)
    thread.start()
    bad = [to_json(product(i, prefix="bad")).encode() for i in range(5)]
    bad[3] = json.dumps({**json.loads(bad[3]), "colour": "red"}).encode()
    c = RawClient(local_stack)
    try:
        assert c.authenticate(local_stack["token"]).error_code == 0
        refused = partition_of(c.call(produce(products_table, records(bad)), ProduceResponse))
    finally:
        c.close()
        thread.join()
    message = (
        "record 3: field 'colour' is not a column of the table (columns: "
        "record_id, product_id, product_name, product_price, category, sale_start_date, "
        "sale_stop_date, processed_at, batch_id, source, description)"
    )
    assert (refused.error_code, refused.error_message) == (INVALID_RECORD, message)
    assert [(e.batch_index, e.batch_index_error_message) for e in refused.record_errors] == [
        (3, message)
    ]
    assert [err for err, _ in reports] == [None] * 300
    assert sorted(offset for _, offset in reports) == list(range(300))
    rows = read_rows(local_stack, products_table)
    assert sorted(r["record_id"] for r in rows) == sorted(
        json.loads(v)["record_id"] for v in good_values
    )


async def test_pipelined_requests_are_answered_in_order_and_bytes_counted(
    local_stack, products_table
):
    c = RawClient(local_stack)
    try:
        assert c.authenticate(local_stack["token"]).error_code == 0
        before = status(local_stack)["wire_bytes"].get("zerobus-kafka", {})
        frames = [
            c.frame(produce(products_table, records([to_json(product(k * 10 + i)).encode()
                                                     for i in range(10)])))
            for k in range(20)
        ]  # fmt: skip
        c.sock.sendall(b"".join(frames))  # all in flight at once
        answers = [c.receive(ProduceResponse, 8) for _ in frames]
    finally:
        c.close()
    assert [a.header.correlation_id for a in answers] == list(range(3, 23))
    assert all(partition_of(a).error_code == 0 for a in answers)
    offsets = sorted(partition_of(a).base_offset for a in answers)
    assert offsets == list(range(0, 200, 10))
    assert len(read_rows(local_stack, products_table)) == 200
    after = status(local_stack)["wire_bytes"]["zerobus-kafka"]
    assert after[products_table] - before.get(products_table, 0) == sum(map(len, frames))
    commits = status(local_stack)["tables"][products_table]["commits"]
    assert commits < 20  # the pipelined requests shared commits
    assert status(local_stack)["zerobus_kafka"]["produce_requests"] >= 20


@pytest.mark.parametrize(
    "frame",
    [
        (200 * 1024 * 1024).to_bytes(4, "big") + b"x" * 16,  # over the size limit
        (-5).to_bytes(4, "big", signed=True),
        (12).to_bytes(4, "big") + b"\x00\x03\x00\x08\x00\x00\x00\x01\xff\xff\xff\xff",  # garbage
    ],
    ids=["oversized", "negative", "garbage"],
)
def test_a_bad_frame_closes_only_its_connection(local_stack, frame):
    bystander = RawClient(local_stack)
    c = RawClient(local_stack)
    try:
        assert c.authenticate(local_stack["token"]).error_code == 0
        c.sock.sendall(frame)
        assert c.closed_by_server()
        answer = bystander.call(ApiVersionsRequest[0](), ApiVersionsResponse)
        assert answer.error_code == 0
    finally:
        c.close()
        bystander.close()


def test_a_client_without_the_ca_fails_verification(local_stack):
    host, port = local_stack["kafka_bootstrap"].rsplit(":", 1)
    context = ssl.create_default_context()  # the system store: not the stack's CA
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=host)


async def test_unknown_table_through_librdkafka(local_stack):
    reports = await asyncio.to_thread(
        deliver, producer(local_stack), "main.default.kafka_nothing", [b"{}"]
    )
    assert reports == [("UNKNOWN_TOPIC_OR_PART", None)]
