"""MQTT v5 packets as bytes and back: the fixed header, the data types and properties.

Only what the local Zerobus MQTT listener reads and writes (OASIS MQTT 5.0, sections 1.5
and 2): a packet is a fixed header (type and flags in one byte, then the Remaining Length
as a Variable Byte Integer of at most 4 bytes) followed by that many bytes. Strings are
UTF-8 with a 2-byte length (well-formed, no U+0000), binary data likewise, properties a
Variable Byte Integer length and then (identifier, value) pairs whose value type the
identifier fixes. Anything that breaks these rules raises MalformedPacket (reason 0x81)
or ProtocolError (0x82, e.g. a property twice or one the packet may not carry); the
listener answers either with a DISCONNECT of that connection only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# The largest Remaining Length a 4-byte Variable Byte Integer carries (268,435,455).
MAX_VARIABLE_BYTE_INTEGER = 0x0FFFFFFF


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


# The fixed-header flags each packet type must carry (PUBLISH's are its own).
REQUIRED_FLAGS = {t: 0 for t in PacketType} | {
    PacketType.PUBREL: 0b0010,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.UNSUBSCRIBE: 0b0010,
}


class Reason(IntEnum):
    """The v5 reason codes the listener sends (section 2.4)."""

    SUCCESS = 0x00
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    BAD_AUTHENTICATION_METHOD = 0x8C
    SERVER_UNAVAILABLE = 0x88
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    TOPIC_NAME_INVALID = 0x90
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class MqttError(Exception):
    """A packet that breaks the protocol; `reason` is what the DISCONNECT says."""

    reason = Reason.MALFORMED_PACKET

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedPacket(MqttError):
    reason = Reason.MALFORMED_PACKET


class ProtocolError(MqttError):
    reason = Reason.PROTOCOL_ERROR


class Prop(IntEnum):
    """Property identifiers (section 2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_BYTE, _TWO, _FOUR, _VBI, _STRING, _BINARY, _PAIR = range(7)
_KIND = {
    Prop.PAYLOAD_FORMAT_INDICATOR: _BYTE,
    Prop.MESSAGE_EXPIRY_INTERVAL: _FOUR,
    Prop.CONTENT_TYPE: _STRING,
    Prop.RESPONSE_TOPIC: _STRING,
    Prop.CORRELATION_DATA: _BINARY,
    Prop.SUBSCRIPTION_IDENTIFIER: _VBI,
    Prop.SESSION_EXPIRY_INTERVAL: _FOUR,
    Prop.ASSIGNED_CLIENT_IDENTIFIER: _STRING,
    Prop.SERVER_KEEP_ALIVE: _TWO,
    Prop.AUTHENTICATION_METHOD: _STRING,
    Prop.AUTHENTICATION_DATA: _BINARY,
    Prop.REQUEST_PROBLEM_INFORMATION: _BYTE,
    Prop.WILL_DELAY_INTERVAL: _FOUR,
    Prop.REQUEST_RESPONSE_INFORMATION: _BYTE,
    Prop.RESPONSE_INFORMATION: _STRING,
    Prop.SERVER_REFERENCE: _STRING,
    Prop.REASON_STRING: _STRING,
    Prop.RECEIVE_MAXIMUM: _TWO,
    Prop.TOPIC_ALIAS_MAXIMUM: _TWO,
    Prop.TOPIC_ALIAS: _TWO,
    Prop.MAXIMUM_QOS: _BYTE,
    Prop.RETAIN_AVAILABLE: _BYTE,
    Prop.USER_PROPERTY: _PAIR,
    Prop.MAXIMUM_PACKET_SIZE: _FOUR,
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}

# Which properties a packet a client sends may carry ("will" = the Will Properties).
CLIENT_PROPERTIES: dict[str, frozenset[Prop]] = {
    "CONNECT": frozenset(
        {
            Prop.SESSION_EXPIRY_INTERVAL,
            Prop.AUTHENTICATION_METHOD,
            Prop.AUTHENTICATION_DATA,
            Prop.REQUEST_PROBLEM_INFORMATION,
            Prop.REQUEST_RESPONSE_INFORMATION,
            Prop.RECEIVE_MAXIMUM,
            Prop.TOPIC_ALIAS_MAXIMUM,
            Prop.USER_PROPERTY,
            Prop.MAXIMUM_PACKET_SIZE,
        }
    ),
    "will": frozenset(
        {
            Prop.PAYLOAD_FORMAT_INDICATOR,
            Prop.MESSAGE_EXPIRY_INTERVAL,
            Prop.CONTENT_TYPE,
            Prop.RESPONSE_TOPIC,
            Prop.CORRELATION_DATA,
            Prop.WILL_DELAY_INTERVAL,
            Prop.USER_PROPERTY,
        }
    ),
    "PUBLISH": frozenset(
        {
            Prop.PAYLOAD_FORMAT_INDICATOR,
            Prop.MESSAGE_EXPIRY_INTERVAL,
            Prop.CONTENT_TYPE,
            Prop.RESPONSE_TOPIC,
            Prop.CORRELATION_DATA,
            Prop.TOPIC_ALIAS,
            Prop.USER_PROPERTY,
        }
    ),
    "SUBSCRIBE": frozenset({Prop.SUBSCRIPTION_IDENTIFIER, Prop.USER_PROPERTY}),
    "UNSUBSCRIBE": frozenset({Prop.USER_PROPERTY}),
    "DISCONNECT": frozenset(
        {
            Prop.SESSION_EXPIRY_INTERVAL,
            Prop.REASON_STRING,
            Prop.USER_PROPERTY,
            Prop.SERVER_REFERENCE,
        }
    ),
    "ack": frozenset({Prop.REASON_STRING, Prop.USER_PROPERTY}),
}


@dataclass
class Properties:
    """Properties in the order they came; User Property may repeat, others may not."""

    items: list[tuple[Prop, Any]] = field(default_factory=list)

    def get(self, prop: Prop, default: Any = None) -> Any:
        for key, value in self.items:
            if key == prop:
                return value
        return default

    def user_properties(self) -> list[tuple[str, str]]:
        return [value for key, value in self.items if key == Prop.USER_PROPERTY]

    def __contains__(self, prop: object) -> bool:
        return any(key == prop for key, _ in self.items)


# -- encoding ---------------------------------------------------------------------------


def encode_variable_byte_integer(value: int) -> bytes:
    if not 0 <= value <= MAX_VARIABLE_BYTE_INTEGER:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("a UTF-8 string of more than 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def encode_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("binary data of more than 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def encode_properties(items: Iterable[tuple[Prop, Any]] = ()) -> bytes:
    body = bytearray()
    for prop, value in items:
        body += encode_variable_byte_integer(prop)
        kind = _KIND[prop]
        if kind == _BYTE:
            body.append(value)
        elif kind == _TWO:
            body += struct.pack("!H", value)
        elif kind == _FOUR:
            body += struct.pack("!I", value)
        elif kind == _VBI:
            body += encode_variable_byte_integer(value)
        elif kind == _STRING:
            body += encode_string(value)
        elif kind == _BINARY:
            body += encode_binary(value)
        else:
            body += encode_string(value[0]) + encode_string(value[1])
    return encode_variable_byte_integer(len(body)) + bytes(body)


def encode_packet(packet_type: PacketType, body: bytes = b"", flags: int | None = None) -> bytes:
    """A whole packet: the fixed header (with the type's required flags) and `body`."""
    first = (packet_type << 4) | (REQUIRED_FLAGS[packet_type] if flags is None else flags)
    return bytes([first]) + encode_variable_byte_integer(len(body)) + body


def connack(reason: int, properties: Iterable[tuple[Prop, Any]] = ()) -> bytes:
    """CONNACK: no session is ever present (the service keeps none)."""
    return encode_packet(PacketType.CONNACK, bytes([0, reason]) + encode_properties(properties))


def ack(packet_type: PacketType, packet_id: int, reason: int, reason_string: str | None) -> bytes:
    """PUBACK (or another mid-reason-properties acknowledgement), shortest form for success."""
    if reason == 0 and reason_string is None:
        return encode_packet(packet_type, struct.pack("!H", packet_id))
    props = [(Prop.REASON_STRING, reason_string)] if reason_string is not None else []
    body = struct.pack("!HB", packet_id, reason) + encode_properties(props)
    return encode_packet(packet_type, body)


def suback(
    packet_type: PacketType, packet_id: int, reasons: Sequence[int], reason_string: str | None
) -> bytes:
    """SUBACK or UNSUBACK: one reason code per topic filter."""
    props = [(Prop.REASON_STRING, reason_string)] if reason_string is not None else []
    body = struct.pack("!H", packet_id) + encode_properties(props) + bytes(reasons)
    return encode_packet(packet_type, body)


def disconnect(reason: int, reason_string: str | None = None) -> bytes:
    props = [(Prop.REASON_STRING, reason_string)] if reason_string is not None else []
    return encode_packet(PacketType.DISCONNECT, bytes([reason]) + encode_properties(props))


def connect(
    *,
    client_id: str = "",
    keep_alive: int = 60,
    properties: Iterable[tuple[Prop, Any]] = (),
    protocol_level: int = 5,
    clean_start: bool = True,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """A client's CONNECT (tests speak raw MQTT with it)."""
    flags = (0x02 if clean_start else 0) | (0x04 if will else 0)
    body = encode_string("MQTT") + bytes([protocol_level, flags]) + struct.pack("!H", keep_alive)
    if protocol_level == 5:
        body += encode_properties(properties)
    body += encode_string(client_id)
    if will is not None:
        if protocol_level == 5:
            body += encode_properties()
        body += encode_string(will[0]) + encode_binary(will[1])
    return encode_packet(PacketType.CONNECT, body)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    packet_id: int = 1,
    retain: bool = False,
    properties: Iterable[tuple[Prop, Any]] = (),
) -> bytes:
    """A client's PUBLISH (tests speak raw MQTT with it)."""
    body = encode_string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    body += encode_properties(properties) + payload
    return encode_packet(PacketType.PUBLISH, body, flags=(qos << 1) | int(retain))


# -- decoding ---------------------------------------------------------------------------


def decode_variable_byte_integer(data: bytes | bytearray, pos: int = 0) -> tuple[int, int]:
    """The value at `pos` and the position after it; at most 4 bytes."""
    value = 0
    for i in range(4):
        if pos + i >= len(data):
            raise MalformedPacket("a Variable Byte Integer runs past the end of the packet")
        digit = data[pos + i]
        value += (digit & 0x7F) << (7 * i)
        if not digit & 0x80:
            return value, pos + i + 1
    raise MalformedPacket("a Variable Byte Integer longer than 4 bytes")


def read_remaining_length(first_bytes: Iterable[int]) -> int | None:
    """The Remaining Length from the bytes after the first, or None if more are needed."""
    value = 0
    for i, digit in enumerate(first_bytes):
        if i == 4:
            raise MalformedPacket("a Remaining Length longer than 4 bytes")
        value += (digit & 0x7F) << (7 * i)
        if not digit & 0x80:
            return value
    return None


class Reader:
    """Reads a packet's body front to back; running past its end is MalformedPacket."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket("the packet ends before its fields do")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def two(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def four(self) -> int:
        value: int = struct.unpack("!I", self.take(4))[0]
        return value

    def variable_byte_integer(self) -> int:
        value, self.pos = decode_variable_byte_integer(self.data, self.pos)
        return value

    def binary(self) -> bytes:
        return self.take(self.two())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string that is not well-formed UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("a string with the null character U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def properties(self, allowed: frozenset[Prop], where: str) -> Properties:
        length = self.variable_byte_integer()
        end = self.pos + length
        if end > len(self.data):
            raise MalformedPacket(f"the {where} properties run past the end of the packet")
        props = Properties()
        seen: set[Prop] = set()
        while self.pos < end:
            ident = self.variable_byte_integer()
            try:
                prop = Prop(ident)
            except ValueError:
                raise MalformedPacket(f"unknown property identifier 0x{ident:02x}") from None
            if prop not in allowed:
                raise ProtocolError(f"a {where} may not carry the property {prop.name}")
            if prop in seen and prop != Prop.USER_PROPERTY:
                raise ProtocolError(f"the property {prop.name} appears twice in a {where}")
            seen.add(prop)
            kind = _KIND[prop]
            value: Any
            if kind == _BYTE:
                value = self.byte()
            elif kind == _TWO:
                value = self.two()
            elif kind == _FOUR:
                value = self.four()
            elif kind == _VBI:
                value = self.variable_byte_integer()
            elif kind == _STRING:
                value = self.string()
            elif kind == _BINARY:
                value = self.binary()
            else:
                value = (self.string(), self.string())
            props.items.append((prop, value))
        if self.pos != end:
            raise MalformedPacket(f"the {where} properties overrun their length")
        return props


@dataclass
class Connect:
    protocol_name: str
    protocol_level: int
    clean_start: bool
    keep_alive: int
    properties: Properties
    client_id: str
    will: bool
    username: str | None
    has_password: bool


def decode_connect_header(body: bytes | bytearray) -> tuple[Reader, str, int]:
    """The protocol name and level, read before anything that depends on them."""
    reader = Reader(body)
    return reader, reader.string(), reader.byte()


def decode_connect(reader: Reader, name: str, level: int) -> Connect:
    """The rest of a v5 CONNECT (after `decode_connect_header`)."""
    flags = reader.byte()
    if flags & 0x01:
        raise MalformedPacket("the CONNECT flags' reserved bit is set")
    will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    if not will and (will_qos or flags & 0x20):
        raise MalformedPacket("Will QoS or Will Retain set without a Will")
    if will_qos == 3:
        raise MalformedPacket("Will QoS 3")
    keep_alive = reader.two()
    properties = reader.properties(CLIENT_PROPERTIES["CONNECT"], "CONNECT")
    client_id = reader.string()
    if will:
        reader.properties(CLIENT_PROPERTIES["will"], "Will")
        reader.string()
        reader.binary()
    username = reader.string() if flags & 0x80 else None
    has_password = bool(flags & 0x40)
    if has_password:
        reader.binary()
    if reader.remaining():
        raise MalformedPacket("bytes after the end of the CONNECT payload")
    return Connect(
        name, level, bool(flags & 0x02), keep_alive, properties, client_id, will, username,
        has_password,
    )  # fmt: skip


@dataclass
class Publish:
    topic: str
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    properties: Properties
    payload: bytes


def decode_publish(flags: int, body: bytes | bytearray) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("a PUBLISH with QoS 3")
    reader = Reader(body)
    topic = reader.string()
    if "+" in topic or "#" in topic:
        raise MalformedPacket("a PUBLISH topic with a wildcard character")
    packet_id = reader.two() if qos else None
    if packet_id == 0:
        raise MalformedPacket("a PUBLISH with packet identifier 0")
    properties = reader.properties(CLIENT_PROPERTIES["PUBLISH"], "PUBLISH")
    return Publish(
        topic, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, properties, reader.rest()
    )


def decode_subscribe(body: bytes | bytearray, *, unsubscribe: bool) -> tuple[int, list[str]]:
    """The packet identifier and topic filters of a SUBSCRIBE or UNSUBSCRIBE."""
    where = "UNSUBSCRIBE" if unsubscribe else "SUBSCRIBE"
    reader = Reader(body)
    packet_id = reader.two()
    if packet_id == 0:
        raise MalformedPacket(f"a {where} with packet identifier 0")
    reader.properties(CLIENT_PROPERTIES[where], where)
    filters = []
    while reader.remaining():
        filters.append(reader.string())
        if not unsubscribe and reader.byte() & 0xC0:
            raise MalformedPacket("the subscription options' reserved bits are set")
    if not filters:
        raise ProtocolError(f"a {where} without topic filters")
    return packet_id, filters


def decode_disconnect(body: bytes | bytearray) -> tuple[int, Properties]:
    """A DISCONNECT's reason code (0 when absent) and properties."""
    reader = Reader(body)
    if not reader.remaining():
        return 0, Properties()
    reason = reader.byte()
    props = (
        reader.properties(CLIENT_PROPERTIES["DISCONNECT"], "DISCONNECT")
        if reader.remaining()
        else Properties()
    )
    if reader.remaining():
        raise MalformedPacket("bytes after the end of the DISCONNECT")
    return reason, props


def decode_ack(body: bytes | bytearray) -> tuple[int, int, Properties]:
    """A PUBACK-shaped packet: packet identifier, reason code (0 when absent), properties."""
    reader = Reader(body)
    packet_id = reader.two()
    if not reader.remaining():
        return packet_id, 0, Properties()
    reason = reader.byte()
    props = (
        reader.properties(CLIENT_PROPERTIES["ack"], "acknowledgement")
        if reader.remaining()
        else Properties()
    )
    return packet_id, reason, props


def decode_connack(body: bytes | bytearray) -> tuple[int, int, Properties]:
    """A CONNACK's flags, reason code and properties (the tests read what the server says)."""
    reader = Reader(body)
    flags, reason = reader.byte(), reader.byte()
    props = reader.properties(frozenset(Prop), "CONNACK") if reader.remaining() else Properties()
    return flags, reason, props
