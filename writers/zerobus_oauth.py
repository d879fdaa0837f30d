"""Zerobus writers that authenticate per table with OAuth tokens: REST, Kafka and MQTT.

All three carry rows as Zerobus JSON records and take a table-scoped token from
`{workspace}/oidc/v1/token` (client credentials, `scope=all-apis`, the
`zerobusDirectWriteApi` resource and the table's authorization_details), one per table,
cached until shortly before it expires. Databricks mode uses the service principal of the
unified auth against the workspace and the Zerobus endpoint (ZEROBUS_ENDPOINT, or the
interface's own setting); local mode the local stack's OAuth client against its own token
route, or with `<PREFIX>AUTH=token` the stack's bearer token. `ZerobusOAuthWriter` is the
set-up, schema check, auth and availability they share; each subclass says where its
endpoint comes from and opens its own transport.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from dwbench.errors import SchemaNotSupportedError, WriteFailedError, WriterUnavailableError
from workloads.base import Rows, TableRef
from workloads.types import DecimalType, Primitive
from workloads.wire import WireValueError, json_rows
from writers.base import Availability, DataWriterInterface, Targets, WriterSettings, mask
from writers.readback import WarehouseReadBack
from writers.zerobus import unreachable_reason, zerobus_auth_description, zerobus_auth_problem

log = structlog.get_logger(__name__)

# A token is fetched anew this long before it expires (or at half its life, if shorter).
TOKEN_REFRESH_MARGIN_S = 60.0


class ZerobusOAuthSettings(WriterSettings):
    """The auth settings every per-table-token Zerobus writer has (under its own prefix)."""

    # oauth: the M2M grant with table-scoped authorization_details; token: the local
    # stack's bearer token (local mode only).
    auth: Literal["oauth", "token"] = "oauth"
    # The workspace id the token's resource names; default: the first label of the
    # Zerobus host (set it for an endpoint whose host does not start with it).
    workspace_id: str | None = None


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


class ZerobusOAuthWriter(WarehouseReadBack):
    """What the REST, Kafka and MQTT writers share: configuration checks, the local stack's
    endpoints or the workspace's, per-table tokens, the JSON schema check, availability.

    A subclass names its interface and the endpoint keys it needs from the local stack,
    and implements `_endpoint` (the address it writes to, once known),
    `_use_local_endpoints` and `_use_workspace` (learn it), and `_open_transport`."""

    family = "zerobus"
    counts_payload = True
    config: ZerobusOAuthSettings
    interface: ClassVar[str]  # "REST", "Kafka", "MQTT": in messages
    local_endpoint_keys: ClassVar[tuple[str, ...]]
    # Said with the auth mode in describe() (Kafka: how the token travels).
    auth_transport: ClassVar[str] = ""

    def __init__(self, targets: Targets) -> None:
        super().__init__(targets)
        self._auth_http: httpx.AsyncClient | None = None
        self._tokens: TableTokens | None = None
        self._bearer: str | None = None  # the local stack's token, in auth=token mode
        self._checked: dict[str, TableRef] = {}
        self._open = False
        self.last_error: str | None = None

    # -- what a subclass says ---------------------------------------------------------

    def _endpoint(self) -> str | None:
        """The address written to (a URL or host:port), when known."""
        raise NotImplementedError

    def _missing_endpoint(self) -> str:
        """Databricks mode without an endpoint: what to set."""
        return "ZEROBUS_ENDPOINT is not set (the workspace's Zerobus Ingest endpoint)"

    def _knows_local_endpoints(self) -> bool:
        """Whether the settings already name everything local token auth needs."""
        return self._endpoint() is not None

    def _use_local_endpoints(self, endpoints: dict[str, Any]) -> None:
        raise NotImplementedError

    def _use_workspace(self) -> str:
        """Learn the workspace's endpoint; return its host name (for the token resource)."""
        raise NotImplementedError

    async def _open_transport(self) -> None:
        """Open what the writer sends on, once auth is known."""

    def describe(self) -> dict[str, Any]:
        """Configuration and counters, for availability details (no secret)."""
        raise NotImplementedError

    async def _close_transport(self) -> None:
        """Close it (every connection, with what it still queues)."""

    # -- writing ------------------------------------------------------------------------

    def _json_records(self, rows: Rows) -> list[bytes]:
        """The batch as the table's JSON records, UTF-8 (what each of these interfaces
        carries); a value JSON cannot carry fails the batch before anything is sent."""
        try:
            return [r.encode() for r in json_rows(rows.data, rows.table.schema)]
        except (WireValueError, ValueError, TypeError) as exc:
            raise WriteFailedError(
                f"cannot encode the batch as JSON: {exc}; nothing was sent", writer=self.name
            ) from exc

    # -- setup --------------------------------------------------------------------------

    def _config_problem(self) -> str | None:
        if self.targets.mode == "databricks":
            if self.config.auth != "oauth":
                prefix = self.settings_class.model_config.get("env_prefix", "")
                return f"{prefix}AUTH=token is for the local stack; a workspace needs oauth"
            if not (self._endpoint() or self.targets.zerobus_endpoint):
                return self._missing_endpoint()
            return zerobus_auth_problem(self.targets)  # a service principal, as the SDK's
        if self.targets.local_token is None or not self.targets.workspace_url:
            return "the local stack's API URL and token are not known"
        return None

    async def open(self) -> None:
        problem = self._config_problem()
        if problem:
            raise WriterUnavailableError(problem, writer=self.name)
        self._auth_http = httpx.AsyncClient(timeout=30)
        try:
            oauth = (
                await self._local_setup()
                if self.targets.mode == "local"
                else self._workspace_setup()
            )
            if oauth is not None:
                self._tokens = TableTokens(oauth, self._auth_http, writer=self.name)
            await self._open_transport()
        except BaseException:
            await self._close_auth()
            raise
        self._open = True

    async def _local_setup(self) -> OAuthClient | None:
        """The local stack's endpoint and OAuth client, from its endpoints (not asked
        when token auth and the settings already name everything)."""
        assert self._auth_http is not None and self.targets.local_token is not None
        token = self.targets.local_token.get_secret_value()
        endpoints: dict[str, Any] = {}
        if not (self.config.auth == "token" and self._knows_local_endpoints()):
            endpoints = await local_endpoints(self.targets, self._auth_http, writer=self.name)
            missing = [key for key in self.local_endpoint_keys if not endpoints.get(key)]
            if missing:
                raise WriterUnavailableError(
                    f"the local stack does not serve Zerobus {self.interface} (no "
                    f"{' or '.join(missing)} in its endpoints)",
                    writer=self.name,
                )
            self._use_local_endpoints(endpoints)
        if self.config.auth == "token":
            self._bearer = token
            return None
        return local_oauth_client(self.targets, endpoints)

    def _workspace_setup(self) -> OAuthClient:
        host = self._use_workspace()
        return workspace_oauth_client(self.targets, host, self.config.workspace_id)

    async def _token(self, table: str) -> str:
        """The token a write into `table` presents."""
        if self._tokens is not None:
            return await self._tokens.get(table)
        assert self._bearer is not None
        return self._bearer

    # -- schemas ------------------------------------------------------------------------

    def check(self, table: TableRef) -> None:
        if self._checked.get(table.delta_table) == table:
            return
        check_zerobus_json(self, table)
        self._checked[table.delta_table] = table

    # -- status -------------------------------------------------------------------------

    async def availability(self) -> Availability:
        details = self.describe()
        problem = self._config_problem()
        if problem:
            return Availability(False, problem, details)
        endpoint = self._endpoint()
        if not self._open or endpoint is None:
            return Availability(False, "writer is not open", details)
        unreachable = await unreachable_reason(endpoint, f"the Zerobus {self.interface} endpoint")
        return Availability(unreachable is None, unreachable, details)

    def auth_mode(self) -> str:
        """How the writer authenticates, for describe() (no secret)."""
        suffix = f", {self.auth_transport}" if self.auth_transport else ""
        if self._tokens is not None:
            return f"oauth-m2m (client_id={mask(self._tokens.client.client_id)}){suffix}"
        if self.targets.mode == "local" and self.config.auth == "token":
            return f"bearer token (local stack){suffix}"
        if self.targets.mode == "local":
            return f"oauth-m2m (the local stack's client){suffix}"
        return zerobus_auth_description(self.targets)

    def auth_counters(self) -> dict[str, Any]:
        return {
            "tokens_fetched": self._tokens.fetched if self._tokens else 0,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        self._open = False
        await self._close_transport()
        await self.close_reader()
        await self._close_auth()

    async def _close_auth(self) -> None:
        http, self._auth_http = self._auth_http, None
        if http is not None:
            await http.aclose()
        self._tokens = None
