"""The Zerobus writers: the official async SDK, one long-lived stream per table.

`zerobus` sends protobuf records (the descriptor derived from the table's schema, as the
SDK's generate_proto tool derives it), `zerobus-json` JSON records.

The stream opens on first use and is shared by every request. A batch goes through the
SDK's batch call (one offset for the batch) and `write()` returns once that offset is
acknowledged, which the service sends only after the rows are durably committed.
A stream that fails is closed and created anew once; if the write fails again the
error is reported and nothing is claimed written. A batch that is not acknowledged within
ZEROBUS_ACK_TIMEOUT_S fails at once and is not sent again: the service may still commit it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from zerobus.sdk.aio import ZerobusSdk, ZerobusStream
from zerobus.sdk.shared import (
    HeadersProvider,
    NonRetriableException,
    StreamConfigurationOptions,
    TableProperties,
    ZerobusException,
)

from dwbench.errors import (
    DirectWriteError,
    SchemaNotSupportedError,
    WriteFailedError,
    WriterUnavailableError,
)
from emulator.wire import ZEROBUS_JSON, ZEROBUS_PROTO
from workloads.base import Rows, TableRef
from workloads.proto import NoProtoForm, ProtoForm, proto_form
from workloads.types import DecimalType, Primitive
from workloads.wire import WireValueError, json_rows
from writers.base import (
    Availability,
    RecordTooLargeError,
    Targets,
    WriteReceipt,
    WriterSettings,
    mask,
    size_parts,
)
from writers.readback import WarehouseReadBack

log = structlog.get_logger(__name__)

# Closing a stream waits for its pending acknowledgements; a service that stopped answering
# would hold a failed write (or shutdown) for the SDK's own 60 s ack timeout.
CLOSE_TIMEOUT_S = 5.0
# The SDK refuses a message whose records sum past this many bytes ("Ingest payload too
# large: N bytes exceeds the configured limit of 10420224 bytes", SDK 1.10.0), below the
# app's 16 MiB request limit: a larger batch is sent as several messages (`_split`).
SDK_MAX_MESSAGE_BYTES = 10_420_224
# How the SDK renders gRPC codes that mean "the target is not there for us" at stream creation.
_UNAVAILABLE_CODES = (
    "The service is currently unavailable",
    "The request does not have valid authentication credentials",
    "The caller does not have permission",
    "Some requested entity was not found",
    "tcp connect error",
)


class ZerobusSettings(WriterSettings):
    """ZEROBUS_ENDPOINT, ZEROBUS_TABLE, ZEROBUS_RECORD_FORMAT, ZEROBUS_ACK_TIMEOUT_S."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_")

    # The workspace's Zerobus Ingest endpoint (the local stack's in local mode comes from
    # the targets).
    endpoint: str | None = None
    table: str = "main.default.products"
    # The format of the `zerobus` writer; `zerobus-json` always sends JSON.
    record_format: Literal["proto", "json"] = "proto"
    # How long a write waits for its batch's durability acknowledgement before failing.
    ack_timeout_s: float = Field(default=60.0, gt=0)


def zerobus_auth_problem(targets: Targets) -> str | None:
    """Databricks mode: why the workspace credentials cannot open a Zerobus stream.

    Zerobus Ingest takes a short-lived OAuth token scoped to the table (the SDK asks for it
    with the service principal's client id and secret and the table's authorization
    details); a personal access token or a user's token from `databricks auth login` is no
    such token, so only oauth-m2m credentials (from the settings or a profile) serve."""
    missing = targets.auth_missing()
    if missing:
        return missing
    auth = targets.workspace_auth
    assert auth is not None
    if auth.client_credentials() is None:
        return (
            "Zerobus Ingest authenticates with a service principal's OAuth secret "
            "(DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or a profile with "
            f"client_id and client_secret); {auth.who()} authenticates with {auth.auth_type}"
        )
    return None


def zerobus_auth_description(targets: Targets) -> str:
    """How a Zerobus stream authenticates, for describe() (client id masked, no secret)."""
    if targets.mode == "local":
        return "bearer token (local stack)"
    workspace = targets.workspace_auth
    credentials = workspace.client_credentials() if workspace else None
    if credentials and workspace:
        return f"oauth-m2m (client_id={mask(credentials[0])}, {workspace.source})"
    return "none: " + (zerobus_auth_problem(targets) or "")


def zerobus_error(
    exc: BaseException,
    *,
    writer: str,
    table: str,
    endpoint: str | None,
    ack_timeout_s: float,
    opening: bool,
    kind: str = "",
) -> DirectWriteError:
    """An SDK failure as the writers report it; `kind` names the stream ("Arrow ")."""
    if isinstance(exc, TimeoutError):
        return WriteFailedError(
            f"no durability acknowledgement within {ack_timeout_s:g} s; the rows "
            "are not counted as written (the service may still commit them)",
            writer=writer,
        )
    text = str(exc)
    if opening and any(code in text for code in _UNAVAILABLE_CODES):
        return WriterUnavailableError(
            f"cannot open a Zerobus {kind}stream to {table} at {endpoint}: {text}", writer=writer
        )
    if opening:
        return WriterUnavailableError(
            f"Zerobus refused the {kind}stream for {table}: {text}", writer=writer
        )
    if "unavailable" in text.lower() or "connect" in text.lower():
        return WriterUnavailableError(f"Zerobus {kind}stream lost: {text}", writer=writer)
    return WriteFailedError(f"Zerobus rejected the {kind}batch: {text}", writer=writer)


async def unreachable_reason(endpoint: str, what: str) -> str | None:
    """None when something listens on the endpoint's host and port (a TCP connect within
    2 s, nothing sent); otherwise why not, naming `what`."""
    parts = urlsplit(endpoint if "//" in endpoint else f"https://{endpoint}")
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    timeout_s = 2.0
    try:
        await asyncio.wait_for(asyncio.to_thread(_tcp_check, host, port), timeout_s)
    except TimeoutError:  # its text is empty: say what it means
        return f"cannot reach {what} {host}:{port}: no answer within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot reach {what} {host}:{port}: {str(exc) or type(exc).__name__}"
    return None


class LocalBearerToken(HeadersProvider):
    """The local stack's auth: a fixed bearer token plus the table header."""

    def __init__(self, token: str, table: str) -> None:
        super().__init__()
        self._token = token
        self._table = table

    def get_headers(self) -> list[tuple[str, str]]:
        return [
            ("authorization", f"Bearer {self._token}"),
            ("x-databricks-zerobus-table-name", self._table),
        ]


# A stream quiet this long is replaced by a new one before its next batch. The SDK's
# receiver times each read of the response stream with its server-lack-of-ack timeout
# (60 s, unchanged here) and, while nothing is pending, starts a new window each time one
# ends: a batch sent near the end of a quiet window and acknowledged after it ends is
# taken for unacknowledged, the stream recovered and the batch sent again, so it is
# committed twice (databricks/zerobus-sdk#639 describes the per-read timer; 1.10.0 has it).
# A new stream's window starts when it opens, leaving the batch the whole timeout.
QUIET_STREAM_RENEW_S = 45.0


class StreamState:
    """One table's SDK stream, the lock that opens it, and when it was last heard from."""

    def __init__(self, table: TableRef) -> None:
        self.table = table
        self.stream: Any = None
        self.lock = asyncio.Lock()
        # The clock's time of the stream's opening or its last acknowledgement.
        self.heard = 0.0
        # Messages sent on the stream and not yet acknowledged or failed.
        self.sending = 0


class _TableStream(StreamState):
    """One table's stream, its record form and its encoder (built once per table)."""

    def __init__(self, table: TableRef, form: ProtoForm | None) -> None:
        super().__init__(table)
        self.form = form
        self.encode = form.encoder(table.schema) if form is not None else None


class ZerobusStreamWriter(WarehouseReadBack):
    """What every Zerobus SDK stream writer shares: one long-lived stream per table, opened
    on first use, created anew once when it fails or has been quiet QUIET_STREAM_RENEW_S,
    closed within CLOSE_TIMEOUT_S. `clock` (monotonic seconds) times the quiet.

    A subclass says how a table's state is built (`_new_state`, which also refuses a schema
    its path cannot carry), how a stream is created (`_create`), how a batch is encoded
    (`_encode`: the payload and its size in bytes) and sent (`_send`: returns the offset
    once it is acknowledged), and what its describe() and receipts add (`_format`)."""

    family = "zerobus"
    # How logs and errors name the stream: "" for gRPC record streams, "Arrow " for Arrow.
    stream_kind: ClassVar[str] = ""
    config: ZerobusSettings

    def __init__(self, targets: Targets, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(targets)
        self.clock = clock
        self.table = self.config.table
        self.ack_timeout_s = self.config.ack_timeout_s
        self.endpoint = targets.zerobus_endpoint or self.config.endpoint
        self._sdk: ZerobusSdk | None = None
        self._tables: dict[str, Any] = {}
        self.streams_created = 0
        self.last_error: str | None = None
        self._event = (
            "zerobus_" + self.stream_kind.strip().lower() + "_" if self.stream_kind else "zerobus_"
        )

    async def open(self) -> None:
        problem = self._config_problem()
        if problem:
            raise WriterUnavailableError(problem, writer=self.name)
        assert self.endpoint is not None
        # A dedicated gRPC connection per stream (the SDK's default, said here): a benchmark
        # with --streams N opens N writers, each its own SDK, stream and connection.
        self._sdk = ZerobusSdk(
            self.endpoint,
            self.targets.workspace_url or "",
            application_name="direct-write-bench",
            connection_per_stream=True,
        )
        if self.targets.mode == "local":
            await self._sdk._inner.set_use_tls(False)  # the local stack speaks plaintext gRPC

    def _config_problem(self) -> str | None:
        if not self.endpoint:
            return "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"
        if self.targets.mode == "databricks":
            return zerobus_auth_problem(self.targets)
        elif self.targets.local_token is None:
            return "the local stack's token is not known"
        return None

    # -- what a subclass says ---------------------------------------------------------

    def _new_state(self, table: TableRef) -> Any:
        """The table's state (with `table`, `stream`, `lock`); refuses what cannot be sent."""
        raise NotImplementedError

    async def _create(self, state: Any, local_token: str | None) -> Any:
        """A new SDK stream into the state's table (`local_token` set in local mode)."""
        raise NotImplementedError

    def _encode(self, state: Any, rows: Rows) -> tuple[Any, int]:
        raise NotImplementedError

    async def _send(self, stream: Any, payload: Any) -> int:
        raise NotImplementedError

    def _split(self, payload: Any, size: int, rows: int) -> list[tuple[Any, int, int]]:
        """The payload as the messages it is sent in: (part, bytes, rows) each."""
        return [(payload, size, rows)]

    def _format(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- schemas ------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        self._state(table)

    def _state(self, table: TableRef) -> Any:
        state = self._tables.get(table.delta_table)
        if state is not None and state.table == table:
            return state
        state = self._new_state(table)
        self._tables[table.delta_table] = state
        return state

    # -- streams ------------------------------------------------------------------------

    async def _open_stream(self, state: Any) -> Any:
        assert self._sdk is not None
        table = state.table.delta_table
        token = self.targets.local_token
        try:
            if self.targets.mode == "local":
                assert token is not None
                stream = await self._create(state, token.get_secret_value())
            else:
                stream = await self._create(state, None)
        except ZerobusException as exc:
            raise self._translate(exc, table, opening=True) from exc
        self.streams_created += 1
        log.info(
            self._event + "stream_opened", writer=self.name, table=table, n=self.streams_created
        )
        return stream

    def _client_credentials(self) -> tuple[str, str]:
        auth = self.targets.workspace_auth
        credentials = auth.client_credentials() if auth else None
        assert credentials is not None
        return credentials

    async def _current_stream(self, state: StreamState) -> Any:
        async with state.lock:
            quiet = self.clock() - state.heard
            if state.stream is not None and not state.sending and quiet >= QUIET_STREAM_RENEW_S:
                stale, state.stream = state.stream, None
                log.info(
                    self._event + "stream_renewed",
                    writer=self.name,
                    table=state.table.delta_table,
                    quiet_s=round(quiet, 1),
                )
                await self._close_within(stale)
            if state.stream is None:
                state.stream = await self._open_stream(state)
                state.heard = self.clock()
            return state.stream

    async def _discard(self, state: Any, stream: Any) -> None:
        async with state.lock:
            if state.stream is stream:
                state.stream = None
        await self._close_within(stream)

    async def _close_within(self, stream: Any) -> None:
        """Close the stream, flushing what it holds; give up on a service that does not answer."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await stream.close()
        except ZerobusException as exc:
            log.warning(self._event + "close_failed", error=str(exc))
        except TimeoutError:
            log.warning(
                self._event + "close_abandoned", reason=f"no answer within {CLOSE_TIMEOUT_S:g} s"
            )

    # -- writing ------------------------------------------------------------------------

    async def write(self, rows: Rows) -> WriteReceipt:
        if self._sdk is None:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        state = self._state(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"offset": None})
        payload, size = self._encode(state, rows)
        parts = self._split(payload, size, len(rows))
        acknowledged = 0
        offset = -1
        for index, (part, part_size, part_rows) in enumerate(parts):
            try:
                offset = await self._send_part(state, table, part, part_size)
            except DirectWriteError as exc:
                if acknowledged:
                    # Each message commits on its own: say which rows did.
                    exc.message += (
                        f"; {acknowledged} of the batch's {len(rows)} rows, in the first "
                        f"{index} of its {len(parts)} messages, were acknowledged and are "
                        "written"
                    )
                    exc.args = (exc.message,)
                raise
            acknowledged += part_rows
        self.last_error = None
        details: dict[str, Any] = {
            "offset": offset,
            "stream": self.streams_created,
            **self._format(),
            "table": table,
        }
        if len(parts) > 1:
            details["messages"] = len(parts)
        return WriteReceipt(rows=len(rows), details=details)

    async def _send_part(self, state: Any, table: str, payload: Any, size: int) -> int:
        """Send one message; its offset once acknowledged. Sent again once on a new stream
        if the stream failed, never if the service refused it or did not answer in time."""
        for attempt in (1, 2):
            stream = await self._current_stream(state)
            self.count_payload(table, size)
            try:
                # The send is inside the deadline too: with the SDK's in-flight limit
                # reached, it waits for acknowledgements. (asyncio.timeout, not wait_for:
                # on Python 3.11 wait_for runs the wait as a task of its own.)
                state.sending += 1
                try:
                    async with asyncio.timeout(self.ack_timeout_s):
                        offset = await self._send(stream, payload)
                finally:
                    state.sending -= 1
                state.heard = self.clock()
                return offset
            except (ZerobusException, TimeoutError) as exc:
                await self._discard(state, stream)
                error = self._translate(exc, table, opening=False)
                self.last_error = error.message
                # Not sent again: a bad batch fails the same way on a new stream, and one
                # that was not acknowledged in time may still be committed.
                bad_input = isinstance(exc, NonRetriableException) and _is_bad_input(exc)
                if attempt == 2 or bad_input or isinstance(exc, TimeoutError):
                    raise error from exc
                log.warning(
                    self._event + "stream_recreated", writer=self.name, reason=error.message
                )
        raise AssertionError("unreachable")

    def _translate(self, exc: BaseException, table: str, *, opening: bool) -> DirectWriteError:
        return zerobus_error(
            exc, writer=self.name, table=table, endpoint=self.endpoint,
            ack_timeout_s=self.ack_timeout_s, opening=opening, kind=self.stream_kind,
        )  # fmt: skip

    async def availability(self) -> Availability:
        details = self.describe()
        problem = self._config_problem()
        if problem:
            return Availability(False, problem, details)
        # Check that something listens, without opening a stream: an open stream alone
        # says nothing (the SDK keeps it while it reconnects to a server that is gone).
        assert self.endpoint is not None
        unreachable = await unreachable_reason(self.endpoint, "the Zerobus endpoint")
        return Availability(unreachable is None, unreachable, details)

    def describe(self) -> dict[str, Any]:
        auth = zerobus_auth_description(self.targets)
        open_streams = [t for t, state in self._tables.items() if state.stream is not None]
        return {
            "endpoint": self.endpoint,
            "table": self.table,
            **self._format(),
            "auth_mode": auth,
            "sdk_version": metadata.version("databricks-zerobus-ingest-sdk"),
            "stream_state": "open" if open_streams else "not opened",
            "open_streams": open_streams,
            "streams_created": self.streams_created,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await self.close_reader()
        states, self._tables = list(self._tables.values()), {}
        for state in states:
            stream, state.stream = state.stream, None
            if stream is not None:
                started = time.perf_counter()
                await self._close_within(stream)
                log.info(
                    self._event + "stream_closed",
                    table=state.table.delta_table,
                    ms=round((time.perf_counter() - started) * 1000),
                )


class ZerobusWriter(ZerobusStreamWriter):
    name = "zerobus"
    wire_interface: ClassVar[str | None] = ZEROBUS_PROTO
    counts_payload = True
    label = "Zerobus Ingest (gRPC, protobuf)"
    color = "#e8590c"
    client_distributions: ClassVar[tuple[str, ...]] = ("databricks-zerobus-ingest-sdk", "protobuf")
    record_format = "proto"
    settings_class = ZerobusSettings

    def __init__(self, targets: Targets, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(targets, clock=clock)
        if type(self) is ZerobusWriter:  # ZEROBUS_RECORD_FORMAT picks the default's format
            self.record_format = self.config.record_format

    def _new_state(self, table: TableRef) -> _TableStream:
        form: ProtoForm | None = None
        if self.record_format == "proto":
            try:
                form = proto_form(table.schema, table.message_name)
            except NoProtoForm as exc:
                raise SchemaNotSupportedError(
                    f"{self.label} cannot write workload {table.workload}: {exc}",
                    writer=self.name,
                ) from None
        else:
            for col, dtype in table.schema.types():
                if isinstance(dtype, DecimalType):
                    raise SchemaNotSupportedError(
                        f"{self.label} cannot write workload {table.workload}: column "
                        f"{col.name} is {dtype.sql()}, and Zerobus documents no JSON form "
                        "for DECIMAL (its generate_proto tool maps none either)",
                        writer=self.name,
                    )
                if dtype == Primitive("VARIANT") and self.targets.mode == "local":
                    raise SchemaNotSupportedError(
                        f"column {col.name} is VARIANT, which the local stack does not store",
                        writer=self.name,
                    )
        return _TableStream(table, form)

    async def _create(self, state: _TableStream, local_token: str | None) -> ZerobusStream:
        assert self._sdk is not None
        table = state.table.delta_table
        props = (
            TableProperties(table, state.form.descriptor)
            if state.form is not None
            else TableProperties(table)
        )
        options = StreamConfigurationOptions(
            recovery_retries=3, recovery_backoff_ms=500, recovery_timeout_ms=10_000
        )
        if local_token is not None:
            headers = LocalBearerToken(local_token, table)
            return await self._sdk.create_stream(
                table_properties=props, options=options, headers_provider=headers
            )
        client_id, client_secret = self._client_credentials()
        return await self._sdk.create_stream(client_id, client_secret, props, options)

    def _encode(self, state: _TableStream, rows: Rows) -> tuple[list[Any], int]:
        payloads: list[Any]
        try:
            if state.encode is not None:
                payloads = list(state.encode(rows.data))
            else:
                payloads = list(json_rows(rows.data, state.table.schema))
        except (WireValueError, ValueError, TypeError) as exc:
            raise WriteFailedError(
                f"cannot encode the batch as {self.record_format}: {exc}; nothing was sent",
                writer=self.name,
            ) from exc
        size = sum(len(p) if isinstance(p, bytes) else len(p.encode()) for p in payloads)
        return payloads, size

    def _split(self, payload: list[Any], size: int, rows: int) -> list[tuple[list[Any], int, int]]:
        """Messages of at most SDK_MAX_MESSAGE_BYTES, in row order. A split batch is not
        atomic as one message is (each commits on its own); a row too large for any
        message is refused before anything is sent."""
        if size <= SDK_MAX_MESSAGE_BYTES:
            return [(payload, size, rows)]
        lengths = [len(r) if isinstance(r, bytes) else len(r.encode()) for r in payload]
        try:
            parts = size_parts(lengths, SDK_MAX_MESSAGE_BYTES)
        except RecordTooLargeError as exc:
            raise WriteFailedError(
                f"row {exc.index} encodes to {exc.length:,} bytes; the Zerobus SDK takes at "
                f"most {SDK_MAX_MESSAGE_BYTES:,} bytes per message: nothing was sent",
                writer=self.name,
            ) from None
        return [(payload[p.start : p.stop], sum(lengths[i] for i in p), len(p)) for p in parts]

    async def _send(self, stream: ZerobusStream, payload: list[Any]) -> int:
        offset = await stream.ingest_records_offset(payload)
        assert offset is not None
        await stream.wait_for_offset(offset)
        return int(offset)

    def _format(self) -> dict[str, Any]:
        return {"record_format": self.record_format}


class ZerobusJsonWriter(ZerobusWriter):
    """The same SDK stream with JSON records: one JSON object per row."""

    name = "zerobus-json"
    wire_interface = ZEROBUS_JSON
    label = "Zerobus Ingest (gRPC, JSON)"
    color = "#f59f00"
    client_distributions = ("databricks-zerobus-ingest-sdk",)
    record_format = "json"


def _is_bad_input(exc: BaseException) -> bool:
    # The SDK words an INVALID_ARGUMENT from the server two ways, by which path saw it first.
    text = str(exc)
    return text.startswith("Invalid argument") or "'Client specified an invalid argument'" in text


def _tcp_check(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=2.0):
        pass
