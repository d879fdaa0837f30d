"""Starting and stopping every service of the local stack in one event loop."""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import Header, HTTPException

from emulator.catalog import Catalog
from emulator.postgres import EmbeddedPostgres
from emulator.process import StackOwnership
from emulator.statements import create_statement_app
from emulator.table_writer import TableWriterConfig
from emulator.volumes import Volumes
from emulator.zerobus import ZerobusService, build_server

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    token: str
    host: str = "127.0.0.1"
    zerobus_port: int = 0
    api_port: int = 0
    postgres_port: int = 0
    postgres: bool = True
    rotation_interval_s: float | None = None
    rotation_grace_s: float = 5.0
    ack_only: bool = False
    writer: TableWriterConfig = field(default_factory=TableWriterConfig)


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.catalog: Catalog | None = None
        self.zerobus: ZerobusService | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._ownership: StackOwnership | None = None
        self._grpc: Any = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._statements: Any = None
        self.zerobus_port = 0
        self.api_port = 0

    async def start(self) -> dict[str, Any]:
        """Start every service; return what a client needs to reach them."""
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Before anything touches the data: another live stack's Postgres is not an orphan.
        ownership = StackOwnership(cfg.data_dir)
        previous = ownership.acquire()  # LocalStackInUseError when a live stack owns it
        self._ownership = ownership
        if previous is not None and previous != os.getpid():
            log.info("local_stack_owner_taken_over", previous_pid=previous)
        # Postgres first: its tools are child processes, best forked before gRPC's threads run.
        if cfg.postgres:
            self.postgres = EmbeddedPostgres(
                cfg.data_dir / "postgres",
                host=cfg.host,
                port=cfg.postgres_port,
                password=cfg.token,
            )
            await asyncio.to_thread(self.postgres.start)
        self.catalog = Catalog(cfg.data_dir, cfg.writer)
        self.zerobus = ZerobusService(
            self.catalog,
            cfg.token,
            rotation_interval_s=cfg.rotation_interval_s,
            rotation_grace_s=cfg.rotation_grace_s,
            ack_only=cfg.ack_only,
        )
        self._grpc, self.zerobus_port = build_server(self.zerobus, cfg.host, cfg.zerobus_port)
        await self._grpc.start()

        app = create_statement_app(self.catalog, cfg.token, volumes=Volumes(cfg.data_dir))
        self._statements = app.state.statement_service
        app.add_api_route("/api/local/status", self._status, methods=["GET"])
        app.add_api_route("/api/local/endpoints", self._endpoints, methods=["GET"])
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every response waits for a delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.api_port))
        self.api_port = sock.getsockname()[1]
        self._http = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

        endpoints = self.endpoints()
        ownership.publish(endpoints)
        return endpoints

    def endpoints(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "zerobus_endpoint": f"http://{cfg.host}:{self.zerobus_port}",
            "api_url": f"http://{cfg.host}:{self.api_port}",
            "postgres_dsn": self.postgres.dsn if self.postgres else None,
            "token": cfg.token,
            "data_dir": str(cfg.data_dir.resolve()),
            "warehouse_id": "local",
        }

    async def stop(self) -> None:
        """Stop accepting, commit and acknowledge what is held, then stop every service."""
        if self._ownership is None:
            return  # nothing started: another live stack owns the data, or start never ran
        if self.zerobus is not None:
            await self.zerobus.shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self._statements is not None:
            await self._statements.close()
        if self.catalog is not None:
            await self.catalog.close()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        if self._ownership is not None:
            self._ownership.release()
            self._ownership = None
        log.info("local_stack_stopped")

    def _authorize(self, authorization: str) -> None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.encode(), self.config.token.encode()
        ):
            raise HTTPException(status_code=401, detail="invalid or missing bearer token")

    async def _endpoints(self, authorization: str = Header(default="")) -> dict[str, Any]:
        """Where the services listen, for a client given only the API URL and the token."""
        self._authorize(authorization)
        return self.endpoints()

    async def _status(self, authorization: str = Header(default="")) -> dict[str, Any]:
        """Counters of the local stack (streams, commits), for tests and debug pages."""
        self._authorize(authorization)
        assert self.catalog is not None and self.zerobus is not None
        tables = {}
        for name in self.catalog.names():
            table = self.catalog.get(name)
            writer = table._writer
            tables[name] = {
                "columns": table.schema.ddl(),
                "commits": writer.stats.commits if writer else 0,
                "rows_committed": writer.stats.rows if writer else 0,
                "compactions": writer.stats.compactions if writer else 0,
            }
        return {"zerobus": self.zerobus.stats.as_dict(), "tables": tables}
