"""Postgres connections of the serving path, with the lakebase writer's settings and role.

Local mode: the local stack's DSN (the writer role). Databricks mode: LakebaseSettings
(PGHOST, PGDATABASE, PGUSER, LAKEBASE_INSTANCE_NAME) with an OAuth token from
`generate_database_credential` per new connection. LISTEN needs a session of its own, so
the direct (non-pooled) host is used: a `-pooler` host name is rewritten to the direct one.
Connections are renewed before their token's hour ends (RENEW_AFTER_S).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dwbench.errors import WriterUnavailableError
from writers.base import Targets
from writers.lakebase import (
    DatabaseCredentialProvider,
    LakebaseSettings,
    PasswordProvider,
    StaticPassword,
    missing_workspace_settings,
)

RENEW_AFTER_S = 45 * 60.0
CONNECT_TIMEOUT_S = 5


def direct_host(host: str) -> str:
    """The non-pooled endpoint of a Lakebase host (LISTEN does not survive pooling)."""
    first, dot, rest = host.partition(".")
    return first.removesuffix("-pooler") + dot + rest


class PostgresConnector:
    """Opens psycopg connections as the lakebase writer would, with a fresh password each."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self._password: PasswordProvider | None = None
        self.params: dict[str, Any] = {}

    async def _configure(self) -> None:
        if self._password is not None:
            return
        if self.targets.mode == "local":
            if self.targets.postgres_dsn is None:
                raise WriterUnavailableError("the local stack runs no Postgres")
            params = conninfo_to_dict(self.targets.postgres_dsn.get_secret_value())
            self._password = StaticPassword(str(params.pop("password", "")))
            self.params = params
            return
        pg = self.targets.writer_config("lakebase", LakebaseSettings)
        missing = missing_workspace_settings(pg)
        if missing:
            raise WriterUnavailableError(f"{', '.join(missing)} not set")
        auth = self.targets.workspace_auth
        if auth is None:
            raise WriterUnavailableError(self.targets.auth_missing() or "no workspace credentials")
        assert pg.host and pg.instance_name
        client = await asyncio.to_thread(auth.workspace_client)
        self._password = DatabaseCredentialProvider(client, pg.instance_name)
        sslmode = pg.sslmode if pg.sslmode in ("verify-ca", "verify-full") else "require"
        self.params = {
            "host": direct_host(pg.host),
            "port": pg.port,
            "dbname": pg.database,
            "user": pg.user,
            "sslmode": sslmode,
        }

    async def connect(self, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
        await self._configure()
        assert self._password is not None
        try:
            return await psycopg.AsyncConnection.connect(
                **self.params,
                password=await self._password(),
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="dwbench-pipeline",
                autocommit=autocommit,
            )
        except psycopg.OperationalError as exc:
            # libpq's text names host and user, never the password.
            raise WriterUnavailableError(f"cannot connect to Postgres: {exc}") from exc

    async def kwargs(self) -> dict[str, Any]:
        """Parameters with a current password (for a synchronous connection in a thread)."""
        await self._configure()
        assert self._password is not None
        return {**self.params, "password": await self._password()}


def sync_connect(kwargs: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(**kwargs, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
