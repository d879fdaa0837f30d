"""The Zerobus REST writer: one `POST {endpoint}/zerobus/v1/tables/{table}/insert` per batch.

The body is the batch as a JSON array of row objects (the same JSON form as Zerobus JSON
records); HTTP 200 means the rows are durable. httpx keeps HTTP/1.1 connections alive in
one pool; connections open on demand, so the pool grows to the batches in flight (up to
ZEROBUS_REST_MAX_CONNECTIONS) and is reused from then on.

Auth is OAuth M2M: a token from `{workspace}/oidc/v1/token` (client credentials,
`scope=all-apis`, the `zerobusDirectWriteApi` resource and authorization_details for the
table), one per table, cached until shortly before it expires. Databricks mode uses
DATABRICKS_CLIENT_ID/SECRET against the workspace and ZEROBUS_ENDPOINT (the zerobus
writer's setting); local mode the local stack's client id and secret against its own
token route (ZEROBUS_REST_AUTH=token sends the stack's token instead).

Errors: a 4xx answer fails the batch with the service's error_code and message; a 5xx (or
429) answer, or a connection that could not be made, is tried again with exponential
backoff, ZEROBUS_REST_MAX_ATTEMPTS tries in all. A 401 on a cached token (revoked, or
issued by a service that restarted) fetches a new token and sends the request once more.
Like the service, this is at-least-once: a 5xx from a proxy in front of a commit that
succeeded makes the retry write the rows twice. A request that got no answer within the
timeout is not sent again (the service may still commit it) and fails; its rows are not
counted as written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import structlog
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dwbench.errors import WriteFailedError, WriterUnavailableError
from emulator.wire import ZEROBUS_REST
from workloads.base import Rows
from writers.base import RecordTooLargeError, Targets, WriteReceipt, size_parts
from writers.zerobus_oauth import ZerobusOAuthSettings, ZerobusOAuthWriter

log = structlog.get_logger(__name__)

_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# The largest request body the Zerobus REST insert takes (the gRPC path's 10 MiB per
# message; larger bodies are 413 REQUEST_LIMIT_EXCEEDED): a larger batch is sent as
# several requests, in row order, each committed before the next is sent.
REST_MAX_BODY_BYTES = 10 * 1024 * 1024


class ZerobusRestSettings(ZerobusOAuthSettings):
    """ZEROBUS_REST_ENDPOINT, _AUTH, _WORKSPACE_ID, _TIMEOUT_S, _MAX_ATTEMPTS, _BACKOFF_S,
    _MAX_BACKOFF_S, _MAX_CONNECTIONS."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_REST_")

    # The REST base URL; default: the Zerobus endpoint (ZEROBUS_ENDPOINT) over https, or
    # the local stack's zerobus_rest_url.
    endpoint: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_s: float = Field(default=0.2, ge=0)
    max_backoff_s: float = Field(default=5.0, ge=0)
    max_connections: int = Field(default=256, ge=1)


class ZerobusRestWriter(ZerobusOAuthWriter):
    name = "zerobus-rest"
    wire_interface = ZEROBUS_REST
    label = "Zerobus Ingest (REST, JSON)"
    color = "#d9480f"
    client_distributions: ClassVar[tuple[str, ...]] = ("httpx",)
    settings_class = ZerobusRestSettings
    config: ZerobusRestSettings
    interface = "REST"
    local_endpoint_keys = ("zerobus_rest_url",)
    # A transport for the REST client instead of the network (tests of retries use
    # httpx.MockTransport); set before open().
    transport: httpx.AsyncBaseTransport | None = None

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.endpoint: str | None = self.config.endpoint
        self._http: httpx.AsyncClient | None = None
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.requests = 0
        self.retries = 0

    # -- setup --------------------------------------------------------------------------

    def _endpoint(self) -> str | None:
        return self.endpoint

    def _use_local_endpoints(self, endpoints: dict[str, Any]) -> None:
        self.endpoint = self.endpoint or endpoints["zerobus_rest_url"]

    def _use_workspace(self) -> str:
        zerobus = self.endpoint or self.targets.zerobus_endpoint
        assert zerobus is not None
        base = zerobus if "//" in zerobus else f"https://{zerobus}"
        parts = urlsplit(base)
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        return parts.hostname or ""

    async def _open_transport(self) -> None:
        n = self.config.max_connections
        assert self.endpoint is not None
        self._http = httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=self.config.timeout_s,
            # Idle connections are dropped well before a server's idle timeout (uvicorn's is
            # 5 s), so a batch is never sent on a connection the server is closing.
            limits=httpx.Limits(
                max_connections=n, max_keepalive_connections=n, keepalive_expiry=2.0
            ),
            transport=self.transport,
        )

    async def _close_transport(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- writing ------------------------------------------------------------------------

    async def _authorization(self, table: str) -> str:
        return f"Bearer {await self._token(table)}"

    async def write(self, rows: Rows) -> WriteReceipt:
        if self._http is None:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        self.check(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"table": table})
        records = self._json_records(rows)
        # A body is "[" + records joined by "," + "]": the limit less the brackets, one comma
        # between records.
        try:
            parts = size_parts([len(r) for r in records], REST_MAX_BODY_BYTES - 2, separator=1)
        except RecordTooLargeError as exc:
            raise WriteFailedError(
                f"row {exc.index} encodes to {exc.length:,} bytes of JSON; a Zerobus REST "
                f"request carries at most {REST_MAX_BODY_BYTES:,} bytes: nothing was sent",
                writer=self.name,
            ) from None
        path = f"/zerobus/v1/tables/{quote(table, safe='.')}/insert"
        attempts = sent = sent_bytes = 0
        for part in parts:
            body = b"[" + b",".join(records[part.start : part.stop]) + b"]"
            try:
                attempts += await self._insert(path, body, table)
            except (WriteFailedError, WriterUnavailableError) as exc:
                if not sent:
                    raise
                # Requests commit one by one: say what of the batch is already in.
                self.last_error = (
                    f"{exc.message} ({sent:,} of the batch's {len(rows):,} rows were written "
                    "by its earlier requests)"
                )
                raise type(exc)(self.last_error, writer=self.name) from exc
            sent += len(part)
            sent_bytes += len(body)
        self.last_error = None
        return WriteReceipt(
            rows=len(rows),
            details={
                "table": table,
                "attempts": attempts,
                "requests": len(parts),
                "bytes": sent_bytes,  # the bodies, as sent
            },
        )

    async def _insert(self, path: str, body: bytes, table: str) -> int:
        """One insert request, tried again on what is safe to retry; returns the tries."""
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                resp = await self._post(path, body, table)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never sent: trying again cannot write the rows twice.
                problem = f"cannot connect to {self.endpoint}: {str(exc) or type(exc).__name__}"
                if attempt == attempts:
                    self.last_error = f"{problem} (gave up after {attempts} tries)"
                    raise WriterUnavailableError(self.last_error, writer=self.name) from exc
                await self._back_off(attempt, problem)
                continue
            except httpx.TimeoutException as exc:
                self.last_error = (
                    f"no answer within {self.config.timeout_s:g} s; the rows are not counted "
                    "as written (the service may still commit them)"
                )
                raise WriteFailedError(self.last_error, writer=self.name) from exc
            except httpx.HTTPError as exc:
                self.last_error = f"the request failed: {str(exc) or type(exc).__name__}"
                raise WriteFailedError(self.last_error, writer=self.name) from exc
            if resp.status_code == 200:
                return attempt
            code, message = _service_error(resp)
            problem = f"Zerobus REST answered HTTP {resp.status_code} {code}: {message}"
            if resp.status_code in _RETRIED_STATUSES and attempt < attempts:
                await self._back_off(attempt, problem)
                continue
            if resp.status_code in _RETRIED_STATUSES:
                problem += f" (gave up after {attempts} tries)"
            self.last_error = problem
            raise WriteFailedError(problem, writer=self.name)
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: bytes, table: str) -> httpx.Response:
        """One insert; a cached OAuth token the service no longer takes (a 401: nothing
        written) is fetched anew and the request sent once more."""
        assert self._http is not None
        for fresh in (False, True):
            headers = {
                "Authorization": await self._authorization(table),
                "Content-Type": "application/json",
            }
            self.requests += 1
            self.count_payload(table, len(body))
            resp = await self._http.post(path, content=body, headers=headers)
            if resp.status_code != 401 or self._tokens is None or fresh:
                return resp
            self._tokens.forget(table)
            log.warning("zerobus_rest_token_refused", writer=self.name, table=table)
        return resp

    async def _back_off(self, attempt: int, problem: str) -> None:
        self.retries += 1
        delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempt - 1))
        log.warning("zerobus_rest_retry", writer=self.name, attempt=attempt, reason=problem)
        await self._sleep(delay)

    # -- status -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "auth_mode": self.auth_mode(),
            "httpx_version": metadata.version("httpx"),
            "max_connections": self.config.max_connections,
            "max_attempts": self.config.max_attempts,
            "requests": self.requests,
            "retries": self.retries,
            **self.auth_counters(),
        }


def _service_error(resp: httpx.Response) -> tuple[str, str]:
    """The error_code and message of a Zerobus error answer (or what stands in for them)."""
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "error_code" in answer:
        return str(answer["error_code"]), str(answer.get("message", ""))
    return "NO_ERROR_CODE", resp.text[:200] or resp.reason_phrase
