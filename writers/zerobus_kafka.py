"""The Zerobus Kafka writer: a `confluent-kafka` (librdkafka) producer, topic = the table.

Each batch is produced as one JSON object per record value (the same JSON form as Zerobus
JSON records, REST and MQTT: `workloads.wire.json_rows`); key, headers and partition are
left to the client, as the service ignores them. The batch is durable when every record's
delivery report is OK with an offset >= 0; any failed report fails the batch with the
Kafka error's name and text (librdkafka passes on the error code, not the broker's
message: a record that does not fit the table fails as "INVALID_RECORD: Broker: Broker
failed to validate record"; the stand-in logs why).

The producer is configured as the service requires: SASL_SSL with OAUTHBEARER,
`acks=all`, `enable.idempotence=false`, `compression.type=none`. The token is a
table-scoped OAuth token (client credentials and authorization_details, as for
zerobus-rest), so there is one producer per table; it is handed to librdkafka through
`oauth_cb` with its expiry, and librdkafka asks again at 80 % of its life. Databricks mode:
bootstrap ZEROBUS_KAFKA_BOOTSTRAP (default: the Zerobus host on port 9092), the service
principal from the unified auth, the system CA store. Local mode: the local stack's
`kafka_bootstrap`, its OAuth client and its CA (`ca_file`); ZEROBUS_KAFKA_AUTH=token sends
the stack's own token instead.

Throughput settings (ZEROBUS_KAFKA_*): a batch arrives whole, so records go out at once
into requests of up to `batch_bytes` (1 MB, the service's default message.max.bytes) and
`batch_messages`; `linger_ms` (5, librdkafka's default) only lets concurrent batches of
the same table share a request. `max_in_flight` requests per connection (5) keeps the
pipe full while commits are pending without piling up retries after a failure.

Threads: librdkafka serves delivery reports, token refreshes and errors only from poll(),
so each producer has a poll thread; reports are counted there and a batch's future is
resolved on the event loop with `call_soon_threadsafe`. produce() itself only enqueues and
runs on the loop; a full local queue (BufferError) waits for deliveries without blocking
the loop. librdkafka retries requests lost with a connection (at-least-once: a commit whose
answer was lost is written again); a report not in within ZEROBUS_KAFKA_DELIVERY_TIMEOUT_S
fails the batch (_MSG_TIMED_OUT) and its rows are not counted as written. A refused
SASL authentication fails the table's pending batches at once (WriteFailedError; a batch
refused on a cached OAuth token is sent once more with a new producer and token, as
zerobus-rest does on a 401: nothing of it was sent), and so
does an unreachable service (librdkafka's "all brokers down": WriterUnavailableError with
the connection's error); the producer is then dropped with what it still queues, and the
next write starts a new one (with a new token). So a service that restarts fails the
batches in flight as unavailable, and the writes after it succeed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from importlib import metadata
from typing import Any, ClassVar

import confluent_kafka
import structlog
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dwbench.errors import DirectWriteError, WriteFailedError, WriterUnavailableError
from emulator.wire import ZEROBUS_KAFKA
from workloads.base import Rows
from writers.base import Targets, WriteReceipt
from writers.zerobus_oauth import ZerobusOAuthSettings, ZerobusOAuthWriter, zerobus_host

log = structlog.get_logger(__name__)
_LIBRDKAFKA_LOG = logging.getLogger(f"{__name__}.librdkafka")

DEFAULT_PORT = 9092
# The stack's own token does not expire; librdkafka still wants an expiry.
_FIXED_TOKEN_LIFETIME_S = 3600.0
# librdkafka's bound of a v2 record's framing (length, attributes, timestamp and offset
# deltas, key and value lengths, header count as varints), added to the value when it
# checks a record against message.max.bytes.
_RECORD_OVERHEAD = 36
# How long the poll thread waits in poll(); also how fast it notices a stop.
_POLL_S = 0.05


class ZerobusKafkaSettings(ZerobusOAuthSettings):
    """ZEROBUS_KAFKA_BOOTSTRAP, _AUTH, _WORKSPACE_ID, _CA_FILE, _DELIVERY_TIMEOUT_S,
    _REQUEST_TIMEOUT_S, _LINGER_MS, _BATCH_BYTES, _BATCH_MESSAGES, _MAX_IN_FLIGHT,
    _QUEUE_MAX_MESSAGES, _MAX_MESSAGE_BYTES."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_KAFKA_")

    # host:port; default: the Zerobus host (ZEROBUS_ENDPOINT) on 9092, or the local
    # stack's kafka_bootstrap.
    bootstrap: str | None = None
    # A CA file to verify the service against; default: the system CA store, or the
    # local stack's ca_file.
    ca_file: str | None = None
    delivery_timeout_s: float = Field(default=60.0, gt=0)  # message.timeout.ms
    request_timeout_s: float = Field(default=30.0, gt=0)  # request.timeout.ms
    linger_ms: float = Field(default=5.0, ge=0)
    batch_bytes: int = Field(default=1_000_000, ge=1024)  # batch.size
    # message.max.bytes: the service's default; a record past it is refused up front.
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    batch_messages: int = Field(default=10_000, ge=1)  # batch.num.messages
    max_in_flight: int = Field(default=5, ge=1)  # max.in.flight.requests.per.connection
    queue_max_messages: int = Field(default=1_000_000, ge=1)  # queue.buffering.max.messages


class _Deliveries:
    """The delivery reports of one batch: counted in the poll thread, resolved on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        # A batch that failed before it waited leaves its failure unread: not an error.
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._lock = threading.Lock()
        self._delivered = 0
        self._expected: int | None = None
        self.error: str | None = None

    def report(self, err: Any, msg: Any) -> None:
        """on_delivery, in the poll thread."""
        with self._lock:
            if self.error is None:
                if err is not None:
                    self.error = f"{err.name()}: {err.str()}"
                elif msg.offset() is None or msg.offset() < 0:
                    self.error = f"the delivery report of a record has no offset ({msg.offset()})"
            self._delivered += 1
            done = self._delivered == self._expected
        if done:
            self.loop.call_soon_threadsafe(self._resolve)

    def seal(self, produced: int) -> None:
        """All `produced` records are enqueued (on the loop)."""
        with self._lock:
            self._expected = produced
            done = self._delivered == produced
        if done:
            self._resolve()

    def fail(self, error: DirectWriteError) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            reason = f"Zerobus Kafka refused the batch: {self.error}"
            self.fail(WriteFailedError(reason, writer=ZerobusKafkaWriter.name))
        else:
            self.future.set_result(None)


class _TableProducer:
    """One table's producer and the thread that polls it."""

    def __init__(self, producer: Any, table: str) -> None:
        self.producer = producer
        self.table = table
        self.pending: set[_Deliveries] = set()
        # Why this producer is given up (refused authentication, unreachable service): its
        # pending batches failed with it, and the next write starts a new producer.
        self.broken: DirectWriteError | None = None
        self.token_refused = False  # broken by a refused SASL authentication
        self.last_transport_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"kafka-poll-{table}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(_POLL_S)
            except Exception as exc:  # a callback raised (a token not fetched) or fatal
                log.error("zerobus_kafka_poll_failed", table=self.table, error=str(exc))
                self._stop.wait(_POLL_S)

    def close(self, timeout_s: float) -> None:
        """Flush what is queued (up to `timeout_s`), drop the rest, stop polling (blocking)."""
        if self.broken is None:
            self.producer.flush(timeout_s)
        self.producer.purge()
        self.producer.flush(0)
        self._stop.set()
        self._thread.join()


class ZerobusKafkaWriter(ZerobusOAuthWriter):
    name = "zerobus-kafka"
    label = "Zerobus Ingest (Kafka, JSON)"
    color = "#a61e4d"
    client_distributions: ClassVar[tuple[str, ...]] = ("confluent-kafka",)
    settings_class = ZerobusKafkaSettings
    config: ZerobusKafkaSettings
    wire_interface = ZEROBUS_KAFKA
    interface = "Kafka"
    local_endpoint_keys = ("kafka_bootstrap", "ca_file")
    auth_transport = "SASL OAUTHBEARER"

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.bootstrap: str | None = self.config.bootstrap
        self.ca_file: str | None = self.config.ca_file  # None: the system CA store
        self._producers: dict[str, _TableProducer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.records = 0
        self.producers_created = 0

    # -- setup --------------------------------------------------------------------------

    def _endpoint(self) -> str | None:
        return self.bootstrap

    def _missing_endpoint(self) -> str:
        return (
            "neither ZEROBUS_KAFKA_BOOTSTRAP nor ZEROBUS_ENDPOINT is set (the workspace's "
            "Zerobus Ingest endpoint)"
        )

    def _knows_local_endpoints(self) -> bool:
        return bool(self.bootstrap and self.ca_file)

    def _use_local_endpoints(self, endpoints: dict[str, Any]) -> None:
        self.bootstrap = self.bootstrap or endpoints["kafka_bootstrap"]
        self.ca_file = self.ca_file or endpoints["ca_file"]

    def _use_workspace(self) -> str:
        if not self.bootstrap:
            assert self.targets.zerobus_endpoint is not None
            self.bootstrap = f"{zerobus_host(self.targets.zerobus_endpoint)}:{DEFAULT_PORT}"
        return self.bootstrap.rsplit(":", 1)[0]

    async def _open_transport(self) -> None:
        # Producers open per table on first use; librdkafka's threads call back into this loop.
        self._loop = asyncio.get_running_loop()

    async def _close_transport(self) -> None:
        producers, self._producers = list(self._producers.values()), {}
        for entry in producers:
            await asyncio.to_thread(entry.close, self.config.delivery_timeout_s)
        self._loop = None

    def _producer_config(self, table: str) -> dict[str, Any]:
        c = self.config
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": f"dwbench-{self.name}",
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "OAUTHBEARER",
            "oauth_cb": lambda _config: self._oauth_token(table),
            "error_cb": lambda err: self._on_error(table, err),
            "acks": "all",
            "enable.idempotence": False,
            "compression.type": "none",
            "linger.ms": c.linger_ms,
            "batch.size": c.batch_bytes,
            "message.max.bytes": c.max_message_bytes,
            "batch.num.messages": c.batch_messages,
            "max.in.flight.requests.per.connection": c.max_in_flight,
            "queue.buffering.max.messages": c.queue_max_messages,
            "message.timeout.ms": int(c.delivery_timeout_s * 1000),
            "request.timeout.ms": int(c.request_timeout_s * 1000),
            # A table that does not exist fails its records soon, not after 30 s.
            "topic.metadata.propagation.max.ms": 1000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1000,
            "socket.nagle.disable": True,
            # librdkafka's own log lines through logging (served by poll), not stderr.
            "logger": _LIBRDKAFKA_LOG,
        }
        if self.ca_file:
            config["ssl.ca.location"] = self.ca_file
        return config

    # -- tokens (called by librdkafka in the poll thread) ---------------------------------

    def _oauth_token(self, table: str) -> tuple[str, float]:
        if self._tokens is None:
            assert self._bearer is not None
            return self._bearer, time.time() + _FIXED_TOKEN_LIFETIME_S
        assert self._loop is not None
        tokens = self._tokens
        future = asyncio.run_coroutine_threadsafe(tokens.get(table), self._loop)
        token = future.result(timeout=60)
        return token, time.time() + tokens.valid_for(table)

    def _on_error(self, table: str, err: Any) -> None:
        """error_cb, in the poll thread: errors of the client, not of one record."""
        text = f"{err.name()}: {err.str()}"
        log.warning("zerobus_kafka_client_error", writer=self.name, table=table, error=text)
        assert self._loop is not None
        code = err.code()
        if code == confluent_kafka.KafkaError._AUTHENTICATION:
            self._loop.call_soon_threadsafe(self._give_up, table, code, text)
        elif code == confluent_kafka.KafkaError._TRANSPORT:
            self._loop.call_soon_threadsafe(self._transport_error, table, err.str())
        elif code == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            self._loop.call_soon_threadsafe(self._give_up, table, code, text)

    def _transport_error(self, table: str, text: str) -> None:
        entry = self._producers.get(table)
        if entry is not None:
            entry.last_transport_error = text

    def _give_up(self, table: str, code: int, text: str) -> None:
        """The producer of `table` cannot deliver (a refused token, no broker reachable):
        its pending batches fail now, plainly, instead of at the delivery timeout."""
        entry = self._producers.get(table)
        if entry is None or entry.broken is not None:
            return
        error: DirectWriteError
        if code == confluent_kafka.KafkaError._AUTHENTICATION:
            error = WriteFailedError(
                f"Zerobus Kafka refused the SASL authentication for {table}: {text}",
                writer=self.name,
            )
            entry.token_refused = True
            if self._tokens is not None:
                self._tokens.forget(table)
        else:
            error = WriterUnavailableError(
                f"cannot reach the Zerobus Kafka endpoint {self.bootstrap}: "
                f"{entry.last_transport_error or text}",
                writer=self.name,
            )
        entry.broken = error
        self.last_error = error.message
        for deliveries in list(entry.pending):
            deliveries.fail(error)

    # -- writing ------------------------------------------------------------------------

    async def _producer(self, table: str) -> _TableProducer:
        entry = self._producers.get(table)
        if entry is not None and entry.broken is None:
            return entry
        async with self._locks.setdefault(table, asyncio.Lock()):
            entry = self._producers.get(table)
            if entry is not None and entry.broken is not None:
                # Given up: drop it, with what it still queues (those batches failed), and
                # start again, with a new token.
                del self._producers[table]
                await asyncio.to_thread(entry.close, 0)
                entry = None
            if entry is None:
                if self._tokens is not None:
                    await self._tokens.get(table)  # a refused grant fails here, plainly
                config = self._producer_config(table)
                try:
                    # Built off the loop: librdkafka may ask oauth_cb for a token at once.
                    producer = await asyncio.to_thread(confluent_kafka.Producer, config)
                except confluent_kafka.KafkaException as exc:
                    raise WriterUnavailableError(
                        f"cannot create the Kafka producer: {exc}", writer=self.name
                    ) from exc
                entry = _TableProducer(producer, table)
                entry.start()
                self._producers[table] = entry
                self.producers_created += 1
        return entry

    async def write(self, rows: Rows) -> WriteReceipt:
        if self._loop is None:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        self.check(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"table": table})
        values = self._json_records(rows)
        limit = self.config.max_message_bytes - _RECORD_OVERHEAD
        for i, value in enumerate(values):
            if len(value) > limit:
                # librdkafka would fail it alone (MSG_SIZE_TOO_LARGE) after sending the rest.
                raise WriteFailedError(
                    f"row {i} encodes to {len(value):,} bytes of JSON; a Kafka record takes at "
                    f"most {limit:,} (message.max.bytes {self.config.max_message_bytes:,} less "
                    "the record's framing): nothing was sent",
                    writer=self.name,
                )
        for fresh in (False, True):
            entry = await self._producer(table)
            try:
                await self._deliver(entry, values)
            except WriteFailedError as exc:
                self.last_error = exc.message
                if entry.token_refused and self._tokens is not None and not fresh:
                    # A cached token the service no longer takes (it restarted, say): the
                    # connection never authenticated, so nothing was sent. A new producer
                    # with a new token sends the batch once more.
                    log.warning("zerobus_kafka_token_refused", writer=self.name, table=table)
                    continue
                raise
            except DirectWriteError as exc:
                self.last_error = exc.message
                raise
            break
        self.last_error = None
        return WriteReceipt(rows=len(rows), details={"table": table, "records": len(values)})

    async def _deliver(self, entry: _TableProducer, values: list[bytes]) -> None:
        """Produce the values and wait for every delivery report (or a DirectWriteError)."""
        assert self._loop is not None
        deliveries = _Deliveries(self._loop)
        entry.pending.add(deliveries)
        try:
            await self._produce(entry, values, deliveries)
            # librdkafka reports every record within message.timeout.ms; the margin only
            # guards against a client that stopped reporting.
            limit = self.config.delivery_timeout_s + 30
            try:
                await asyncio.wait_for(asyncio.shield(deliveries.future), limit)
            except TimeoutError as exc:
                raise WriteFailedError(
                    f"no delivery reports within {limit:g} s; the rows are not counted as written",
                    writer=self.name,
                ) from exc
        except DirectWriteError:
            if not entry.token_refused:  # sent: the bytes were on the wire
                self._count(entry.table, values)
            raise
        finally:
            entry.pending.discard(deliveries)
        self._count(entry.table, values)

    def _count(self, table: str, values: list[bytes]) -> None:
        self.count_payload(table, sum(len(v) for v in values))
        self.records += len(values)

    async def _produce(
        self, entry: _TableProducer, values: list[bytes], deliveries: _Deliveries
    ) -> None:
        """Enqueue every value (or WriteFailedError), then seal the count of reports due."""
        produce = entry.producer.produce
        report = deliveries.report
        table = entry.table
        produced = 0
        try:
            for value in values:
                while True:
                    if entry.broken is not None:
                        raise entry.broken
                    try:
                        produce(table, value, on_delivery=report)
                        break
                    except BufferError:
                        # The local queue is full: wait for deliveries to make room.
                        await asyncio.sleep(0.005)
                    except confluent_kafka.KafkaException as exc:
                        raise WriteFailedError(
                            f"the producer refused record {produced}: {exc}", writer=self.name
                        ) from exc
                produced += 1
        finally:
            deliveries.seal(produced)

    # -- status -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "bootstrap": self.bootstrap,
            "auth_mode": self.auth_mode(),
            "ca": self.ca_file or "system CA store",
            "confluent_kafka_version": metadata.version("confluent-kafka"),
            "librdkafka_version": confluent_kafka.libversion()[0],
            "acks": "all",
            "linger_ms": c.linger_ms,
            "batch_bytes": c.batch_bytes,
            "max_in_flight": c.max_in_flight,
            "producers": len(self._producers),
            "producers_created": self.producers_created,
            "records": self.records,
            **self.auth_counters(),
        }
