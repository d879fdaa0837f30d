"""Zerobus Ingest's Kafka-compatible API: a TLS listener speaking the Kafka wire protocol.

Producer APIs only, as the service offers them: ApiVersions (v0-v3), Metadata (v0-v8),
SaslHandshake (v1) and SaslAuthenticate (v0-v1) with OAUTHBEARER, and Produce (v3-v8,
record batches v2). Fetch v4 is listed in ApiVersions but never served (a Fetch request
closes the connection): librdkafka writes record batches v2 only to a broker that lists
it, and the legacy message sets otherwise. Requests and responses are encoded with
kafka-python's protocol classes (generated from Apache Kafka's message schemas, flexible
versions included) and record batches decoded with its `kafka.record` reader; nothing of
the wire format is hand-written here but the 4-byte frame length.

A connection is TLS from the first byte (the stack's CA, `emulator.tls`). Before SASL
succeeds only ApiVersions, SaslHandshake and SaslAuthenticate are answered; anything else
closes the connection. The OAUTHBEARER client message (RFC 7628,
`n,,\\x01auth=Bearer <token>\\x01\\x01`) carries the stack's token or an OAuth token from
`/oidc/v1/token`; a refused one gets SASL_AUTHENTICATION_FAILED with a plain message and
the connection is closed, as a Kafka broker does. Tokens are never logged.

Topics are the tables, `catalog.schema.table`, each with one partition (0) led by this
listener, the only broker. Produce rules: acks must be -1 (all; acks=1 answers
INVALID_REQUIRED_ACKS, acks=0, which expects no answer, closes the connection), records
uncompressed (UNSUPPORTED_COMPRESSION_TYPE), no producer id or transactional id (the
idempotent and transactional producers are not offered). Only each record's value is
ingested, one UTF-8 JSON object decoded against the table like every Zerobus JSON path;
key, headers and timestamps are ignored. A partition's records are all decoded before any
is appended: one that does not fit answers INVALID_RECORD (with record_errors and the
message from v8) and nothing of that partition's data is written. Rows go through the
table's group-commit writer and the answer (base offset >= 0) is sent after the commit.
Offsets count the rows this listener committed per table since it started: Zerobus has
no consumers, so they are receipts, not log positions.

Clients pipeline requests (librdkafka keeps several Produce requests in flight): each
connection reads on while earlier requests are being committed, so their appends share
commits, and answers go back strictly in request order. A frame longer than
`max_request_bytes`, or one that cannot be parsed, closes that connection only. An API the
listener does not offer answers UNSUPPORTED_VERSION where its response has a top-level
error code (InitProducerId, FindCoordinator); otherwise the connection is closed.

Bytes: each Produce request's whole frame counts for its table in `WireCounters`
(interface ZEROBUS_KAFKA); a request naming several tables counts each its own topic
data, the rest of the frame for the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from kafka.errors import KafkaError
from kafka.protocol.api_key import ApiKey
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.metadata.find_coordinator import FindCoordinatorResponse
from kafka.protocol.metadata.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse
from kafka.protocol.producer.transaction import InitProducerIdResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords

from emulator.catalog import Catalog, parse_table_name
from emulator.errors import EmulatorError, SchemaMismatchError, TableNotFoundError, scrub_paths
from emulator.oauth import OAuthIssuer, TokenRejected
from emulator.records import JsonRecordDecoder
from emulator.schema import TableSchema
from emulator.tls import LocalTls
from emulator.wire import ZEROBUS_KAFKA, WireCounters

log = structlog.get_logger(__name__)

# Kafka error codes (the protocol's numbers, as every client knows them).
NONE = 0
UNKNOWN_SERVER_ERROR = -1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
TOPIC_AUTHORIZATION_FAILED = 29
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_VERSION = 35
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
KAFKA_STORAGE_ERROR = 56
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87

MECHANISM = "OAUTHBEARER"
BROKER_ID = 1
CLUSTER_ID = "zerobus-local"
# Kafka brokers cap a request at 100 MiB (socket.request.max.bytes); producers send ~1 MB.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
# Requests read ahead of their answers, per connection (librdkafka allows a million).
MAX_IN_FLIGHT = 64

# What the listener offers: API key -> (min, max) version. SaslHandshake v0 would be
# followed by raw SASL frames, so only v1 is offered (SaslAuthenticate carries the bytes).
# Fetch v4 is listed but not served: librdkafka writes record batches v2 only to a broker
# that lists Produce v3 and Fetch v4 (its MsgVer2 feature), and the legacy message sets
# otherwise. A Fetch request closes the connection: Zerobus has no consumers.
SUPPORTED: dict[int, tuple[int, int]] = {
    ApiKey.Produce: (3, 8),
    ApiKey.Fetch: (4, 4),
    ApiKey.Metadata: (0, 8),
    ApiKey.SaslHandshake: (1, 1),
    ApiKey.ApiVersions: (0, 3),
    ApiKey.SaslAuthenticate: (0, 1),
}
_BEFORE_AUTH = frozenset({ApiKey.ApiVersions, ApiKey.SaslHandshake, ApiKey.SaslAuthenticate})
# APIs not offered whose answers carry a top-level error code: they get UNSUPPORTED_VERSION.
_REFUSED: dict[int, Any] = {
    ApiKey.InitProducerId: InitProducerIdResponse,
    ApiKey.FindCoordinator: FindCoordinatorResponse,
}
_REQUESTS: dict[int, Any] = {
    ApiKey.Produce: ProduceRequest,
    ApiKey.Metadata: MetadataRequest,
    ApiKey.SaslHandshake: SaslHandshakeRequest,
    ApiKey.ApiVersions: ApiVersionsRequest,
    ApiKey.SaslAuthenticate: SaslAuthenticateRequest,
}
_HEADER = struct.Struct(">hhi")  # api key, api version, correlation id


class _Close(Exception):
    """The connection must be closed (after the answers already queued), and why."""


@dataclass
class KafkaStats:
    connections: int = 0
    connections_open: int = 0
    authentications: int = 0
    authentication_failures: int = 0
    produce_requests: int = 0
    records_refused: int = 0
    rows_committed: int = 0
    connections_closed_on_error: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _PartitionResult:
    error: int = NONE
    message: str | None = None
    base_offset: int = -1
    record_errors: list[tuple[int, str]] | None = None


class KafkaListener:
    """The Kafka-protocol listener of the local stack, on `host:port` (0 = a free port)."""

    def __init__(
        self,
        catalog: Catalog,
        auth: OAuthIssuer,
        tls: LocalTls,
        wire: WireCounters,
        *,
        host: str,
        port: int = 0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.catalog = catalog
        self.auth = auth
        self.tls = tls
        self.wire = wire
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.stats = KafkaStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._decoders: dict[str, tuple[TableSchema, JsonRecordDecoder]] = {}
        self._next_offset: dict[str, int] = defaultdict(int)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self.port,
            ssl=self.tls.server_context(),
            ssl_handshake_timeout=10.0,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("kafka_listening", bootstrap=self.bootstrap)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting and reading; answer what is in flight (up to `grace_s`), close."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.stop_reading()
        if connections:
            await asyncio.wait(
                [asyncio.ensure_future(c.done()) for c in connections], timeout=grace_s
            )
        for conn in connections:
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        self.stats.connections += 1
        self.stats.connections_open += 1
        try:
            await conn.serve()
        finally:
            self.stats.connections_open -= 1
            self._connections.discard(conn)

    # -- Metadata -----------------------------------------------------------------------

    def metadata(self, request: Any, version: int, authorization: str) -> Any:
        if request.topics is None or (version == 0 and not request.topics):
            names = [n for n in self.catalog.names() if self._may_write(authorization, n)]
            topics = [self._topic_metadata(n, NONE) for n in names]
        else:
            topics = [self._describe(t.name, authorization) for t in request.topics]
        broker = MetadataResponse.MetadataResponseBroker(
            node_id=BROKER_ID, host=self.host, port=self.port, rack=None
        )
        return MetadataResponse(
            version=version,
            throttle_time_ms=0,
            brokers=[broker],
            cluster_id=CLUSTER_ID,
            controller_id=BROKER_ID,
            topics=topics,
        )

    def _describe(self, topic: str, authorization: str) -> Any:
        try:
            name = parse_table_name(topic)
        except SchemaMismatchError:
            return self._topic_metadata(topic, INVALID_TOPIC_EXCEPTION)
        if not self._may_write(authorization, name):
            return self._topic_metadata(topic, TOPIC_AUTHORIZATION_FAILED)
        if name not in self.catalog.names():
            return self._topic_metadata(topic, UNKNOWN_TOPIC_OR_PARTITION)
        return self._topic_metadata(topic, NONE)

    def _topic_metadata(self, topic: str, error: int) -> Any:
        partitions = []
        if error == NONE:
            partitions = [
                MetadataResponse.MetadataResponseTopic.MetadataResponsePartition(
                    error_code=NONE,
                    partition_index=0,
                    leader_id=BROKER_ID,
                    leader_epoch=0,
                    replica_nodes=[BROKER_ID],
                    isr_nodes=[BROKER_ID],
                    offline_replicas=[],
                )
            ]
        return MetadataResponse.MetadataResponseTopic(
            error_code=error,
            name=topic,
            is_internal=False,
            partitions=partitions,
        )

    def _may_write(self, authorization: str, table: str) -> bool:
        try:
            self.auth.authorize_write(authorization, table)
        except TokenRejected:
            return False
        return True

    # -- Produce ------------------------------------------------------------------------

    async def produce(
        self, request: Any, version: int, authorization: str, frame_bytes: int
    ) -> Any:
        self.stats.produce_requests += 1
        self._count_bytes(request, frame_bytes)
        topics = []
        for topic in request.topic_data:
            partitions = topic.partition_data
            work: list[Awaitable[_PartitionResult]] = [
                self._partition(topic.name, p, request, authorization) for p in partitions
            ]
            results = await asyncio.gather(*work)
            topics.append(
                ProduceResponse.TopicProduceResponse(
                    name=topic.name,
                    partition_responses=[
                        _partition_response(p.index, r)
                        for p, r in zip(partitions, results, strict=True)
                    ],
                )
            )
        return ProduceResponse(version=version, responses=topics, throttle_time_ms=0)

    def _count_bytes(self, request: Any, frame_bytes: int) -> None:
        counted: list[tuple[str, int]] = []
        for topic in request.topic_data:
            try:
                name = self.catalog.get(topic.name).name
            except EmulatorError:
                continue
            size = sum(len(p.records or b"") for p in topic.partition_data)
            counted.append((name, size))
        if counted:
            rest = frame_bytes - sum(size for _, size in counted)
            counted[0] = (counted[0][0], counted[0][1] + rest)
            for name, size in counted:
                self.wire.add(ZEROBUS_KAFKA, name, size)

    async def _partition(
        self, topic: str, partition: Any, request: Any, authorization: str
    ) -> _PartitionResult:
        if request.acks != -1:
            return _PartitionResult(
                INVALID_REQUIRED_ACKS,
                f"acks={request.acks} is not supported: Zerobus needs acks=all (-1)",
            )
        if request.transactional_id is not None:
            return _PartitionResult(
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "transactional producers are not supported: unset transactional.id",
            )
        try:
            name = parse_table_name(topic)
        except SchemaMismatchError as exc:
            return _PartitionResult(INVALID_TOPIC_EXCEPTION, str(exc))
        try:
            self.auth.authorize_write(authorization, name)
        except TokenRejected as exc:
            return _PartitionResult(TOPIC_AUTHORIZATION_FAILED, exc.message)
        try:
            table = self.catalog.get(name)
        except TableNotFoundError as exc:
            return _PartitionResult(UNKNOWN_TOPIC_OR_PARTITION, str(exc))
        if partition.index != 0:
            return _PartitionResult(
                UNKNOWN_TOPIC_OR_PARTITION, f"{topic} has one partition, 0; not {partition.index}"
            )
        decoder = self._decoder(name, table.schema)
        refused = _values(partition.records)
        if isinstance(refused, _PartitionResult):
            self.stats.records_refused += 1
            log.info("kafka_records_refused", table=name, reason=refused.message)
            return refused
        values, positions = refused
        try:
            batch = decoder.decode(values)
        except SchemaMismatchError as exc:
            self.stats.records_refused += 1
            at = _first_bad(decoder, values)
            log.info("kafka_records_refused", table=name, reason=str(exc))
            return _PartitionResult(
                INVALID_RECORD, str(exc), record_errors=[(positions[at], str(exc))]
            )
        try:
            await self.catalog.writer(name).append(batch)
        except EmulatorError as exc:
            return _PartitionResult(KAFKA_STORAGE_ERROR, str(exc))
        except Exception as exc:  # the commit failed: say so, claim nothing
            log.error("kafka_commit_failed", table=name, error=str(exc))
            problem = scrub_paths(str(exc), self.catalog.root.parent)
            return _PartitionResult(UNKNOWN_SERVER_ERROR, f"the commit failed: {problem}")
        base = self._next_offset[name]
        self._next_offset[name] = base + batch.num_rows
        self.stats.rows_committed += batch.num_rows
        return _PartitionResult(base_offset=base)

    def _decoder(self, name: str, schema: TableSchema) -> JsonRecordDecoder:
        cached = self._decoders.get(name)
        if cached is not None and cached[0] is schema:
            return cached[1]
        decoder = JsonRecordDecoder(schema)
        self._decoders[name] = (schema, decoder)
        return decoder


def _values(records: bytes | None) -> tuple[list[str], list[int]] | _PartitionResult:
    """The UTF-8 values of a partition's record batches and each one's index in its batch,
    or why they are refused."""
    if not records:
        return _PartitionResult(INVALID_RECORD, "the partition's data holds no records")
    values: list[str] = []
    positions: list[int] = []
    try:
        batches = MemoryRecords(bytes(records))
        while batches.has_next():
            batch = batches.next_batch()
            if not isinstance(batch, DefaultRecordBatch):
                return _PartitionResult(
                    INVALID_RECORD, f"record batch magic v{batch.magic}: only v2 is accepted"
                )
            if batch.compression_type != DefaultRecordBatch.CODEC_NONE:
                return _PartitionResult(
                    UNSUPPORTED_COMPRESSION_TYPE,
                    "compressed record batches are not supported: set compression.type=none",
                )
            if batch.producer_id != DefaultRecordBatch.NO_PRODUCER_ID or batch.is_transactional:
                return _PartitionResult(
                    INVALID_RECORD,
                    "idempotent and transactional producers are not supported: set "
                    "enable.idempotence=false",
                )
            if batch.is_control_batch:
                return _PartitionResult(INVALID_RECORD, "control batches are not accepted")
            if not batch.validate_crc():
                return _PartitionResult(CORRUPT_MESSAGE, "a record batch fails its CRC check")
            for i, record in enumerate(batch):
                value = record.value
                problem = None
                if value is None:
                    problem = f"record {len(values)} has no value (one JSON object is needed)"
                else:
                    try:
                        values.append(value.decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        problem = f"record {len(values)} is not UTF-8: {exc}"
                if problem is not None:
                    return _PartitionResult(INVALID_RECORD, problem, record_errors=[(i, problem)])
                positions.append(i)
        if batches.valid_bytes() != len(records):  # a truncated batch at the end
            return _PartitionResult(CORRUPT_MESSAGE, "the record batches are truncated")
    except (KafkaError, ValueError, IndexError, struct.error) as exc:
        return _PartitionResult(CORRUPT_MESSAGE, f"the record batches cannot be read: {exc}")
    if not values:
        return _PartitionResult(INVALID_RECORD, "the partition's data holds no records")
    return values, positions


def _first_bad(decoder: JsonRecordDecoder, values: list[str]) -> int:
    """The index of the first value that does not decode (only after a batch failed)."""
    for i, value in enumerate(values):
        try:
            decoder.decode([value])
        except SchemaMismatchError:
            return i
    return 0


def _partition_response(index: int, result: _PartitionResult) -> Any:
    cls = ProduceResponse.TopicProduceResponse.PartitionProduceResponse
    errors = [
        cls.BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=m)
        for i, m in result.record_errors or []
    ]
    return cls(
        index=index,
        error_code=result.error,
        base_offset=result.base_offset,
        log_append_time_ms=-1,
        log_start_offset=0 if result.error == NONE else -1,
        record_errors=errors,
        error_message=result.message,
    )


def parse_oauthbearer(message: bytes) -> str:
    """The `auth` value ("Bearer <token>") of an RFC 7628 client message; ValueError if
    the message is malformed."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the OAUTHBEARER client message is not UTF-8") from None
    parts = text.split("\x01")
    # gs2 header, key=value pairs, then the closing empty pair: "...\x01\x01".
    if len(parts) < 3 or parts[-1] != "" or parts[-2] != "":
        raise ValueError("the OAUTHBEARER client message does not end with \\x01\\x01")
    header = parts[0]
    if not (header.startswith(("n,", "y,")) and header.endswith(",")):
        raise ValueError("the OAUTHBEARER client message has no GS2 header (n,,)")
    pairs = {}
    for pair in parts[1:-2]:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError("the OAUTHBEARER client message has a malformed key=value pair")
        pairs[key] = value
    auth = pairs.get("auth")
    if not auth:
        raise ValueError("the OAUTHBEARER client message has no auth=Bearer <token>")
    return auth


class _Connection:
    """One client connection: reads requests, answers them in order."""

    def __init__(
        self, listener: KafkaListener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.listener = listener
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.mechanism: str | None = None
        self.authorization: str | None = None  # "Bearer <token>", never logged
        self._answers: asyncio.Queue[asyncio.Future[bytes | None]] = asyncio.Queue(
            listener.max_in_flight
        )
        self._reading: asyncio.Task[None] | None = None
        # Set by an answer after which the connection closes (a failed authentication).
        self._close_after = False
        self._finished = asyncio.Event()

    async def serve(self) -> None:
        sending = asyncio.create_task(self._send())
        self._reading = asyncio.create_task(self._read())
        try:
            await self._reading
        except asyncio.CancelledError:
            pass
        finally:
            # The answers already queued go out; then the end marker closes the connection
            # (unless the sender stopped first: a closed socket).
            if not sending.done():
                marker = asyncio.ensure_future(self._answers.put(_ready(None)))
                await asyncio.wait([marker, sending], return_when=asyncio.FIRST_COMPLETED)
                marker.cancel()
            with contextlib.suppress(Exception):
                await sending
            self.abort()
            self._finished.set()

    def stop_reading(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    async def done(self) -> None:
        await self._finished.wait()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _read(self) -> None:
        listener = self.listener
        try:
            while True:
                try:
                    prefix = await self.reader.readexactly(4)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client went away
                size = int.from_bytes(prefix, "big", signed=True)
                if size < _HEADER.size or size > listener.max_request_bytes:
                    raise _Close(
                        f"a request frame of {size} bytes (the limit is "
                        f"{listener.max_request_bytes})"
                    )
                try:
                    frame = await self.reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                answer = self._dispatch(frame)
                future = asyncio.ensure_future(answer)
                await self._answers.put(future)
                if self._close_after:
                    return
        except _Close as exc:
            listener.stats.connections_closed_on_error += 1
            log.info("kafka_connection_closed", peer=self.peer, reason=str(exc))
        except (OSError, asyncio.IncompleteReadError):
            return
        except Exception as exc:  # a bug: this connection ends, the listener goes on
            listener.stats.connections_closed_on_error += 1
            log.error("kafka_request_failed", peer=self.peer, error=repr(exc))

    async def _send(self) -> None:
        while True:
            future = await self._answers.get()
            try:
                data = await future
            except _Close as exc:
                self.listener.stats.connections_closed_on_error += 1
                log.info("kafka_connection_closed", peer=self.peer, reason=str(exc))
                data = None
            except Exception as exc:
                log.error("kafka_request_failed", peer=self.peer, error=repr(exc))
                data = None
            if data is None:
                self.stop_reading()
                return
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (OSError, RuntimeError):
                self.stop_reading()
                return

    def _dispatch(self, frame: bytes) -> Awaitable[bytes | None]:
        """What answers this request: the encoded answer, or None to close after it."""
        api_key, version, correlation_id = _HEADER.unpack_from(frame)
        if api_key == ApiKey.ApiVersions:
            return _ready(self._api_versions(frame, version, correlation_id))
        supported = SUPPORTED.get(api_key)
        if self.authorization is None and api_key not in _BEFORE_AUTH:
            raise _Close(f"API key {api_key} before SASL authentication")
        if supported is None:
            return _ready(_refused(api_key, version, correlation_id))
        if api_key == ApiKey.Fetch:
            raise _Close("Fetch is not offered: Zerobus Ingest takes writes only")
        if not supported[0] <= version <= supported[1]:
            raise _Close(
                f"API key {api_key} v{version} is not supported (v{supported[0]}-v{supported[1]})"
            )
        try:
            request = _REQUESTS[api_key].decode(frame, version=version, header=True)
        except Exception as exc:
            raise _Close(f"a malformed request (API key {api_key} v{version}): {exc!r}") from None
        if api_key == ApiKey.SaslHandshake:
            return _ready(self._sasl_handshake(request, version, correlation_id))
        if api_key == ApiKey.SaslAuthenticate:
            return _ready(self._sasl_authenticate(request, version, correlation_id))
        assert self.authorization is not None
        if api_key == ApiKey.Metadata:
            answer = self.listener.metadata(request, version, self.authorization)
            return _ready(_encode(answer, correlation_id))
        # Produce
        if request.acks == 0:
            raise _Close("acks=0 is not supported (Zerobus needs acks=all), and gets no answer")
        return self._produce(request, version, correlation_id, len(frame) + 4)

    async def _produce(
        self, request: Any, version: int, correlation_id: int, frame_bytes: int
    ) -> bytes | None:
        assert self.authorization is not None
        answer = await self.listener.produce(request, version, self.authorization, frame_bytes)
        return _encode(answer, correlation_id)

    def _api_versions(self, frame: bytes, version: int, correlation_id: int) -> bytes:
        low, high = SUPPORTED[ApiKey.ApiVersions]
        keys = [
            ApiVersionsResponse.ApiVersion(api_key=k, min_version=lo, max_version=hi)
            for k, (lo, hi) in SUPPORTED.items()
        ]
        if not low <= version <= high:
            # Always answerable: a v0 body with the error and what is supported.
            answer = ApiVersionsResponse(version=0, error_code=UNSUPPORTED_VERSION, api_keys=keys)
            return _encode(answer, correlation_id)
        try:
            ApiVersionsRequest.decode(frame, version=version, header=True)
        except Exception as exc:
            raise _Close(f"a malformed ApiVersions v{version} request: {exc!r}") from None
        answer = ApiVersionsResponse(
            version=version, error_code=NONE, api_keys=keys, throttle_time_ms=0
        )
        return _encode(answer, correlation_id)

    def _sasl_handshake(self, request: Any, version: int, correlation_id: int) -> bytes:
        if request.mechanism != MECHANISM:
            error = UNSUPPORTED_SASL_MECHANISM
            log.info("kafka_sasl_mechanism_refused", peer=self.peer, mechanism=request.mechanism)
        else:
            error = NONE
            self.mechanism = MECHANISM
        answer = SaslHandshakeResponse(version=version, error_code=error, mechanisms=[MECHANISM])
        return _encode(answer, correlation_id)

    def _sasl_authenticate(self, request: Any, version: int, correlation_id: int) -> bytes | None:
        stats = self.listener.stats
        if self.mechanism != MECHANISM:
            answer = SaslAuthenticateResponse(
                version=version,
                error_code=ILLEGAL_SASL_STATE,
                error_message="SaslHandshake with OAUTHBEARER must come first",
                auth_bytes=b"",
                session_lifetime_ms=0,
            )
            return _encode(answer, correlation_id)
        try:
            authorization = parse_oauthbearer(bytes(request.auth_bytes or b""))
            self.listener.auth.authenticate(authorization)
        except (ValueError, TokenRejected) as exc:
            reason = exc.message if isinstance(exc, TokenRejected) else str(exc)
            stats.authentication_failures += 1
            log.info("kafka_sasl_failed", peer=self.peer, reason=reason)
            answer = SaslAuthenticateResponse(
                version=version,
                error_code=SASL_AUTHENTICATION_FAILED,
                error_message=f"authentication failed: {reason}",
                auth_bytes=b"",
                session_lifetime_ms=0,
            )
            # Answered, then the connection is closed, as a Kafka broker does.
            self._close_after = True
            return _encode(answer, correlation_id)
        self.authorization = authorization
        stats.authentications += 1
        answer = SaslAuthenticateResponse(
            version=version,
            error_code=NONE,
            error_message=None,
            auth_bytes=b"",
            session_lifetime_ms=0,
        )
        return _encode(answer, correlation_id)


def _ready(value: bytes | None) -> asyncio.Future[bytes | None]:
    future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _encode(answer: Any, correlation_id: int) -> bytes:
    answer.with_header(correlation_id=correlation_id)
    return bytes(answer.encode(header=True, framed=True))


def _refused(api_key: int, version: int, correlation_id: int) -> bytes:
    """UNSUPPORTED_VERSION for an API not offered, where its answer can say so."""
    response = _REFUSED.get(api_key)
    if response is None or not 0 <= version <= response.max_version:
        raise _Close(f"API key {api_key} v{version} is not offered")
    return _encode(response(version=version, error_code=UNSUPPORTED_VERSION), correlation_id)
