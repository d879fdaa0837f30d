"""Zerobus Ingest over MQTT v5: a TLS listener that writes each PUBLISH into its table.

One connection writes into one table. The CONNECT must be MQTT v5 (another protocol level
gets CONNACK 0x84 Unsupported Protocol Version) and carry two User Properties:
`Authorization: Bearer <token>` (the stack's token, or an OAuth token from
`/oidc/v1/token` scoped to the table) and `x-databricks-zerobus-table-name`; a 3.1.1
client gets the CONNACK it can read, return code 1 (unacceptable protocol version). A refused
CONNECT gets a CONNACK with a failure reason code and a Reason String saying why: 0x87 Not
authorized (no, a wrong or an expired token, or one not scoped to the table), 0x83
(no table property, an invalid name, a Will: wills are not supported), 0x90 Topic Name
invalid (no such table), 0x8C (enhanced authentication). The CONNACK of an accepted
connection says what the service offers: Receive Maximum 4,096, Maximum QoS 1, no retained
messages, no wildcard, shared or identified subscriptions, no topic aliases.

A PUBLISH's topic is the connection's table (`catalog.schema.table`) and its payload one
JSON object, decoded against the table's schema with the same per-field errors as the
other JSON paths. Publishes that arrive while the connection's previous rows commit are
gathered and appended together through the table's group-commit writer (which merges them
with every other connection's), and a QoS 1 PUBACK with reason 0 goes out only once the
commit holding the row has succeeded. A record that does not fit gets PUBACK 0x99 Payload
format invalid with the decoder's message and nothing of it is written; a wrong topic
gets 0x90; a failed commit 0x80. PUBACKs keep the order of the PUBLISHes. QoS 0 is best
effort (a bad record is dropped). QoS 2 ends the connection with DISCONNECT 0x9B, a
retained message with 0x9A, a topic alias with 0x94, more QoS 1 publishes in flight than
the Receive Maximum with 0x93, a packet over the Maximum Packet Size with 0x95, bytes that
are not MQTT with 0x81 or 0x82; each affects that connection only. SUBSCRIBE gets a SUBACK
with a failure code per filter (the service ingests; it has nothing to subscribe to).

Each PUBLISH packet's bytes count into the stack's wire counters (interface
`zerobus-mqtt`, the connection's table). Tokens are never logged. On shutdown the listener
stops reading, commits and acknowledges what it holds, then sends DISCONNECT 0x8B.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog

from emulator import mqtt_codec as codec
from emulator.catalog import Catalog, parse_table_name
from emulator.errors import SchemaMismatchError, TableNotFoundError, scrub_paths
from emulator.mqtt_codec import PacketType, Prop, Reason
from emulator.oauth import OAuthIssuer, TokenRejected
from emulator.records import JsonRecordDecoder
from emulator.schema import TableSchema
from emulator.wire import ZEROBUS_MQTT, WireCounters

log = structlog.get_logger(__name__)

RECEIVE_MAXIMUM = 4096
# The largest packet accepted (and announced as Maximum Packet Size): a 10 MiB record, as
# the other interfaces take, plus its topic and headers.
MAX_PACKET_BYTES = 10 * 1024 * 1024 + 64 * 1024
# A client that connected must send its CONNECT within this time.
CONNECT_TIMEOUT_S = 10.0
# How much one read of the socket asks for.
_READ_BYTES = 256 * 1024
AUTHORIZATION = "authorization"
TABLE_PROPERTY = "x-databricks-zerobus-table-name"


@dataclass
class MqttStats:
    connections: int = 0
    refused: int = 0
    open: int = 0
    publishes: int = 0
    rows_committed: int = 0
    records_rejected: int = 0
    protocol_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Disconnect(Exception):
    """End the connection with a DISCONNECT carrying `reason` and `message`."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Refused(Exception):
    """Refuse a CONNECT with a CONNACK carrying `reason` and `message`."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Pending:
    """One PUBLISH waiting for its commit; `error` is set when it will not be written."""

    packet_id: int | None
    payload: bytes
    error: tuple[Reason, str] | None = None


class ZerobusMqttService:
    def __init__(
        self,
        catalog: Catalog,
        auth: OAuthIssuer,
        wire: WireCounters,
        *,
        receive_maximum: int = RECEIVE_MAXIMUM,
        max_packet_bytes: int = MAX_PACKET_BYTES,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.catalog = catalog
        self.auth = auth
        self.wire = wire
        self.receive_maximum = receive_maximum
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.stats = MqttStats()
        self.closing = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._decoders: dict[str, tuple[TableSchema, JsonRecordDecoder]] = {}

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        """Listen with TLS on host:port (0 = a free port); returns the bound port."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=context)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def shutdown(self) -> None:
        """Stop accepting and reading; commit and acknowledge what is held; disconnect all."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.stop_reading()
        await asyncio.gather(*(conn.done.wait() for conn in connections))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def decoder(self, name: str, schema: TableSchema) -> JsonRecordDecoder:
        cached = self._decoders.get(name)
        if cached is not None and cached[0] is schema:
            return cached[1]
        decoder = JsonRecordDecoder(schema)
        self._decoders[name] = (schema, decoder)
        return decoder

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        self.stats.connections += 1
        try:
            if not self.closing:
                await conn.serve()
        finally:
            self._connections.discard(conn)
            writer.close()
            # Bounded: a client that stopped reading must not hold the stack's shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            conn.done.set()


@dataclass(eq=False)
class _Connection:
    service: ZerobusMqttService
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    table: str = ""
    client_id: str = ""
    keep_alive: int = 0
    problem_information: bool = True
    client_max_packet: int | None = None
    inflight: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _queue: list[_Pending] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _read_task: asyncio.Task[None] | None = None
    _handshake_task: asyncio.Task[bool] | None = None
    # Bytes read and not yet cut into packets, from `_pos` on.
    _buffer: bytearray = field(default_factory=bytearray)
    _pos: int = 0
    _reading_stopped: bool = False

    def stop_reading(self) -> None:
        self._reading_stopped = True
        if self._read_task is not None:
            self._read_task.cancel()
        elif self._handshake_task is not None:
            self._handshake_task.cancel()  # nothing of it was accepted: just close

    async def serve(self) -> None:
        self._handshake_task = asyncio.create_task(self._handshake())
        try:
            connected = await self._handshake_task
        except asyncio.CancelledError:
            if self._reading_stopped and self._handshake_task.cancelled():
                return
            self._handshake_task.cancel()
            raise
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            return
        except (codec.MqttError, _Disconnect) as exc:  # not a CONNECT one can answer
            log.info("mqtt_no_connect", problem=str(exc))
            return
        if not connected:
            return
        service = self.service
        service.stats.open += 1
        flusher = asyncio.create_task(self._flush_loop(), name=f"mqtt-flush-{self.table}")
        ending: _Disconnect | None = None
        self._read_task = asyncio.create_task(self._read_loop())
        if self._reading_stopped:
            self._read_task.cancel()
        try:
            await self._read_task
        except _Disconnect as exc:
            ending = exc
        except codec.MqttError as exc:
            ending = _Disconnect(exc.reason, exc.message)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away
        except asyncio.CancelledError:
            if not (self._reading_stopped and self._read_task.cancelled()):
                self._read_task.cancel()
                flusher.cancel()
                raise
            ending = _Disconnect(Reason.SERVER_SHUTTING_DOWN, "the server is shutting down")
        finally:
            service.stats.open -= 1
        if (
            ending is not None
            and ending.reason >= 0x80
            and ending.reason
            not in (
                Reason.SERVER_SHUTTING_DOWN,
                Reason.KEEP_ALIVE_TIMEOUT,
            )
        ):
            service.stats.protocol_errors += 1
        # What was read is committed and acknowledged before the connection ends.
        self._stopping = True
        self._wakeup.set()
        await flusher
        if ending is not None:
            log.info(
                "mqtt_disconnect",
                table=self.table,
                client_id=self.client_id,
                reason=f"0x{ending.reason:02x}",
                message=ending.message,
            )
            await self._send(codec.disconnect(ending.reason, ending.message))

    # -- CONNECT ------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Read and answer the CONNECT; True when the connection is accepted."""
        service = self.service
        async with asyncio.timeout(service.connect_timeout_s):
            self._buffer += await self.reader.read(_READ_BYTES)
            if not self._buffer or self._buffer[0] != PacketType.CONNECT << 4:
                log.info("mqtt_no_connect", first_byte=self._buffer[:1].hex())
                return False  # not MQTT, or a client that does not start with CONNECT: close
            _, _, body, _ = await self._read_packet(None)
        try:
            reader, name, level = codec.decode_connect_header(body)
        except codec.MqttError:
            return False
        if name != "MQTT":
            log.info("mqtt_no_connect", protocol_name=name[:20])
            return False
        if level != 5:
            service.stats.refused += 1
            log.info("mqtt_refused", reason="unsupported protocol version", protocol_level=level)
            if level in (3, 4):
                # The CONNACK a 3.1 or 3.1.1 client reads: return code 1, unacceptable
                # protocol version (it has no reason codes, and could not read 0x84).
                await self._send(bytes([PacketType.CONNACK << 4, 2, 0, 1]))
            else:
                why = f"protocol level {level} is not supported: Zerobus Ingest speaks MQTT v5"
                await self._send(
                    codec.connack(Reason.UNSUPPORTED_PROTOCOL_VERSION, [(Prop.REASON_STRING, why)])
                )
            return False
        try:
            self._accept(codec.decode_connect(reader, name, level))
        except codec.MqttError as exc:
            return await self._refuse(_Refused(exc.reason, exc.message))
        except _Refused as exc:
            return await self._refuse(exc)
        props: list[tuple[Prop, Any]] = [
            (Prop.RECEIVE_MAXIMUM, service.receive_maximum),
            (Prop.MAXIMUM_QOS, 1),
            (Prop.RETAIN_AVAILABLE, 0),
            (Prop.MAXIMUM_PACKET_SIZE, service.max_packet_bytes),
            (Prop.TOPIC_ALIAS_MAXIMUM, 0),
            (Prop.WILDCARD_SUBSCRIPTION_AVAILABLE, 0),
            (Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, 0),
            (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
        ]
        if not self.client_id:
            self.client_id = "zerobus-" + secrets.token_hex(8)
            props.append((Prop.ASSIGNED_CLIENT_IDENTIFIER, self.client_id))
        await self._send(codec.connack(Reason.SUCCESS, props))
        log.info("mqtt_connected", table=self.table, client_id=self.client_id)
        return True

    def _accept(self, connect: codec.Connect) -> None:
        """Check a v5 CONNECT (auth, table); _Refused says why not."""
        props = connect.properties
        if Prop.AUTHENTICATION_METHOD in props:
            raise _Refused(
                Reason.BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported; send the token in the "
                "Authorization user property",
            )
        if connect.will:
            raise _Refused(
                Reason.IMPLEMENTATION_SPECIFIC_ERROR, "wills are not supported by Zerobus Ingest"
            )
        users = {key.lower(): value for key, value in props.user_properties()}
        authorization = users.get(AUTHORIZATION, "")
        try:
            self.service.auth.authenticate(authorization)
        except TokenRejected as exc:
            raise _Refused(Reason.NOT_AUTHORIZED, exc.message) from None
        raw_table = users.get(TABLE_PROPERTY)
        if not raw_table:
            raise _Refused(
                Reason.IMPLEMENTATION_SPECIFIC_ERROR,
                f"the CONNECT has no {TABLE_PROPERTY} user property (the table to write into)",
            )
        try:
            table = parse_table_name(raw_table)
        except SchemaMismatchError as exc:
            raise _Refused(Reason.IMPLEMENTATION_SPECIFIC_ERROR, str(exc)) from None
        try:
            self.service.auth.authorize_write(authorization, table)
        except TokenRejected as exc:
            raise _Refused(Reason.NOT_AUTHORIZED, exc.message) from None
        try:
            self.service.catalog.get(table)
        except TableNotFoundError as exc:
            raise _Refused(Reason.TOPIC_NAME_INVALID, str(exc)) from None
        self.table = table
        self.client_id = connect.client_id
        self.keep_alive = connect.keep_alive
        self.problem_information = props.get(Prop.REQUEST_PROBLEM_INFORMATION, 1) != 0
        self.client_max_packet = props.get(Prop.MAXIMUM_PACKET_SIZE)

    async def _refuse(self, refused: _Refused) -> bool:
        self.service.stats.refused += 1
        log.info("mqtt_refused", reason=f"0x{refused.reason:02x}", message=refused.message)
        await self._send(codec.connack(refused.reason, [(Prop.REASON_STRING, refused.message)]))
        return False

    # -- packets ------------------------------------------------------------------------

    async def _read_packet(self, wait_s: float | None) -> tuple[int, int, bytes, int]:
        """Type, flags, body and whole size of the next packet.

        Packets are cut from a buffer filled by large reads, not read field by field: a
        client with thousands of small publishes in flight sends many per TLS record."""
        while True:
            packet = self._next_buffered()
            if packet is not None:
                return packet
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0
            chunk = await asyncio.wait_for(self.reader.read(_READ_BYTES), wait_s)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)
            self._buffer += chunk

    def _next_buffered(self) -> tuple[int, int, bytes, int] | None:
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < 2:
            return None
        header = buf[pos + 1 : pos + 6]
        length = codec.read_remaining_length(header)
        if length is None:
            return None
        length_bytes = next(i for i, b in enumerate(header) if not b & 0x80) + 1
        size = 1 + length_bytes + length
        if size > self.service.max_packet_bytes:
            raise _Disconnect(
                Reason.PACKET_TOO_LARGE,
                f"a packet of {size} bytes exceeds the Maximum Packet Size of "
                f"{self.service.max_packet_bytes} bytes",
            )
        if len(buf) - pos < size:
            return None
        first = buf[pos]
        body = bytes(buf[pos + 1 + length_bytes : pos + size])
        self._pos = pos + size
        return first >> 4, first & 0x0F, body, size

    async def _read_loop(self) -> None:
        # The server may end a connection silent for one and a half keep-alive periods.
        timeout = 1.5 * self.keep_alive if self.keep_alive else None
        while True:
            try:
                ptype, flags, body, size = await self._read_packet(timeout)
            except TimeoutError:
                raise _Disconnect(
                    Reason.KEEP_ALIVE_TIMEOUT,
                    f"nothing received for 1.5 times the keep alive of {self.keep_alive} s",
                ) from None
            if ptype == PacketType.PUBLISH:
                self._publish(flags, body, size)
                continue
            if ptype == 0 or flags != codec.REQUIRED_FLAGS[PacketType(ptype)]:
                raise codec.MalformedPacket(f"packet type {ptype} with flags {flags:#06b}")
            if ptype == PacketType.PINGREQ:
                await self._send(codec.encode_packet(PacketType.PINGRESP))
            elif ptype == PacketType.DISCONNECT:
                reason, _ = codec.decode_disconnect(body)
                log.info("mqtt_client_disconnected", table=self.table, reason=f"0x{reason:02x}")
                return
            elif ptype in (PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE):
                await self._subscribe(ptype, body)
            elif ptype == PacketType.CONNECT:
                raise codec.ProtocolError("a second CONNECT on the connection")
            elif ptype in (PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
                raise codec.ProtocolError(
                    f"{PacketType(ptype).name}: QoS 2 is not supported by Zerobus Ingest"
                )
            else:
                raise codec.ProtocolError(f"a client may not send {PacketType(ptype).name} here")

    def _publish(self, flags: int, body: bytes, size: int) -> None:
        service = self.service
        service.wire.add(ZEROBUS_MQTT, self.table, size)
        service.stats.publishes += 1
        pub = codec.decode_publish(flags, body)
        if pub.qos == 2:
            raise _Disconnect(
                Reason.QOS_NOT_SUPPORTED,
                "QoS 2 is not supported by Zerobus Ingest; publish with QoS 1 (or 0)",
            )
        if pub.retain:
            raise _Disconnect(
                Reason.RETAIN_NOT_SUPPORTED,
                "retained messages are not supported (Retain Available 0)",
            )
        if Prop.TOPIC_ALIAS in pub.properties:
            raise _Disconnect(
                Reason.TOPIC_ALIAS_INVALID,
                "topic aliases are not supported (Topic Alias Maximum 0)",
            )
        if pub.qos == 1:
            if self.inflight >= service.receive_maximum:
                raise _Disconnect(
                    Reason.RECEIVE_MAXIMUM_EXCEEDED,
                    f"more than the Receive Maximum of {service.receive_maximum} QoS 1 "
                    "publishes are unacknowledged",
                )
            self.inflight += 1
        pending = _Pending(pub.packet_id, pub.payload)
        try:
            topic_table = parse_table_name(pub.topic)
        except SchemaMismatchError:
            topic_table = None
        if topic_table != self.table:
            pending.error = (
                Reason.TOPIC_NAME_INVALID,
                f"the topic {pub.topic!r} is not this connection's table {self.table}",
            )
        self._queue.append(pending)
        self._wakeup.set()

    async def _subscribe(self, ptype: int, body: bytes) -> None:
        unsubscribe = ptype == PacketType.UNSUBSCRIBE
        packet_id, filters = codec.decode_subscribe(body, unsubscribe=unsubscribe)
        if unsubscribe:
            reasons = [Reason.NO_SUBSCRIPTION_EXISTED] * len(filters)
            await self._send(
                codec.suback(PacketType.UNSUBACK, packet_id, reasons, self._why("no subscriptions"))
            )
            return
        reasons = []
        for topic_filter in filters:
            if topic_filter.startswith("$share/"):
                reasons.append(Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            elif "+" in topic_filter or "#" in topic_filter:
                reasons.append(Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            else:
                reasons.append(Reason.IMPLEMENTATION_SPECIFIC_ERROR)
        why = self._why("subscriptions are not supported: Zerobus Ingest only takes publishes")
        await self._send(codec.suback(PacketType.SUBACK, packet_id, reasons, why))

    def _why(self, text: str) -> str | None:
        """A Reason String, unless the client asked for none (Request Problem Information 0)."""
        return text if self.problem_information else None

    async def _send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError, RuntimeError):
            pass  # the client went away; what was committed stays committed

    # -- commits ------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            taken, self._queue = self._queue, []
            await self._commit(taken)

    async def _commit(self, taken: list[_Pending]) -> None:
        """Write the good records of `taken` in one append; then acknowledge all, in order."""
        service = self.service
        good = [p for p in taken if p.error is None]
        try:
            batch = self._decode(good) if good else None
        except TableNotFoundError as exc:  # dropped while the connection was open
            batch = None
            for p in good:
                p.error = (Reason.TOPIC_NAME_INVALID, str(exc))
        if batch is not None:
            try:
                await service.catalog.writer(self.table).append(batch)
                service.stats.rows_committed += batch.num_rows
            except Exception as exc:  # the commit failed: claim nothing
                for p in good:
                    if p.error is None:
                        problem = scrub_paths(str(exc), service.catalog.root.parent)
                        p.error = (Reason.UNSPECIFIED_ERROR, f"the commit failed: {problem}")
        acks = []
        for p in taken:
            if p.error is not None and p.error[0] == Reason.PAYLOAD_FORMAT_INVALID:
                service.stats.records_rejected += 1
            if p.packet_id is None:
                continue
            reason, message = p.error if p.error is not None else (Reason.SUCCESS, None)
            acks.append(self._puback(p.packet_id, reason, message))
        self.inflight -= len(acks)
        if acks:
            await self._send(b"".join(acks))

    def _decode(self, good: list[_Pending]) -> pa.RecordBatch | None:
        """The records as one batch; a record that does not fit is marked and left out."""
        table = self.service.catalog.get(self.table)
        decoder = self.service.decoder(self.table, table.schema)
        texts: list[str] = []
        kept: list[_Pending] = []
        for p in good:
            try:
                texts.append(p.payload.decode("utf-8"))
                kept.append(p)
            except UnicodeDecodeError:
                p.error = (Reason.PAYLOAD_FORMAT_INVALID, "the payload is not UTF-8 text")
        if not texts:
            return None
        try:
            return decoder.decode(texts)
        except SchemaMismatchError:
            pass
        # Some record does not fit: find which, one by one, and write the others.
        fitting = []
        for p, text in zip(kept, texts, strict=True):
            try:
                decoder.decode([text])
                fitting.append(text)
            except SchemaMismatchError as exc:
                p.error = (Reason.PAYLOAD_FORMAT_INVALID, str(exc))
        return decoder.decode(fitting) if fitting else None

    def _puback(self, packet_id: int, reason: Reason, message: str | None) -> bytes:
        packet = codec.ack(
            PacketType.PUBACK, packet_id, reason, self._why(message) if message else None
        )
        if self.client_max_packet is not None and len(packet) > self.client_max_packet:
            packet = codec.ack(PacketType.PUBACK, packet_id, reason, None)
        return packet
