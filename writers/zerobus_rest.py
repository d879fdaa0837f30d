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
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import httpx
import structlog
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dwbench.errors import SchemaNotSupportedError, WriteFailedError, WriterUnavailableError
from emulator.wire import ZEROBUS_REST
from workloads.base import Rows, TableRef
from workloads.types import DecimalType, Primitive
from workloads.wire import WireValueError, json_rows
from writers.base import (
    Availability,
    DataWriterInterface,
    Targets,
    WriteReceipt,
    WriterSettings,
    mask,
)
from writers.readback import WarehouseReadBack
from writers.zerobus import unreachable_reason, zerobus_auth_description, zerobus_auth_problem

log = structlog.get_logger(__name__)

# A token is fetched anew this long before it expires (or at half its life, if shorter).
TOKEN_REFRESH_MARGIN_S = 60.0
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class ZerobusRestSettings(WriterSettings):
    """ZEROBUS_REST_ENDPOINT, _AUTH, _WORKSPACE_ID, _TIMEOUT_S, _MAX_ATTEMPTS, _BACKOFF_S,
    _MAX_BACKOFF_S, _MAX_CONNECTIONS."""

    model_config = SettingsConfigDict(env_prefix="ZEROBUS_REST_")

    # The REST base URL; default: the Zerobus endpoint (ZEROBUS_ENDPOINT) over https, or
    # the local stack's zerobus_rest_url.
    endpoint: str | None = None
    # oauth: the M2M grant with table-scoped authorization_details; token: the local
    # stack's bearer token (local mode only).
    auth: Literal["oauth", "token"] = "oauth"
    # The workspace id the token's resource names; default: the first label of the
    # Zerobus host (set it for an endpoint whose host does not start with it).
    workspace_id: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_s: float = Field(default=0.2, ge=0)
    max_backoff_s: float = Field(default=5.0, ge=0)
    max_connections: int = Field(default=256, ge=1)


async def local_endpoints(
    targets: Targets, http: httpx.AsyncClient, *, writer: str
) -> dict[str, Any]:
    """The local stack's endpoints (`/api/local/endpoints`), asked with its token."""
    assert targets.local_token is not None
    token = targets.local_token.get_secret_value()
    url = f"{str(targets.workspace_url).rstrip('/')}/api/local/endpoints"
    try:
        resp = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise WriterUnavailableError(
            f"the local stack does not answer at {url}: {str(exc) or type(exc).__name__}",
            writer=writer,
        ) from exc
    if resp.status_code != 200:
        raise WriterUnavailableError(
            f"the local stack answered HTTP {resp.status_code} at {url}", writer=writer
        )
    endpoints: dict[str, Any] = resp.json()
    return endpoints


def local_oauth_client(targets: Targets, endpoints: dict[str, Any]) -> OAuthClient:
    """The local stack's OAuth client (its id and secret, its own token route)."""
    return OAuthClient(
        token_url=f"{str(targets.workspace_url).rstrip('/')}/oidc/v1/token",
        client_id=endpoints["oauth_client_id"],
        client_secret=endpoints["oauth_client_secret"],
        workspace_id=str(endpoints["workspace_id"]),
    )


def zerobus_host(address: str) -> str:
    """The host name of a Zerobus endpoint given as a URL or host[:port]."""
    return urlsplit(address if "//" in address else f"https://{address}").hostname or ""


def workspace_oauth_client(targets: Targets, host: str, workspace_id: str | None) -> OAuthClient:
    """Databricks mode: the service principal's OAuth client on the workspace's token route.
    The token's resource names the workspace id: the first label of the Zerobus host, unless
    `workspace_id` says otherwise."""
    auth = targets.workspace_auth
    credentials = auth.client_credentials() if auth else None
    assert credentials is not None
    return OAuthClient(
        token_url=f"{str(targets.workspace_url).rstrip('/')}/oidc/v1/token",
        client_id=credentials[0],
        client_secret=credentials[1],
        workspace_id=workspace_id or host.split(".")[0],
    )


@dataclass(frozen=True)
class OAuthClient:
    token_url: str
    client_id: str
    client_secret: str  # never logged; kept out of repr below
    workspace_id: str

    def __repr__(self) -> str:
        return f"OAuthClient(token_url={self.token_url!r}, client_id={mask(self.client_id)!r})"


def authorization_details(table: str) -> list[dict[str, Any]]:
    """The least privileges a Zerobus write into `table` needs, as the SDKs request them."""
    catalog, schema, _ = table.split(".")
    return [
        {
            "type": "unity_catalog_privileges",
            "privileges": ["USE CATALOG"],
            "object_type": "CATALOG",
            "object_full_path": catalog,
        },
        {
            "type": "unity_catalog_privileges",
            "privileges": ["USE SCHEMA"],
            "object_type": "SCHEMA",
            "object_full_path": f"{catalog}.{schema}",
        },
        {
            "type": "unity_catalog_privileges",
            "privileges": ["SELECT", "MODIFY"],
            "object_type": "TABLE",
            "object_full_path": table,
            "operations": ["zerobuswrite"],
        },
    ]


def check_zerobus_json(writer: DataWriterInterface, table: TableRef) -> None:
    """SchemaNotSupportedError for what Zerobus JSON records cannot carry (REST, Kafka and
    MQTT values): DECIMAL, and VARIANT on the local stack."""
    for col, dtype in table.schema.types():
        if isinstance(dtype, DecimalType):
            raise SchemaNotSupportedError(
                f"{writer.label} cannot write workload {table.workload}: column {col.name} "
                f"is {dtype.sql()}, and Zerobus documents no JSON form for DECIMAL",
                writer=writer.name,
            )
        if dtype == Primitive("VARIANT") and writer.targets.mode == "local":
            raise SchemaNotSupportedError(
                f"column {col.name} is VARIANT, which the local stack does not store",
                writer=writer.name,
            )


class TableTokens:
    """OAuth tokens by table, each fetched once and reused until shortly before expiry."""

    def __init__(
        self,
        client: OAuthClient,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        writer: str | None = None,
    ) -> None:
        self.client = client
        self.writer = writer
        self._http = http
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetched = 0

    async def get(self, table: str) -> str:
        cached = self._tokens.get(table)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        async with self._locks.setdefault(table, asyncio.Lock()):
            cached = self._tokens.get(table)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            token, lifetime = await self._fetch(table)
            margin = min(TOKEN_REFRESH_MARGIN_S, lifetime / 2)
            self._tokens[table] = (token, self._clock() + lifetime - margin)
            return token

    def forget(self, table: str) -> None:
        self._tokens.pop(table, None)

    def valid_for(self, table: str) -> float:
        """Seconds the cached token of `table` is still handed out (0 when there is none)."""
        cached = self._tokens.get(table)
        return max(0.0, cached[1] - self._clock()) if cached is not None else 0.0

    async def _fetch(self, table: str) -> tuple[str, float]:
        c = self.client
        form = {
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "resource": f"api://databricks/workspaces/{c.workspace_id}/zerobusDirectWriteApi",
            "authorization_details": json.dumps(authorization_details(table)),
        }
        try:
            resp = await self._http.post(
                c.token_url, data=form, auth=httpx.BasicAuth(c.client_id, c.client_secret)
            )
        except httpx.HTTPError as exc:
            raise WriterUnavailableError(
                f"cannot reach the OAuth token endpoint {c.token_url}: "
                f"{str(exc) or type(exc).__name__}",
                writer=self.writer,
            ) from exc
        try:
            answer = resp.json()
        except ValueError:
            answer = {}
        if resp.status_code != 200 or not isinstance(answer.get("access_token"), str):
            error = answer.get("error", "no error code") if isinstance(answer, dict) else ""
            why = answer.get("error_description", "") if isinstance(answer, dict) else ""
            raise WriterUnavailableError(
                f"the OAuth token endpoint {c.token_url} refused client {mask(c.client_id)} for "
                f"{table}: HTTP {resp.status_code} {error}: {why}".rstrip(": "),
                writer=self.writer,
            )
        self.fetched += 1
        lifetime = float(answer.get("expires_in", 3600))
        log.info("zerobus_rest_token_fetched", table=table, expires_in=lifetime)
        return answer["access_token"], lifetime


class ZerobusRestWriter(WarehouseReadBack):
    name = "zerobus-rest"
    wire_interface = ZEROBUS_REST
    counts_payload = True
    label = "Zerobus Ingest (REST, JSON)"
    family = "zerobus"
    color = "#d9480f"
    client_distributions: ClassVar[tuple[str, ...]] = ("httpx",)
    settings_class = ZerobusRestSettings
    config: ZerobusRestSettings
    # A transport for the REST client instead of the network (tests of retries use
    # httpx.MockTransport); set before open().
    transport: httpx.AsyncBaseTransport | None = None

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self.endpoint: str | None = self.config.endpoint
        self._http: httpx.AsyncClient | None = None
        self._auth_http: httpx.AsyncClient | None = None
        self._tokens: TableTokens | None = None
        self._bearer: str | None = None  # the local stack's token, in auth=token mode
        self._checked: dict[str, TableRef] = {}
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.requests = 0
        self.retries = 0
        self.last_error: str | None = None

    # -- setup --------------------------------------------------------------------------

    def _config_problem(self) -> str | None:
        if self.targets.mode == "databricks":
            if self.config.auth != "oauth":
                return "ZEROBUS_REST_AUTH=token is for the local stack; a workspace needs oauth"
            if not (self.endpoint or self.targets.zerobus_endpoint):
                return "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"
            return zerobus_auth_problem(self.targets)  # a service principal, as the SDK's
        elif self.targets.local_token is None or not self.targets.workspace_url:
            return "the local stack's API URL and token are not known"
        return None

    async def open(self) -> None:
        problem = self._config_problem()
        if problem:
            raise WriterUnavailableError(problem, writer=self.name)
        self._auth_http = httpx.AsyncClient(timeout=30)
        try:
            if self.targets.mode == "local":
                oauth = await self._local_setup()
            else:
                oauth = self._workspace_setup()
        except BaseException:
            await self._auth_http.aclose()
            self._auth_http = None
            raise
        if oauth is not None:
            self._tokens = TableTokens(oauth, self._auth_http, writer=self.name)
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

    async def _local_setup(self) -> OAuthClient | None:
        """The local stack's REST URL and OAuth client, from its endpoints."""
        assert self._auth_http is not None and self.targets.local_token is not None
        token = self.targets.local_token.get_secret_value()
        if self.config.auth == "token" and self.endpoint:
            self._bearer = token  # everything is known: no need to ask the stack
            return None
        endpoints = await local_endpoints(self.targets, self._auth_http, writer=self.name)
        if not endpoints.get("zerobus_rest_url"):
            raise WriterUnavailableError(
                "the local stack does not serve Zerobus REST (no zerobus_rest_url in its "
                "endpoints)",
                writer=self.name,
            )
        self.endpoint = self.endpoint or endpoints["zerobus_rest_url"]
        if self.config.auth == "token":
            self._bearer = token
            return None
        return local_oauth_client(self.targets, endpoints)

    def _workspace_setup(self) -> OAuthClient:
        zerobus = self.endpoint or self.targets.zerobus_endpoint
        assert zerobus is not None
        base = zerobus if "//" in zerobus else f"https://{zerobus}"
        parts = urlsplit(base)
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        return workspace_oauth_client(self.targets, parts.hostname or "", self.config.workspace_id)

    # -- schemas ------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        if self._checked.get(table.delta_table) == table:
            return
        check_zerobus_json(self, table)
        self._checked[table.delta_table] = table

    # -- writing ------------------------------------------------------------------------

    async def _authorization(self, table: str) -> str:
        if self._tokens is not None:
            return f"Bearer {await self._tokens.get(table)}"
        assert self._bearer is not None
        return f"Bearer {self._bearer}"

    async def write(self, rows: Rows) -> WriteReceipt:
        if self._http is None:
            raise WriterUnavailableError("writer is not open", writer=self.name)
        self.check(rows.table)
        table = rows.table.delta_table
        if not len(rows):
            return WriteReceipt(rows=0, details={"table": table})
        try:
            body = ("[" + ",".join(json_rows(rows.data, rows.table.schema)) + "]").encode()
        except (WireValueError, ValueError, TypeError) as exc:
            raise WriteFailedError(
                f"cannot encode the batch as JSON: {exc}; nothing was sent", writer=self.name
            ) from exc
        path = f"/zerobus/v1/tables/{quote(table, safe='.')}/insert"
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
                self.last_error = None
                return WriteReceipt(
                    rows=len(rows),
                    details={"table": table, "attempts": attempt, "bytes": len(body)},
                )
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

    async def availability(self) -> Availability:
        details = self.describe()
        problem = self._config_problem()
        if problem:
            return Availability(False, problem, details)
        if self._http is None or self.endpoint is None:
            return Availability(False, "writer is not open", details)
        unreachable = await unreachable_reason(self.endpoint, "the Zerobus REST endpoint")
        return Availability(unreachable is None, unreachable, details)

    def describe(self) -> dict[str, Any]:
        if self._tokens is not None:
            auth = f"oauth-m2m (client_id={mask(self._tokens.client.client_id)})"
        elif self.targets.mode == "local" and self.config.auth == "token":
            auth = "bearer token (local stack)"
        elif self.targets.mode == "local":
            auth = "oauth-m2m (the local stack's client)"
        else:
            auth = zerobus_auth_description(self.targets)
        return {
            "endpoint": self.endpoint,
            "auth_mode": auth,
            "httpx_version": metadata.version("httpx"),
            "max_connections": self.config.max_connections,
            "max_attempts": self.config.max_attempts,
            "requests": self.requests,
            "retries": self.retries,
            "tokens_fetched": self._tokens.fetched if self._tokens else 0,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await self.close_reader()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        auth_http, self._auth_http = self._auth_http, None
        if auth_http is not None:
            await auth_http.aclose()
        self._tokens = None


def _service_error(resp: httpx.Response) -> tuple[str, str]:
    """The error_code and message of a Zerobus error answer (or what stands in for them)."""
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "error_code" in answer:
        return str(answer["error_code"]), str(answer.get("message", ""))
    return "NO_ERROR_CODE", resp.text[:200] or resp.reason_phrase
