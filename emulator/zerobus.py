"""The Zerobus Ingest gRPC service (`databricks.zerobus.Zerobus/EphemeralStream`).

One call is one stream: a `create_stream` message names the table and the record
format, then `ingest_record` / `ingest_record_batch` messages carry offsets 0, 1, 2, ...
Each message's rows are decoded, checked against the table and handed to the table's
writer; acknowledgements are cumulative and sent only after the rows are committed.

Per stream, the handler runs a reader (decode and queue appends, in offset order) and
an acker (await commits in order, coalesce, send `durability_ack_up_to_offset`). A bad
record stops the reader; what was queued before it still commits and is acknowledged,
then the call ends with INVALID_ARGUMENT naming the problem.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import structlog
from google.protobuf import message

from emulator.catalog import Catalog, parse_table_name
from emulator.errors import EmulatorError, SchemaMismatchError, TableNotFoundError, scrub_paths
from emulator.oauth import OAuthIssuer, TokenRejected
from emulator.records import JsonRecordDecoder, ProtoRecordDecoder
from emulator.wire import GRPC_PREFIX, ZEROBUS_JSON, ZEROBUS_PROTO, WireCounters
from proto import zerobus_service_pb2 as pb
from proto import zerobus_service_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

TABLE_HEADER = "x-databricks-zerobus-table-name"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the service promises 10 MiB; leave headroom


def _canonical(name: str) -> str | None:
    try:
        return parse_table_name(name)
    except SchemaMismatchError:
        return None


class StreamError(Exception):
    """Ends one stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class StreamInfo:
    stream_id: str
    table: str
    record_type: str
    opened_at: float
    messages: int = 0
    rows: int = 0
    acked_offset: int = -1


@dataclass
class ZerobusStats:
    streams_created: int = 0
    streams_rejected: int = 0
    rows_committed: int = 0
    active: dict[str, StreamInfo] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams_created": self.streams_created,
            "streams_rejected": self.streams_rejected,
            "streams_active": len(self.active),
            "rows_committed": self.rows_committed,
            "active": [vars(s) for s in self.active.values()],
        }


_DONE = object()


class Undecodable:
    """A request message whose bytes do not parse as its type. grpcio would end the call
    with UNKNOWN on a deserializer's exception; the handler refuses this with
    INVALID_ARGUMENT instead."""

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem

    def describe(self) -> str:
        return f"it is not a valid {self.type_name} message ({self.problem})"


def lenient(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that gives Undecodable where FromString would raise."""
    name = message_type.DESCRIPTOR.name

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (message.DecodeError, RecursionError, ValueError) as exc:
            return Undecodable(name, str(exc) or type(exc).__name__)

    return deserialize


def text_field(msg: Any, field_name: str, where: str) -> str:
    """A proto2 string field, or StreamError if its bytes are not UTF-8 (proto2 parsing
    does not check them, and then the field reads as bytes)."""
    value = getattr(msg, field_name)
    if not isinstance(value, str):
        raise StreamError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{where}.{field_name} is not valid UTF-8"
        )
    return value


async def abort_stream(
    context: Any, exc: StreamError | UnicodeError | RecursionError, data_root: Path, event: str
) -> None:
    """End a stream that failed on what the client sent, with the reason (paths under
    `data_root` scrubbed). UnicodeError and RecursionError are input no check foresaw:
    still the client's fault, not the service's."""
    if isinstance(exc, StreamError):
        code, reason, message = exc.code, exc.message, scrub_paths(exc.message, data_root)
    else:
        code, reason = grpc.StatusCode.INVALID_ARGUMENT, type(exc).__name__
        message = f"the request is malformed: {reason}"
    log.warning(event, code=code.name, reason=reason)
    await context.abort(code, message)


class ZerobusService(pb_grpc.ZerobusServicer):
    def __init__(
        self,
        catalog: Catalog,
        token: str,
        *,
        rotation_interval_s: float | None = None,
        rotation_grace_s: float = 5.0,
        ack_only: bool = False,
        oauth: OAuthIssuer | None = None,
        wire: WireCounters | None = None,
    ) -> None:
        self.catalog = catalog
        # Bytes each stream's messages carried (`emulator.wire`), per record type and table.
        self.wire = wire or WireCounters()
        self._token = token.encode()
        # Also takes the OAuth tokens it issued (scoped ones for their tables only).
        self.oauth = oauth
        self.rotation_interval_s = rotation_interval_s
        self.rotation_grace_s = rotation_grace_s
        # Acknowledge without decoding or storing: the transport's ceiling, for benchmarks.
        self.ack_only = ack_only
        self.stats = ZerobusStats()
        self._sessions: set[_Session] = set()

    async def EphemeralStream(
        self, request_iterator: AsyncIterator[pb.EphemeralStreamRequest], context: Any
    ) -> None:
        # The SDK waits for response headers before it sends its first message.
        await context.send_initial_metadata(())
        session: _Session | None = None
        try:
            session = await self._open(request_iterator, context)
            self._sessions.add(session)
            await session.run()
        except (StreamError, UnicodeError, RecursionError) as exc:
            if session is None:
                self.stats.streams_rejected += 1
            await abort_stream(context, exc, self.catalog.root.parent, "stream_failed")
        finally:
            if session is not None:
                self._sessions.discard(session)
                self.stats.active.pop(session.info.stream_id, None)

    async def shutdown(self) -> None:
        """Stop reading every stream, commit and acknowledge what they hold, end them."""
        await asyncio.gather(*(s.stop_reading() for s in list(self._sessions)))

    async def _open(
        self, requests: AsyncIterator[pb.EphemeralStreamRequest], context: Any
    ) -> _Session:
        metadata = {k.lower(): v for k, v in context.invocation_metadata()}
        authorization = metadata.get("authorization", "")
        scheme, _, presented = authorization.partition(" ")
        if self.oauth is not None:
            try:
                self.oauth.authenticate(authorization)
            except TokenRejected as exc:
                raise StreamError(grpc.StatusCode.UNAUTHENTICATED, exc.message) from None
        elif scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), self._token):
            raise StreamError(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing bearer token")
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "stream closed before create_stream"
            ) from None
        if isinstance(first, Undecodable):
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"the first message: {first.describe()}"
            )
        if first.WhichOneof("payload") != "create_stream":
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be create_stream"
            )
        create = first.create_stream
        table_name = text_field(create, "table_name", "create_stream")
        if not table_name:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "create_stream has no table_name")
        try:
            table = self.catalog.get(table_name)
            header = metadata.get(TABLE_HEADER)
            if header is None:
                raise StreamError(grpc.StatusCode.UNAUTHENTICATED, f"missing {TABLE_HEADER} header")
            if _canonical(header) != table.name:
                raise StreamError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{TABLE_HEADER} names {header}, the stream targets {table_name}",
                )
            if self.oauth is not None:
                self.oauth.authorize_write(authorization, table.name)
        except TokenRejected as exc:
            raise StreamError(grpc.StatusCode.PERMISSION_DENIED, exc.message) from None
        except TableNotFoundError as exc:
            raise StreamError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        except SchemaMismatchError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

        record_type = create.record_type if create.HasField("record_type") else pb.PROTO
        decoder: ProtoRecordDecoder | JsonRecordDecoder
        try:
            if record_type == pb.PROTO:
                if not create.HasField("descriptor_proto"):
                    raise SchemaMismatchError("a PROTO stream needs descriptor_proto")
                decoder = ProtoRecordDecoder(table.schema, create.descriptor_proto)
            elif record_type == pb.JSON:
                decoder = JsonRecordDecoder(table.schema)
            else:
                raise SchemaMismatchError(f"unsupported record_type {record_type}")
        except SchemaMismatchError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

        info = StreamInfo(
            stream_id=uuid.uuid4().hex,
            table=table.name,
            record_type=pb.RecordType.Name(record_type),
            opened_at=time.time(),
        )
        await context.write(
            pb.EphemeralStreamResponse(
                create_stream_response=pb.CreateIngestStreamResponse(stream_id=info.stream_id)
            )
        )
        self.stats.streams_created += 1
        self.stats.active[info.stream_id] = info
        log.info("stream_opened", stream_id=info.stream_id, table=table.name, type=info.record_type)
        return _Session(self, requests, context, decoder, info)


class StreamSession:
    """One ingest stream's life, shared by the gRPC record streams and Arrow Flight DoPut.

    A reader task (`_read`, the subclass's) decodes each message and queues (offset, commit
    future, rows); the acker commits in order and acknowledges cumulatively, one ack for
    everything already committed (`_acknowledge`, the subclass's wire form); rotation
    signals the client (`_signal_rotation`), waits the grace period and stops reading.
    When reading ends, what was read is still committed and acknowledged before the call
    ends; a failed commit ends the call with UNAVAILABLE.
    """

    # How the logs name this kind of stream ("" or "flight_").
    log_prefix = ""

    def __init__(
        self, service: Any, requests: AsyncIterator[Any], context: Any, info: StreamInfo
    ) -> None:
        self.service = service
        self.requests = requests
        self.context = context
        self.info = info
        self.writer = None if service.ack_only else service.catalog.writer(info.table)
        self.pending: asyncio.Queue[Any] = asyncio.Queue()
        self.write_lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        raise NotImplementedError

    async def _acknowledge(self, last: int, rows: int) -> None:
        raise NotImplementedError

    async def _signal_rotation(self, grace_s: float) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        self.reader = asyncio.create_task(self._read())
        acker = asyncio.create_task(self._ack())
        rotation = (
            asyncio.create_task(self._rotate())
            if self.service.rotation_interval_s is not None
            else None
        )
        try:
            await asyncio.wait({self.reader, acker}, return_when=asyncio.FIRST_COMPLETED)
            if acker.done() and acker.exception() is not None:
                self.reader.cancel()
                acker.result()  # raises the commit failure
            read_error: BaseException | None = None
            try:
                await self.reader
            except asyncio.CancelledError:
                if not self.reader.cancelled():
                    raise
            except StreamError as exc:
                read_error = exc
            self.pending.put_nowait(_DONE)
            await acker  # commits and acknowledges what was read before the end
            if read_error is not None:
                raise read_error
        finally:
            for task in (self.reader, acker, rotation):
                if task is not None and not task.done():
                    task.cancel()
            log.info(
                self.log_prefix + "stream_closed",
                stream_id=self.info.stream_id,
                messages=self.info.messages,
                rows=self.info.rows,
                acked=self.info.acked_offset,
            )

    async def stop_reading(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()

    async def _ack(self) -> None:
        while True:
            item = await self.pending.get()
            if item is _DONE:
                return
            last, rows = await self._committed(item)
            # Coalesce: everything already committed behind it shares one ack.
            while not self.pending.empty():
                queued = self.pending._queue[0]  # type: ignore[attr-defined]
                if queued is _DONE or (queued[1] is not None and not queued[1].done()):
                    break
                self.pending.get_nowait()
                offset, more = await self._committed(queued)
                last, rows = offset, rows + more
            self.info.acked_offset = last
            self.info.rows += rows
            self.service.stats.rows_committed += rows
            await self._acknowledge(last, rows)

    @staticmethod
    async def _committed(item: tuple[int, asyncio.Future[Any] | None, int]) -> tuple[int, int]:
        offset, commit, rows = item
        if commit is not None:
            try:
                await commit
            except Exception as exc:
                raise StreamError(
                    grpc.StatusCode.UNAVAILABLE, f"commit of offset {offset} failed: {exc}"
                ) from exc
        return offset, rows

    async def _rotate(self) -> None:
        interval = self.service.rotation_interval_s
        assert interval is not None
        await asyncio.sleep(interval)
        grace = self.service.rotation_grace_s
        await self._signal_rotation(grace)
        log.info(
            self.log_prefix + "stream_rotation_signalled",
            stream_id=self.info.stream_id,
            grace_s=grace,
        )
        await asyncio.sleep(grace)
        await self.stop_reading()


class _Session(StreamSession):
    def __init__(
        self,
        service: ZerobusService,
        requests: AsyncIterator[pb.EphemeralStreamRequest],
        context: Any,
        decoder: ProtoRecordDecoder | JsonRecordDecoder,
        info: StreamInfo,
    ) -> None:
        super().__init__(service, requests, context, info)
        self.decoder = decoder
        self.wire_interface = (
            ZEROBUS_JSON if isinstance(decoder, JsonRecordDecoder) else ZEROBUS_PROTO
        )

    async def _read(self) -> None:
        expected = 0
        async for request in self.requests:
            if isinstance(request, Undecodable):
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"offset {expected}: {request.describe()}",
                )
            kind = request.WhichOneof("payload")
            if kind == "ingest_record":
                body = request.ingest_record
                which = body.WhichOneof("record")
                payloads: list[Any] = [getattr(body, which)] if which else []
            elif kind == "ingest_record_batch":
                body = request.ingest_record_batch
                which = body.WhichOneof("batch")
                payloads = list(getattr(body, which).records) if which else []
            else:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} after create_stream"
                )
            if not body.HasField("offset_id") or body.offset_id != expected:
                got = body.offset_id if body.HasField("offset_id") else "none"
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"offset_id {got} out of order: expected {expected}",
                )
            if not payloads:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"message at offset {expected} has no records"
                )
            is_json = which in ("json_record", "json_batch")
            if is_json != isinstance(self.decoder, JsonRecordDecoder):
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"offset {expected}: {which} on a {self.info.record_type} stream",
                )
            self.info.messages += 1
            self.service.wire.add(
                self.wire_interface, self.info.table, request.ByteSize() + GRPC_PREFIX
            )
            if self.writer is None:
                self.pending.put_nowait((expected, None, len(payloads)))
            else:
                batch = self._decode(payloads, expected)
                commit = asyncio.ensure_future(self.writer.append(batch))
                self.pending.put_nowait((expected, commit, batch.num_rows))
            expected += 1

    def _decode(self, payloads: list[Any], offset: int) -> pa.RecordBatch:
        # On the event loop: decoding holds the GIL anyway, and a thread hop per message
        # costs more in wake-ups than it gives back.
        try:
            return self.decoder.decode(payloads)
        except EmulatorError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"offset {offset}: {exc}") from None

    async def _acknowledge(self, last: int, rows: int) -> None:
        async with self.write_lock:
            await self.context.write(
                pb.EphemeralStreamResponse(
                    ingest_record_response=pb.IngestRecordResponse(durability_ack_up_to_offset=last)
                )
            )

    async def _signal_rotation(self, grace_s: float) -> None:
        seconds, nanos = int(grace_s), int((grace_s - int(grace_s)) * 1e9)
        async with self.write_lock:
            await self.context.write(
                pb.EphemeralStreamResponse(
                    close_stream_signal=pb.CloseStreamSignal(
                        duration={"seconds": seconds, "nanos": nanos}
                    )
                )
            )


def build_server(service: ZerobusService, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for the service, bound to host:port (0 = any free port)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    # The generated registration, with a deserializer that lets the handler answer
    # undecodable messages itself.
    handlers = {
        "EphemeralStream": grpc.stream_stream_rpc_method_handler(
            service.EphemeralStream,
            request_deserializer=lenient(pb.EphemeralStreamRequest),
            response_serializer=pb.EphemeralStreamResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("databricks.zerobus.Zerobus", handlers),)
    )
    server.add_registered_method_handlers("databricks.zerobus.Zerobus", handlers)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the Zerobus service to {host}:{port}")
    return server, bound
