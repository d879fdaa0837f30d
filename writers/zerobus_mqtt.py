"""The Zerobus MQTT writer: paho-mqtt v5 over TLS, one JSON object per QoS 1 PUBLISH.

One connection per table, opened on first use and kept: the token and the table travel
in the CONNECT's User Properties (`Authorization: Bearer <token>`,
`x-databricks-zerobus-table-name`), so they are the connection's. Each row of a batch is
one PUBLISH whose topic is the table (`catalog.schema.table`) and whose payload is the
row as one JSON object (the same JSON form as the other Zerobus JSON paths). A batch is
durable when every one of its PUBACKs has a success reason code (< 0x80); any other
reason fails the batch, naming the code and the server's Reason String.

paho runs its network loop on its own thread (`loop_start`); its callbacks gather each
batch's PUBACKs and hand the complete batch (or a lost connection, or the CONNACK) to the
event loop with `call_soon_threadsafe`. The blocking TCP and TLS connect and a batch's
PUBLISH calls (paho takes its locks and wakes its thread for each) run in a worker thread,
so the event loop never waits on paho. paho's own in-flight cap (20 by default) is
switched off: the writer keeps as many PUBLISHes unacknowledged as the server's CONNACK
allows (Receive Maximum, 4,096 on Zerobus), the window of one connection shared by the
batches written into the table.

Auth is OAuth M2M as for zerobus-rest: a token from `{workspace}/oidc/v1/token` with the
table's authorization_details, one per table (ZEROBUS_MQTT_AUTH=token sends the local
stack's token instead). Databricks mode connects to ZEROBUS_MQTT_ENDPOINT (default: the
Zerobus host, ZEROBUS_ENDPOINT, on port 8883) and verifies it against the system's CA
store; local mode to the stack's `mqtt_endpoint`, verified against the stack's CA file.
A CONNACK 0x87 on a cached token (the service restarted) fetches a new token once.

A connection lost mid-batch fails the batch (the service may have committed some of its
rows: at-least-once, as on the service); the next batch connects again. A batch not
acknowledged within ZEROBUS_MQTT_ACK_TIMEOUT_S fails, and its connection is dropped.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dwbench.errors import WriteFailedError, WriterUnavailableError
from emulator.wire import ZEROBUS_MQTT
from workloads.base import Rows
from writers.base import Targets, WriteReceipt
from writers.zerobus_oauth import ZerobusOAuthSettings, ZerobusOAuthWriter, zerobus_host

log = structlog.get_logger(__name__)

MQTT_TLS_PORT = 8883
TABLE_PROPERTY = "x-databricks-zerobus-table-name"
NOT_AUTHORIZED = 0x87
# What a v5 server's CONNACK implies when it names no Receive Maximum.
DEFAULT_RECEIVE_MAXIMUM = 65_535


class ZerobusMqttSettings(ZerobusOAuthSettings):
    """ZEROBUS_MQTT_ENDPOINT, _AUTH, _WORKSPACE_ID, _CA_FILE, _CONNECT_TIMEOUT_S,
    _ACK_TIMEOUT_S, _KEEPALIVE_S."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_MQTT_")

    # host:port of the MQTT listener; default: the Zerobus host (ZEROBUS_ENDPOINT) on
    # port 8883, or the local stack's mqtt_endpoint.
    endpoint: str | None = None
    # A CA file to verify the endpoint against; default: the local stack's CA in local
    # mode, the system's CA store in databricks mode.
    ca_file: str | None = None
    connect_timeout_s: float = Field(default=30.0, gt=0)
    ack_timeout_s: float = Field(default=60.0, gt=0)
    keepalive_s: int = Field(default=60, ge=5, le=65_535)


class ConnectionLost(Exception):
    """The connection ended before every PUBLISH of a batch was acknowledged."""


@dataclass(frozen=True)
class _Ack:
    reason: int
    name: str
    message: str | None


def _reason_string(properties: Properties | None) -> str | None:
    text = getattr(properties, "ReasonString", None) if properties is not None else None
    return text if isinstance(text, str) else None


class _Batch:
    """The PUBACKs of one batch; its future resolves on the event loop when all are in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.acks: list[_Ack] = []
        self.sent_bytes = 0
        self.future: asyncio.Future[list[_Ack]] = loop.create_future()

    # Any thread, under the connection's lock.
    def add(self, ack: _Ack) -> None:
        self.acks.append(ack)
        if len(self.acks) == self.size:
            self.loop.call_soon_threadsafe(self._finish)

    def fail(self, why: str) -> None:
        self.loop.call_soon_threadsafe(self._fail, why)

    # The event loop.
    def _finish(self) -> None:
        if not self.future.done():
            self.future.set_result(self.acks)

    def _fail(self, why: str) -> None:
        if not self.future.done():
            self.future.set_exception(ConnectionLost(why))


class _TableConnection:
    """One table's MQTT connection: paho's network thread, a window of Receive Maximum
    unacknowledged PUBLISHes, PUBACKs gathered per batch."""

    def __init__(self, table: str, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.client = client
        self.loop = loop
        self.connack: asyncio.Future[tuple[int, str, str | None, int]] = loop.create_future()
        self.window = threading.Semaphore(0)
        self.receive_maximum = 0
        self.lost: str | None = None
        self.published = 0
        self.acknowledged = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, _Batch] = {}  # mid -> the batch it belongs to
        self._early: dict[int, _Ack] = {}  # PUBACKs that beat their mid's registration
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    # paho's network thread.

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        receive = int(getattr(props, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM))
        if reason.value < 0x80:
            self.receive_maximum = receive
            self.window = threading.Semaphore(receive)
        answer = (reason.value, reason.getName(), _reason_string(props), receive)
        self.loop.call_soon_threadsafe(self._connected, answer)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        ack = _Ack(reason.value, reason.getName(), _reason_string(props))
        with self._lock:
            self.acknowledged += 1
            batch = self._waiting.pop(mid, None)
            if batch is None:
                self._early[mid] = ack
            else:
                batch.add(ack)
        self.window.release()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if getattr(flags, "is_disconnect_packet_from_server", False):
            why = f"the server disconnected: {reason.getName()} (0x{reason.value:02x})"
            server = _reason_string(props)
            why = f"{why}: {server}" if server else why
        else:
            why = "the connection closed without a DISCONNECT from the server"
        self._end(why)
        self.loop.call_soon_threadsafe(self._gone, why)

    def _end(self, why: str) -> None:
        with self._lock:
            self.lost = self.lost or why
            batches = set(self._waiting.values())
            self._waiting.clear()
        for batch in batches:
            batch.fail(why)
        # Wake every publisher waiting for the window: each finds the connection lost.
        for _ in range(self.receive_maximum + 1):
            self.window.release()

    # The event loop.

    def _connected(self, answer: tuple[int, str, str | None, int]) -> None:
        if not self.connack.done():
            self.connack.set_result(answer)

    def _gone(self, why: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionLost(why))

    # A worker thread: paho's publish takes its locks and wakes its network thread, some
    # tens of microseconds a message, too long to spend on the event loop for a batch.

    def publish_all(self, batch: _Batch, payloads: list[bytes], timeout_s: float) -> None:
        for payload in payloads:
            if not self.window.acquire(timeout=timeout_s):
                raise TimeoutError(f"no room in the window of {self.receive_maximum}")
            if self.lost is not None:
                raise ConnectionLost(self.lost)
            info = self.client.publish(self.table, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._end(f"paho could not send: {mqtt.error_string(info.rc)}")
                raise ConnectionLost(self.lost or "")
            batch.sent_bytes += len(payload)
            with self._lock:
                self.published += 1
                if self.lost is not None:
                    raise ConnectionLost(self.lost)
                early = self._early.pop(info.mid, None)
                if early is not None:
                    batch.add(early)
                else:
                    self._waiting[info.mid] = batch

    def pending(self) -> int:
        """PUBLISHes sent and not yet acknowledged."""
        with self._lock:
            return len(self._waiting)

    async def close(self) -> None:
        self._end("closed by the writer")
        if self.client.is_connected():
            self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class ZerobusMqttWriter(ZerobusOAuthWriter):
    name = "zerobus-mqtt"
    label = "Zerobus Ingest (MQTT v5, JSON)"
    color = "#5f3dc4"
    client_distributions: ClassVar[tuple[str, ...]] = ("paho-mqtt",)
    settings_class = ZerobusMqttSettings
    config: ZerobusMqttSettings
    wire_interface = ZEROBUS_MQTT
    interface = "MQTT"
    local_endpoint_keys = ("mqtt_endpoint", "ca_file")

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.endpoint: str | None = self.config.endpoint
        # A CA file to verify the endpoint against; None: the system's CA store.
        self.ca_file: str | None = self.config.ca_file
        self._tls: ssl.SSLContext | None = None
        self._connections: dict[str, _TableConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.connects = 0
        self.publishes = 0

    # -- setup --------------------------------------------------------------------------

    def _endpoint(self) -> str | None:
        return self.endpoint

    def _knows_local_endpoints(self) -> bool:
        return bool(self.endpoint and self.ca_file)

    def _use_local_endpoints(self, endpoints: dict[str, Any]) -> None:
        self.endpoint = self.endpoint or endpoints["mqtt_endpoint"]
        self.ca_file = self.ca_file or endpoints["ca_file"]

    def _use_workspace(self) -> str:
        host = zerobus_host(self.targets.zerobus_endpoint or "")
        self.endpoint = self.endpoint or f"{host}:{MQTT_TLS_PORT}"
        return host or self._host_port()[0]

    async def _open_transport(self) -> None:
        # Connections open per table on first use, all verified against this context.
        self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=self.ca_file)

    async def _close_transport(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()

    def _host_port(self) -> tuple[str, int]:
        assert self.endpoint is not None
        host, sep, port = self.endpoint.rpartition(":")
        if not sep or not port.isdigit():
            return self.endpoint, MQTT_TLS_PORT
        return host, int(port)

    # -- connections --------------------------------------------------------------------

    async def _connection(self, table: str) -> _TableConnection:
        conn = self._connections.get(table)
        if conn is not None and conn.lost is None:
            return conn
        async with self._locks.setdefault(table, asyncio.Lock()):
            conn = self._connections.get(table)
            if conn is not None and conn.lost is None:
                return conn
            if conn is not None:
                self._connections.pop(table, None)
                await conn.close()
            for fresh in (False, True):
                token = await self._token(table)
                conn, refused = await self._connect(table, token)
                if conn is not None:
                    self._connections[table] = conn
                    return conn
                if refused != NOT_AUTHORIZED or self._tokens is None or fresh:
                    break
                self._tokens.forget(table)  # a cached token the service no longer takes
                log.warning("zerobus_mqtt_token_refused", writer=self.name, table=table)
            assert self.last_error is not None
            raise WriterUnavailableError(self.last_error, writer=self.name)

    async def _connect(self, table: str, token: str) -> tuple[_TableConnection | None, int]:
        """A connected table connection, or None and the CONNACK reason (0 if none came)."""
        host, port = self._host_port()
        where = f"the Zerobus MQTT endpoint {host}:{port}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        assert self._tls is not None
        client.tls_set_context(self._tls)
        client.max_inflight_messages = 0  # the server's Receive Maximum is the window
        conn = _TableConnection(table, client, asyncio.get_running_loop())
        props = Properties(PacketTypes.CONNECT)
        props.UserProperty = [("Authorization", f"Bearer {token}"), (TABLE_PROPERTY, table)]
        self.connects += 1
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    client.connect, host, port, self.config.keepalive_s, properties=props
                ),
                self.config.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.last_error = f"cannot connect to {where}: {str(exc) or type(exc).__name__}"
            return None, 0
        client.loop_start()
        try:
            code, name, message, receive = await asyncio.wait_for(
                asyncio.shield(conn.connack), self.config.connect_timeout_s
            )
        except (ConnectionLost, TimeoutError) as exc:
            await conn.close()
            self.last_error = f"{where} sent no CONNACK: {str(exc) or 'timed out'}"
            return None, 0
        if code >= 0x80:
            await conn.close()
            self.last_error = f"{where} refused the connection: {name} (0x{code:02x})" + (
                f": {message}" if message else ""
            )
            return None, code
        log.info("zerobus_mqtt_connected", writer=self.name, table=table, receive_maximum=receive)
        return conn, code

    # -- writing ------------------------------------------------------------------------

    async def write(self, rows: Rows) -> WriteReceipt:
        if not self._open:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        self.check(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"table": table})
        payloads = self._json_records(rows)
        conn = await self._connection(table)
        batch = _Batch(asyncio.get_running_loop(), len(payloads))
        timeout_s = self.config.ack_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.to_thread(conn.publish_all, batch, payloads, timeout_s)
                acks = await batch.future
        except ConnectionLost as exc:
            self.last_error = (
                f"the MQTT connection for {table} was lost after {len(batch.acks)} of "
                f"{len(payloads)} PUBACKs: {exc}; the batch is not counted as written (the "
                "service may have committed some of its rows)"
            )
            raise WriteFailedError(self.last_error, writer=self.name) from exc
        except TimeoutError as exc:
            self._connections.pop(table, None)
            await conn.close()
            self.last_error = (
                f"no PUBACK for every record within {timeout_s:g} s; the rows are not counted "
                "as written (the service may still commit them)"
            )
            raise WriteFailedError(self.last_error, writer=self.name) from exc
        finally:
            self.count_payload(table, batch.sent_bytes)
            self.publishes += len(batch.acks)
            if not batch.future.done():
                batch.future.cancel()  # its outcome no longer matters
            elif not batch.future.cancelled():
                batch.future.exception()
        failed = [a for a in acks if a.reason >= 0x80]
        if failed:
            first = failed[0]
            self.last_error = (
                f"Zerobus MQTT refused {len(failed)} of {len(acks)} records: {first.name} "
                f"(0x{first.reason:02x})" + (f": {first.message}" if first.message else "")
            )
            raise WriteFailedError(self.last_error, writer=self.name)
        self.last_error = None
        return WriteReceipt(
            rows=len(rows),
            details={"table": table, "publishes": len(acks), "bytes": sum(map(len, payloads))},
        )

    # -- status -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        live = [c for c in self._connections.values() if c.lost is None]
        return {
            "endpoint": self.endpoint,
            "auth_mode": self.auth_mode(),
            "paho_mqtt_version": metadata.version("paho-mqtt"),
            "tls_ca": self.config.ca_file
            or ("the local stack's CA" if self.targets.mode == "local" else "the system CA store"),
            "connections": len(live),
            "receive_maximum": max((c.receive_maximum for c in live), default=None),
            "connects": self.connects,
            "publishes": self.publishes,
            **self.auth_counters(),
        }
