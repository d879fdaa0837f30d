"""The local stack's MQTT v5 listener with the real paho client over TLS, raw packets for
what paho would never send, and the packet codec on its own."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from emulator import mqtt_codec as codec
from emulator.catalog import Catalog
from emulator.mqtt import ZerobusMqttService
from emulator.mqtt_codec import PacketType, Prop
from emulator.oauth import OAuthIssuer
from emulator.schema import TableSchema
from emulator.tls import LocalTls
from emulator.wire import ZEROBUS_MQTT, WireCounters
from tests.conftest import run_sql
from tests.emulator.zerobus_support import product, read_rows, to_json
from writers.zerobus_oauth import authorization_details

WAIT_S = 20.0

# -- the codec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_round_trip_at_their_edges(value, encoded):
    assert codec.encode_variable_byte_integer(value) == encoded
    assert codec.decode_variable_byte_integer(encoded + b"tail") == (value, len(encoded))
    assert codec.read_remaining_length(encoded) == value


def test_variable_byte_integers_past_four_bytes_are_malformed():
    with pytest.raises(ValueError, match="does not fit"):
        codec.encode_variable_byte_integer(268_435_456)
    with pytest.raises(codec.MalformedPacket, match="longer than 4 bytes"):
        codec.decode_variable_byte_integer(b"\xff\xff\xff\xff\x01")
    with pytest.raises(codec.MalformedPacket, match="longer than 4 bytes"):
        codec.read_remaining_length(b"\x80\x80\x80\x80\x01")
    with pytest.raises(codec.MalformedPacket, match="runs past the end"):
        codec.decode_variable_byte_integer(b"\x80\x80")
    assert codec.read_remaining_length(b"\x80\x80") is None  # more bytes needed


def test_properties_round_trip_with_repeated_user_properties():
    items = [
        (Prop.RECEIVE_MAXIMUM, 4096),
        (Prop.USER_PROPERTY, ("authorization", "Bearer x")),
        (Prop.USER_PROPERTY, ("k", "ünïcode ✓")),
        (Prop.SESSION_EXPIRY_INTERVAL, 2**32 - 1),
        (Prop.AUTHENTICATION_DATA, b"\x00\xff"),
        (Prop.MAXIMUM_PACKET_SIZE, 1),
    ]
    reader = codec.Reader(codec.encode_properties(items))
    props = reader.properties(codec.CLIENT_PROPERTIES["CONNECT"], "CONNECT")
    assert props.items == items and reader.remaining() == 0
    assert props.user_properties() == [("authorization", "Bearer x"), ("k", "ünïcode ✓")]
    assert props.get(Prop.RECEIVE_MAXIMUM) == 4096 and Prop.TOPIC_ALIAS not in props


def test_bad_properties_and_strings_are_refused():
    twice = codec.encode_properties([(Prop.RECEIVE_MAXIMUM, 1), (Prop.RECEIVE_MAXIMUM, 2)])
    with pytest.raises(codec.ProtocolError, match="RECEIVE_MAXIMUM appears twice"):
        codec.Reader(twice).properties(codec.CLIENT_PROPERTIES["CONNECT"], "CONNECT")
    alias = codec.encode_properties([(Prop.TOPIC_ALIAS, 1)])
    with pytest.raises(codec.ProtocolError, match="a CONNECT may not carry the property"):
        codec.Reader(alias).properties(codec.CLIENT_PROPERTIES["CONNECT"], "CONNECT")
    with pytest.raises(codec.MalformedPacket, match="unknown property identifier 0x7f"):
        codec.Reader(b"\x01\x7f").properties(frozenset(Prop), "CONNECT")
    with pytest.raises(codec.MalformedPacket, match="U\\+0000"):
        codec.Reader(b"\x00\x03a\x00b").string()
    with pytest.raises(codec.MalformedPacket, match="not well-formed UTF-8"):
        codec.Reader(b"\x00\x02\xc3\x28").string()
    with pytest.raises(codec.MalformedPacket, match="ends before its fields"):
        codec.Reader(b"\x00\x05ab").string()


def test_connect_and_publish_round_trip():
    packet = codec.connect(
        client_id="c1", keep_alive=30, properties=[(Prop.USER_PROPERTY, ("a", "b"))]
    )
    assert packet[0] == 0x10 and codec.read_remaining_length(packet[1:2]) == len(packet) - 2
    reader, name, level = codec.decode_connect_header(packet[2:])
    connect = codec.decode_connect(reader, name, level)
    assert (connect.protocol_name, connect.protocol_level, connect.keep_alive) == ("MQTT", 5, 30)
    assert (connect.client_id, connect.clean_start, connect.will) == ("c1", True, False)
    assert connect.properties.user_properties() == [("a", "b")]
    packet = codec.publish("main.default.t", b'{"id":1}', qos=1, packet_id=7)
    pub = codec.decode_publish(packet[0] & 0x0F, packet[2:])
    assert (pub.topic, pub.qos, pub.packet_id, pub.payload) == ("main.default.t", 1, 7, b'{"id":1}')
    with pytest.raises(codec.MalformedPacket, match="QoS 3"):
        codec.decode_publish(0b0110, packet[2:])
    assert codec.decode_ack(codec.ack(PacketType.PUBACK, 9, 0x99, "no")[2:]) == (
        9,
        0x99,
        codec.Properties([(Prop.REASON_STRING, "no")]),
    )


# -- paho against the session's stack -------------------------------------------------------


def tls_context(endpoints: dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=endpoints["ca_file"])


class Client:
    """A paho v5 client on its network thread, with what the server said kept."""

    def __init__(
        self,
        endpoints: dict[str, Any],
        table: str | None,
        *,
        token: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=protocol, reconnect_on_failure=False
        )
        self.client.tls_set_context(context or tls_context(endpoints))
        self.client.max_inflight_messages = 0
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.lock = threading.Lock()
        self.acks: dict[int, tuple[int, str | None]] = {}
        self.connack: tuple[int, Any] | None = None
        self.disconnect: tuple[int, Any] | None = None
        self.suback: list[int] | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        props: PahoProperties | None = None
        if protocol == mqtt.MQTTv5:
            props = PahoProperties(PacketTypes.CONNECT)
            users = [("Authorization", f"Bearer {token or endpoints['token']}")]
            if table is not None:
                users.append(("x-databricks-zerobus-table-name", table))
            props.UserProperty = users
        host, port = endpoints["mqtt_endpoint"].rsplit(":", 1)
        self.client.connect(host, int(port), keepalive=30, properties=props)
        self.client.loop_start()
        for _ in range(int(WAIT_S * 100)):  # a CONNACK, or the end of the connection
            if self.connected.is_set() or self.gone.is_set():
                break
            self.gone.wait(0.01)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.connack = (reason.value, properties)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.disconnect = (reason.value, properties)
        self.gone.set()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self.lock:
            self.acks[mid] = (reason.value, getattr(properties, "ReasonString", None))

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        self.suback = [r.value for r in reasons]

    def publish(self, topic: str, payloads: list[str], *, qos: int = 1) -> list[int]:
        return [self.client.publish(topic, p, qos=qos).mid for p in payloads]

    def wait_acks(self, mids: list[int]) -> list[tuple[int, str | None]]:
        deadline = threading.Event()
        for _ in range(int(WAIT_S * 100)):
            with self.lock:
                if all(m in self.acks for m in mids):
                    return [self.acks[m] for m in mids]
            if self.gone.is_set():
                break
            deadline.wait(0.01)
        raise AssertionError(f"no PUBACK for all of {len(mids)} publishes: {self.disconnect}")

    def close(self) -> None:
        if not self.gone.is_set():
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def table(local_stack: dict[str, Any]) -> str:
    name = f"main.default.mqtt_{secrets.token_hex(4)}"
    from tests.conftest import products_ddl

    run_sql(local_stack, products_ddl(name))
    return name


def status(endpoints: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
    )
    return resp.json()


def test_rows_land_exactly_once_acknowledged(local_stack, table):
    before = status(local_stack)["wire_bytes"].get(ZEROBUS_MQTT, {}).get(table, 0)
    rows = [product(i, prefix="mqtt") for i in range(40)]
    client = Client(local_stack, table)
    try:
        assert client.connack is not None and client.connack[0] == 0
        props = client.connack[1]
        assert (props.ReceiveMaximum, props.MaximumQoS, props.RetainAvailable) == (4096, 1, 0)
        assert props.TopicAliasMaximum == 0 and props.WildcardSubscriptionAvailable == 0
        assert props.SubscriptionIdentifierAvailable == 0
        assert props.SharedSubscriptionAvailable == 0
        assert props.AssignedClientIdentifier.startswith("zerobus-")
        payloads = [to_json(r) for r in rows]
        acks = client.wait_acks(client.publish(table, payloads))
        assert acks == [(0, None)] * 40
        # A PUBACK means committed: the rows are in the Delta table now.
        assert read_rows(local_stack, table) == rows
    finally:
        client.close()
    after = status(local_stack)
    # Each PUBLISH packet counted whole: fixed header, topic, packet id, properties, payload.
    sizes = sum(len(codec.publish(table, p.encode(), qos=1, packet_id=1)) for p in payloads)
    assert after["wire_bytes"][ZEROBUS_MQTT][table] - before == sizes
    assert after["zerobus_mqtt"]["rows_committed"] >= 40
    assert after["tables"][table]["commits"] < 40  # publishes in flight share commits


def test_the_endpoint_is_published(local_stack):
    host, port = local_stack["mqtt_endpoint"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    published = httpx.get(
        f"{local_stack['api_url']}/api/local/endpoints",
        headers={"Authorization": f"Bearer {local_stack['token']}"},
    ).json()
    assert published["mqtt_endpoint"] == local_stack["mqtt_endpoint"]


def test_mqtt_3_1_1_is_refused_as_unsupported(local_stack, table):
    client = Client(local_stack, table, protocol=mqtt.MQTTv311)
    try:
        # paho's 3.1.1 client reads return code 1 (unacceptable protocol version) and ends.
        assert client.gone.wait(WAIT_S) and client.connack is None
    finally:
        client.close()
    with raw_connection(local_stack) as sock:
        sock.sendall(codec.connect(protocol_level=4))
        assert read_packet(sock) == (PacketType.CONNACK, b"\x00\x01")
        assert read_packet(sock) is None
    with raw_connection(local_stack) as sock:
        sock.sendall(codec.connect(protocol_level=6))
        packet = read_packet(sock)
        assert packet is not None
        _, reason, props = codec.decode_connack(packet[1])
        assert (reason, props.get(Prop.REASON_STRING)) == (
            0x84,
            "protocol level 6 is not supported: Zerobus Ingest speaks MQTT v5",
        )


def test_a_wrong_token_is_not_authorized(local_stack, table):
    client = Client(local_stack, table, token="wrong")
    try:
        assert client.connack is not None and client.connack[0] == 0x87
        assert client.connack[1].ReasonString == "invalid or missing bearer token"
    finally:
        client.close()


def test_an_unknown_or_missing_table_is_refused_with_a_reason(local_stack):
    missing = Client(local_stack, "main.default.mqtt_nowhere")
    absent = Client(local_stack, None)
    try:
        assert missing.connack is not None and missing.connack[0] == 0x90
        assert missing.connack[1].ReasonString == "table main.default.mqtt_nowhere does not exist"
        assert absent.connack is not None and absent.connack[0] == 0x83
        assert absent.connack[1].ReasonString == (
            "the CONNECT has no x-databricks-zerobus-table-name user property "
            "(the table to write into)"
        )
    finally:
        missing.close()
        absent.close()


def test_an_oauth_token_writes_only_into_its_tables(local_stack, table):
    other = f"main.default.mqtt_other_{secrets.token_hex(3)}"
    resp = httpx.post(
        f"{local_stack['api_url']}/oidc/v1/token",
        auth=(local_stack["oauth_client_id"], local_stack["oauth_client_secret"]),
        data={
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": json.dumps(authorization_details(table)),
        },
    )
    token = resp.json()["access_token"]
    good = Client(local_stack, table, token=token)
    bad = Client(local_stack, other, token=token)
    try:
        assert good.connack is not None and good.connack[0] == 0
        assert good.wait_acks(good.publish(table, [to_json(product(1))])) == [(0, None)]
        assert bad.connack is not None and bad.connack[0] == 0x87
        assert bad.connack[1].ReasonString == f"the OAuth token does not grant writes on {other}"
    finally:
        good.close()
        bad.close()
    log = Path(local_stack["data_dir"], "local-stack.log").read_text()
    assert "mqtt_connected" in log and token not in log and local_stack["token"] not in log


def test_qos_0_is_best_effort_and_in_order(local_stack, table):
    client = Client(local_stack, table)
    rows = [product(i, prefix="qos0") for i in range(3)]
    try:
        client.publish(table, [to_json(r) for r in rows[:2]] + ["{bad"], qos=0)
        # PUBACKs follow the order of the PUBLISHes: once this one is acknowledged, the
        # QoS 0 records sent before it were committed (or, the bad one, dropped).
        assert client.wait_acks(client.publish(table, [to_json(rows[2])])) == [(0, None)]
    finally:
        client.close()
    assert read_rows(local_stack, table) == rows


def test_qos_2_ends_the_connection_with_0x9b(local_stack, table):
    client = Client(local_stack, table)
    try:
        client.publish(table, [to_json(product(1))], qos=2)
        assert client.gone.wait(WAIT_S)
        assert client.disconnect is not None and client.disconnect[0] == 0x9B
        assert client.disconnect[1].ReasonString == (
            "QoS 2 is not supported by Zerobus Ingest; publish with QoS 1 (or 0)"
        )
    finally:
        client.close()
    assert read_rows(local_stack, table) == []


def test_a_retained_message_ends_the_connection_with_0x9a(local_stack, table):
    client = Client(local_stack, table)
    try:
        client.client.publish(table, to_json(product(1)), qos=1, retain=True)
        assert client.gone.wait(WAIT_S)
        assert client.disconnect is not None and client.disconnect[0] == 0x9A
    finally:
        client.close()


def test_a_bad_record_gets_0x99_and_another_clients_rows_land(local_stack, table):
    good = Client(local_stack, table)
    bad = Client(local_stack, table)
    rows = [product(i, prefix="good") for i in range(30)]
    try:
        good_mids = good.publish(table, [to_json(r) for r in rows])
        bad_mids = bad.publish(
            table,
            ["{not json", json.dumps({"record_id": "x", "colour": "red"}), to_json(product(99))],
        )
        assert good.wait_acks(good_mids) == [(0, None)] * 30
        answers = bad.wait_acks(bad_mids)
    finally:
        good.close()
        bad.close()
    assert [code for code, _ in answers] == [0x99, 0x99, 0]
    assert answers[0][1] is not None and answers[0][1].startswith("record 0 is not valid JSON: ")
    assert answers[1][1] is not None and answers[1][1].startswith(
        "record 0: field 'colour' is not a column of the table (columns: record_id, "
    )
    # Nothing of the bad records was written; the good client's rows and the fitting one were.
    back = read_rows(local_stack, table)
    assert sorted(r["record_id"] for r in back) == sorted(
        [r["record_id"] for r in rows] + [product(99)["record_id"]]
    )


def test_a_wrong_topic_gets_0x90(local_stack, table):
    client = Client(local_stack, table)
    try:
        answers = client.wait_acks(client.publish("main.default.elsewhere", [to_json(product(1))]))
    finally:
        client.close()
    assert answers == [
        (0x90, f"the topic 'main.default.elsewhere' is not this connection's table {table}")
    ]
    assert read_rows(local_stack, table) == []


def test_subscribe_is_refused_per_filter(local_stack, table):
    client = Client(local_stack, table)
    try:
        client.client.subscribe([(table, 1), ("main/#", 0), ("$share/g/x", 1)])
        for _ in range(int(WAIT_S * 100)):
            if client.suback is not None:
                break
            client.gone.wait(0.01)
        assert client.suback == [0x83, 0xA2, 0x9E]
        assert not client.gone.is_set()  # the connection carries on
        assert client.wait_acks(client.publish(table, [to_json(product(5))])) == [(0, None)]
    finally:
        client.close()


def test_a_client_without_the_ca_fails_verification(local_stack, table):
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(local_stack, table, context=ssl.create_default_context())


# -- raw packets ----------------------------------------------------------------------------


def raw_connection(endpoints: dict[str, Any]) -> ssl.SSLSocket:
    host, port = endpoints["mqtt_endpoint"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return tls_context(endpoints).wrap_socket(sock, server_hostname=host)


def read_packet(sock: ssl.SSLSocket) -> tuple[int, bytes] | None:
    """Type and body of the next packet; None when the server closed the connection."""
    head = sock.recv(1)
    if not head:
        return None
    length_bytes = b""
    while codec.read_remaining_length(length_bytes) is None:
        length_bytes += sock.recv(1)
    length = codec.read_remaining_length(length_bytes)
    assert length is not None
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return head[0] >> 4, body


def connected_raw(endpoints: dict[str, Any], table: str) -> ssl.SSLSocket:
    sock = raw_connection(endpoints)
    users = [
        (Prop.USER_PROPERTY, ("authorization", f"Bearer {endpoints['token']}")),
        (Prop.USER_PROPERTY, ("x-databricks-zerobus-table-name", table)),
    ]
    sock.sendall(codec.connect(client_id="raw", properties=users))
    packet = read_packet(sock)
    assert packet is not None and packet[0] == PacketType.CONNACK
    assert codec.decode_connack(packet[1])[1] == 0
    return sock


def test_garbage_before_connect_closes_the_connection(local_stack):
    with raw_connection(local_stack) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_packet(sock) is None


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (b"\x30\xff\xff\xff\x7f", 0x95, "a packet of 268435460 bytes exceeds the Maximum"),
        (b"\x30\xff\xff\xff\xff\x01", 0x81, "a Remaining Length longer than 4 bytes"),
        (b"\x62\x02\x00\x01", 0x82, "PUBREL: QoS 2 is not supported by Zerobus Ingest"),
        (b"\xc1\x00", 0x81, "packet type 12 with flags 0b0001"),
        (codec.publish("t", b"{}", qos=1, properties=[(Prop.TOPIC_ALIAS, 1)]), 0x94, "topic"),
    ],
)
def test_malformed_packets_end_only_that_connection(local_stack, table, data, reason, message):
    other = connected_raw(local_stack, table)
    with connected_raw(local_stack, table) as sock:
        sock.sendall(data)
        packet = read_packet(sock)
        assert packet is not None and packet[0] == PacketType.DISCONNECT
        code, props = codec.decode_disconnect(packet[1])
        assert code == reason and props.get(Prop.REASON_STRING).startswith(message)
        assert read_packet(sock) is None
    with other:  # the other connection carries on
        other.sendall(codec.publish(table, to_json(product(3)).encode(), packet_id=5))
        packet = read_packet(other)
        assert packet is not None and codec.decode_ack(packet[1])[:2] == (5, 0)


def test_pingreq_and_a_will(local_stack, table):
    with connected_raw(local_stack, table) as sock:
        sock.sendall(codec.encode_packet(PacketType.PINGREQ))
        assert read_packet(sock) == (PacketType.PINGRESP, b"")
    with raw_connection(local_stack) as sock:
        users = [(Prop.USER_PROPERTY, ("authorization", f"Bearer {local_stack['token']}"))]
        sock.sendall(codec.connect(properties=users, will=("t", b"bye")))
        packet = read_packet(sock)
        assert packet is not None
        _, reason, props = codec.decode_connack(packet[1])
        assert reason == 0x83
        assert props.get(Prop.REASON_STRING) == "wills are not supported by Zerobus Ingest"


async def test_more_than_receive_maximum_in_flight_is_0x93(tmp_path: Path):
    """A service of its own with a Receive Maximum of 2: three QoS 1 publishes read before
    any commit (one TLS record) exceed it."""
    catalog = Catalog(tmp_path)
    catalog.create_table("main.default.t", TableSchema.of(("record_id", "STRING"), ("n", "BIGINT")))
    tls = LocalTls.ensure(tmp_path / "tls")
    wire = WireCounters()
    service = ZerobusMqttService(catalog, OAuthIssuer("tok"), wire, receive_maximum=2)
    port = await service.start("127.0.0.1", 0, tls.server_context())
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(), server_hostname="127.0.0.1"
        )
        users = [
            (Prop.USER_PROPERTY, ("authorization", "Bearer tok")),
            (Prop.USER_PROPERTY, ("x-databricks-zerobus-table-name", "main.default.t")),
        ]
        writer.write(codec.connect(properties=users))
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        payload = b'{"record_id": "a", "n": 1}'
        writer.write(
            b"".join(codec.publish("main.default.t", payload, packet_id=i) for i in (1, 2, 3))
        )
        answers = []
        while True:
            head = await reader.read(1)
            if not head:
                break
            length = (await reader.readexactly(1))[0]
            answers.append((head[0] >> 4, await reader.readexactly(length)))
        writer.close()
    finally:
        await service.shutdown()
        await catalog.close()
    # The two within the window are committed and acknowledged, then the DISCONNECT.
    assert [a[0] for a in answers] == [PacketType.PUBACK, PacketType.PUBACK, PacketType.DISCONNECT]
    assert codec.decode_disconnect(answers[2][1])[0] == 0x93
    assert wire.get(ZEROBUS_MQTT, "main.default.t") == 3 * len(
        codec.publish("main.default.t", payload, packet_id=1)
    )
    assert service.stats.rows_committed == 2


async def test_shutdown_acknowledges_what_it_read_then_disconnects(tmp_path: Path):
    catalog = Catalog(tmp_path)
    catalog.create_table("main.default.t", TableSchema.of(("record_id", "STRING"), ("n", "BIGINT")))
    tls = LocalTls.ensure(tmp_path / "tls")
    service = ZerobusMqttService(catalog, OAuthIssuer("tok"), WireCounters())
    port = await service.start("127.0.0.1", 0, tls.server_context())
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(), server_hostname="127.0.0.1"
        )
        users = [
            (Prop.USER_PROPERTY, ("authorization", "Bearer tok")),
            (Prop.USER_PROPERTY, ("x-databricks-zerobus-table-name", "main.default.t")),
        ]
        writer.write(codec.connect(properties=users))
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        payloads = [json.dumps({"record_id": f"r{i}", "n": i}).encode() for i in (1, 2, 3)]
        writer.write(
            b"".join(
                codec.publish("main.default.t", p, packet_id=i) for i, p in enumerate(payloads, 1)
            )
        )
        for _ in range(int(WAIT_S * 1000)):  # until the service has read all three
            if service.stats.publishes == 3:
                break
            await asyncio.sleep(0.001)
        await service.shutdown()
        answers = []
        while head := await reader.read(1):
            length = (await reader.readexactly(1))[0]
            answers.append((head[0] >> 4, await reader.readexactly(length)))
        writer.close()
    finally:
        await catalog.close()
    assert [codec.decode_ack(body)[:2] for _, body in answers[:3]] == [(1, 0), (2, 0), (3, 0)]
    assert answers[3][0] == PacketType.DISCONNECT
    assert codec.decode_disconnect(answers[3][1])[0] == 0x8B
    rows = catalog.get("main.default.t").delta().to_pyarrow_table().to_pylist()
    assert sorted(r["n"] for r in rows) == [1, 2, 3]


async def test_shutdown_closes_a_connection_that_never_sent_connect(tmp_path: Path):
    tls = LocalTls.ensure(tmp_path / "tls")
    catalog = Catalog(tmp_path)
    service = ZerobusMqttService(catalog, OAuthIssuer("tok"), WireCounters())
    port = await service.start("127.0.0.1", 0, tls.server_context())
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context(), server_hostname="127.0.0.1"
    )
    for _ in range(int(WAIT_S * 1000)):  # until the service has taken the connection
        if service.stats.connections:
            break
        await asyncio.sleep(0.001)
    shutdown = asyncio.ensure_future(service.shutdown())
    assert await reader.read(1) == b""  # closed without a word: it never connected
    writer.close()
    await shutdown
    await catalog.close()
