"""OAuth M2M on the local stack: `POST /oidc/v1/token` and the tokens it issues.

The route is the workspace's client-credentials grant as the Zerobus SDKs call it: Basic
auth with the client id and secret, a form with `grant_type=client_credentials`,
`scope=all-apis`, an optional `resource`
(`api://databricks/workspaces/{workspace_id}/zerobusDirectWriteApi`) and optional
`authorization_details`: a JSON array of `unity_catalog_privileges` entries, USE CATALOG
on the catalog, USE SCHEMA on the schema, SELECT and MODIFY on the table (with, when the
entry names operations, `zerobuswrite` among them). A grant with authorization_details
gives a token for those tables only. Errors have the OAuth shape
`{"error": ..., "error_description": ...}`: `invalid_client` 401 for a wrong id or
secret, `invalid_request`, `unsupported_grant_type` or `invalid_scope` 400.

The client id and secret are derived from the stack's token (so a stack restarted with the
same token keeps them) and published in the endpoints; neither the secret nor the tokens
are ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse

from emulator.catalog import parse_table_name
from emulator.errors import SchemaMismatchError

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oidc/v1/token"
DISCOVERY_PATH = "/oidc/.well-known/oauth-authorization-server"
TOKEN_LIFETIME_S = 3600
_MAX_FORM_BYTES = 64 * 1024
_PRIVILEGES = {
    "CATALOG": {"USE CATALOG"},
    "SCHEMA": {"USE SCHEMA"},
    "TABLE": {"SELECT", "MODIFY"},
}


def _derive(token: str, purpose: str) -> str:
    digest = hmac.new(token.encode(), purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class GrantError(Exception):
    """A token request refused: the OAuth error code, its HTTP status and why."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class TokenRejected(Exception):
    """A bearer token that may not do what it was presented for (401 or 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Grant:
    expires_at: float
    # Canonical names of the tables it may write into; None = not scoped to any table.
    tables: frozenset[str] | None


def parse_authorization_details(text: str) -> frozenset[str]:
    """The tables an authorization_details value grants Zerobus writes on, or GrantError."""
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also past Python's int-digit limit
        raise GrantError("invalid_request", f"authorization_details is not JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise GrantError("invalid_request", "authorization_details must be a non-empty JSON array")
    granted: dict[str, set[str]] = {"CATALOG": set(), "SCHEMA": set(), "TABLE": set()}
    for i, entry in enumerate(entries):
        where = f"authorization_details[{i}]"
        if not isinstance(entry, dict):
            raise GrantError("invalid_request", f"{where} is not an object")
        if entry.get("type") != "unity_catalog_privileges":
            raise GrantError("invalid_request", f"{where}.type must be 'unity_catalog_privileges'")
        kind = entry.get("object_type")
        if kind not in _PRIVILEGES:
            raise GrantError(
                "invalid_request", f"{where}.object_type must be CATALOG, SCHEMA or TABLE"
            )
        path = entry.get("object_full_path")
        parts = 1 + ["CATALOG", "SCHEMA", "TABLE"].index(kind)
        if not isinstance(path, str) or len(path.split(".")) != parts:
            raise GrantError(
                "invalid_request",
                f"{where}.object_full_path must name a {kind.lower()} in {parts} part(s)",
            )
        privileges = entry.get("privileges")
        if not isinstance(privileges, list) or not all(isinstance(p, str) for p in privileges):
            raise GrantError("invalid_request", f"{where}.privileges must be an array of strings")
        missing = _PRIVILEGES[kind] - {p.upper() for p in privileges}
        if missing:
            raise GrantError(
                "invalid_request", f"{where} lacks {', '.join(sorted(missing))} on {path}"
            )
        operations = entry.get("operations")
        if operations is not None and (
            kind != "TABLE" or not isinstance(operations, list) or "zerobuswrite" not in operations
        ):
            raise GrantError(
                "invalid_request", f"{where}.operations must be a TABLE's array with zerobuswrite"
            )
        granted[kind].add(path.lower())
    if not granted["TABLE"]:
        raise GrantError("invalid_request", "authorization_details grants no TABLE")
    tables = set()
    for path in sorted(granted["TABLE"]):
        try:
            name = parse_table_name(path)
        except SchemaMismatchError as exc:
            raise GrantError("invalid_request", str(exc)) from None
        catalog, schema, _ = name.split(".")
        if catalog not in granted["CATALOG"]:
            raise GrantError("invalid_request", f"USE CATALOG on {catalog} is needed for {name}")
        if f"{catalog}.{schema}" not in granted["SCHEMA"]:
            raise GrantError(
                "invalid_request", f"USE SCHEMA on {catalog}.{schema} is needed for {name}"
            )
        tables.add(name)
    return frozenset(tables)


class OAuthIssuer:
    """Issues and checks the local stack's OAuth tokens; the stack token is always valid."""

    def __init__(
        self,
        stack_token: str,
        *,
        workspace_id: str = "127",
        lifetime_s: int = TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stack_token = stack_token.encode()
        self.client_id = "local-" + _derive(stack_token, "oauth-client-id")[:20]
        self._client_secret = _derive(stack_token, "oauth-client-secret")
        self.workspace_id = workspace_id
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._grants: dict[str, Grant] = {}

    @property
    def client_secret(self) -> str:
        return self._client_secret

    @property
    def resource(self) -> str:
        return f"api://databricks/workspaces/{self.workspace_id}/zerobusDirectWriteApi"

    def issue(self, authorization: str, form: dict[str, str]) -> dict[str, Any]:
        """The token response for a grant request, or GrantError."""
        self._check_client(authorization)
        if form.get("grant_type") != "client_credentials":
            raise GrantError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("scope") != "all-apis":
            raise GrantError("invalid_scope", "scope must be all-apis")
        resource = form.get("resource")
        if resource is not None and resource != self.resource:
            raise GrantError("invalid_request", f"resource must be {self.resource}")
        details = form.get("authorization_details")
        tables = parse_authorization_details(details) if details is not None else None
        now = self._clock()
        self._grants = {t: g for t, g in self._grants.items() if g.expires_at > now}
        token = secrets.token_urlsafe(32)
        self._grants[token] = Grant(now + self.lifetime_s, tables)
        log.info(
            "oauth_token_issued",
            client_id=self.client_id,
            tables=",".join(sorted(tables)) if tables is not None else "all",
            expires_in=self.lifetime_s,
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime_s,
            "scope": "all-apis",
        }

    def _check_client(self, authorization: str) -> None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise GrantError("invalid_client", "client authentication (Basic) is required", 401)
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise GrantError("invalid_client", "malformed Basic credentials", 401) from None
        client_id, sep, secret = decoded.partition(":")
        good_id = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        good_secret = hmac.compare_digest(secret.encode(), self._client_secret.encode())
        if not (sep and good_id and good_secret):
            log.warning("oauth_client_rejected", client_id=client_id[:40])
            raise GrantError("invalid_client", "invalid client id or secret", 401)

    def authenticate(self, authorization: str) -> Grant | None:
        """The grant of a valid bearer token (None for the stack's own); TokenRejected (401)."""
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise TokenRejected(401, "invalid or missing bearer token")
        if hmac.compare_digest(presented.encode(), self._stack_token):
            return None
        grant = self._grants.get(presented)
        if grant is None:
            raise TokenRejected(401, "invalid or missing bearer token")
        if grant.expires_at <= self._clock():
            self._grants.pop(presented, None)
            raise TokenRejected(401, "the OAuth token has expired")
        return grant

    def allows_apis(self, authorization: str) -> bool:
        """Whether the bearer token may call the workspace's REST APIs (SQL, Unity Catalog,
        Files): the stack's own, or an OAuth token without authorization_details (scope
        all-apis, as the SDK's oauth-m2m asks for). A token scoped to tables is for Zerobus
        writes only."""
        try:
            grant = self.authenticate(authorization)
        except TokenRejected:
            return False
        return grant is None or grant.tables is None

    async def discovery_route(self, request: Request) -> JSONResponse:
        """The workspace's OAuth metadata (`/oidc/.well-known/oauth-authorization-server`),
        which the SDK reads to find the token endpoint; public, as on a workspace."""
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": f"{base}/oidc",
                "authorization_endpoint": f"{base}/oidc/v1/authorize",
                "token_endpoint": f"{base}{TOKEN_PATH}",
                "grant_types_supported": ["client_credentials"],
            }
        )

    def authorize_write(self, authorization: str, table: str) -> None:
        """Whether the bearer token may write into `table` (canonical); TokenRejected if not."""
        grant = self.authenticate(authorization)
        if grant is None:
            return
        if grant.tables is None:
            raise TokenRejected(
                403,
                f"the OAuth token has no authorization_details; Zerobus needs a token "
                f"scoped to {table}",
            )
        if table not in grant.tables:
            raise TokenRejected(403, f"the OAuth token does not grant writes on {table}")

    async def token_route(self, request: Request) -> JSONResponse:
        """OAuth M2M client-credentials grant (`/oidc/v1/token`)."""
        try:
            body = await request.body()
            if len(body) > _MAX_FORM_BYTES:
                raise GrantError("invalid_request", "the form is too large")
            if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                raise GrantError(
                    "invalid_request", "the body must be application/x-www-form-urlencoded"
                )
            try:
                parsed = parse_qs(body.decode(), strict_parsing=bool(body))
            except (UnicodeDecodeError, ValueError):
                raise GrantError("invalid_request", "the form cannot be parsed") from None
            form = {k: v[-1] for k, v in parsed.items()}
            answer = self.issue(request.headers.get("authorization", ""), form)
        except GrantError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description},
                status_code=exc.status,
                headers={"WWW-Authenticate": "Basic"} if exc.status == 401 else None,
            )
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})
