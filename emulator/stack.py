"""Starting and stopping every service of the local stack in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import Header, HTTPException

from emulator.catalog import Catalog
from emulator.flight import FlightIngestService, add_to_server
from emulator.jobs import JobRuns, Secrets, jobs_router
from emulator.kafka import KafkaListener
from emulator.mqtt import ZerobusMqttService
from emulator.oauth import DISCOVERY_PATH, TOKEN_PATH, OAuthIssuer
from emulator.postgres import EmbeddedPostgres, PostgresStartError
from emulator.process import (
    PARENT_PID_ENV,
    Backoff,
    StackOwnership,
    SupervisorStatus,
    shortened,
)
from emulator.statements import create_statement_app
from emulator.synced_tables import PipelineServices
from emulator.table_writer import TableWriterConfig
from emulator.tls import LocalTls
from emulator.volumes import Volumes
from emulator.wire import WireCounters
from emulator.zerobus import ZerobusService, build_server
from emulator.zerobus_rest import MAX_BODY_BYTES, ZerobusRestService

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    token: str
    host: str = "127.0.0.1"
    zerobus_port: int = 0
    api_port: int = 0
    zerobus_rest_port: int = 0
    rest_max_body_bytes: int = MAX_BODY_BYTES
    postgres_port: int = 0
    mqtt_port: int = 0
    kafka_port: int = 0
    postgres: bool = True
    rotation_interval_s: float | None = None
    rotation_grace_s: float = 5.0
    ack_only: bool = False
    # Job runs execute the code they are sent (emulator.jobs): off unless asked for.
    jobs: bool = False
    writer: TableWriterConfig = field(default_factory=TableWriterConfig)


class LocalStack:
    # Supervision (see `_supervise`): how often it looks, how it backs off between restarts.
    supervise_interval_s = 0.25
    postgres_backoff = Backoff()

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.catalog: Catalog | None = None
        self.zerobus: ZerobusService | None = None
        self.flight: FlightIngestService | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._ownership: StackOwnership | None = None
        self._grpc: Any = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._statements: Any = None
        self.zerobus_port = 0
        self.api_port = 0
        self.oauth: OAuthIssuer | None = None
        self.rest: ZerobusRestService | None = None
        self._rest_http: uvicorn.Server | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self.zerobus_rest_port = 0
        # Bytes each client sent, per interface and table (`emulator.wire`).
        self.wire = WireCounters()
        self.tls: LocalTls | None = None
        self.mqtt: ZerobusMqttService | None = None
        self.mqtt_port = 0
        self.kafka: KafkaListener | None = None
        self.pipeline: PipelineServices | None = None  # the serving path's copy and syncs
        self.jobs: JobRuns | None = None
        self.postgres_status = SupervisorStatus(state="stopped")
        self._supervisor: asyncio.Task[None] | None = None
        self._parent_pid = _parent_pid()

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
            self.postgres_status = SupervisorStatus(pid=self.postgres.pid)
        self.catalog = Catalog(cfg.data_dir, cfg.writer)
        # The CA clients verify the TLS listeners against; kept across restarts.
        self.tls = await asyncio.to_thread(LocalTls.ensure, cfg.data_dir / "tls", cfg.host)
        # The workspace id is the first label of the Zerobus host, as the clients derive it.
        self.oauth = OAuthIssuer(cfg.token, workspace_id=cfg.host.split(".")[0])
        self.zerobus = ZerobusService(
            self.catalog,
            cfg.token,
            rotation_interval_s=cfg.rotation_interval_s,
            rotation_grace_s=cfg.rotation_grace_s,
            ack_only=cfg.ack_only,
            oauth=self.oauth,
            wire=self.wire,
        )
        self._grpc, self.zerobus_port = build_server(self.zerobus, cfg.host, cfg.zerobus_port)
        # Arrow Flight DoPut shares the Zerobus port, as on the service.
        self.flight = FlightIngestService(
            self.catalog,
            cfg.token,
            rotation_interval_s=cfg.rotation_interval_s,
            rotation_grace_s=cfg.rotation_grace_s,
            ack_only=cfg.ack_only,
            wire=self.wire,
        )
        add_to_server(self.flight, self._grpc)
        await self._grpc.start()

        volumes = Volumes(cfg.data_dir)
        app = create_statement_app(self.catalog, cfg.token, volumes=volumes, oauth=self.oauth)
        # One-time job runs (the databricks-job executor) and the secret scopes they read.
        self.jobs = JobRuns(cfg.data_dir, volumes, Secrets(), enabled=cfg.jobs)
        app.include_router(jobs_router(self.jobs, cfg.token, self.oauth))
        self._statements = app.state.statement_service
        app.add_api_route("/api/local/status", self._status, methods=["GET"])
        app.add_api_route("/api/local/endpoints", self._endpoints, methods=["GET"])
        app.add_api_route("/api/local/wire-bytes", self._wire_bytes, methods=["GET"])
        assert self.oauth is not None
        app.add_api_route(TOKEN_PATH, self.oauth.token_route, methods=["POST"])
        app.add_api_route(DISCOVERY_PATH, self.oauth.discovery_route, methods=["GET"])
        self.pipeline = PipelineServices(self.catalog, self.postgres, cfg.data_dir)
        self.pipeline.add_routes(app, self._authorize)
        self._http, self._http_task, self.api_port = await _serve_http(app, cfg.host, cfg.api_port)
        # Zerobus REST on a port of its own: the service answers it on the Zerobus host.
        self.rest = ZerobusRestService(
            self.catalog, self.oauth, max_body_bytes=cfg.rest_max_body_bytes, wire=self.wire
        )
        self._rest_http, self._rest_task, self.zerobus_rest_port = await _serve_http(
            self.rest.app(), cfg.host, cfg.zerobus_rest_port
        )
        # MQTT v5 over TLS, as the service listens on 8883.
        self.mqtt = ZerobusMqttService(self.catalog, self.oauth, self.wire)
        assert self.tls is not None
        self.mqtt_port = await self.mqtt.start(cfg.host, cfg.mqtt_port, self.tls.server_context())
        # Zerobus's Kafka-compatible API: TLS with the stack's CA, SASL OAUTHBEARER.
        self.kafka = KafkaListener(
            self.catalog, self.oauth, self.tls, self.wire, host=cfg.host, port=cfg.kafka_port
        )
        await self.kafka.start()
        await self.pipeline.restore()

        endpoints = self.endpoints()
        ownership.publish(endpoints)
        self._supervisor = asyncio.create_task(self._supervise(), name="stack-supervisor")
        return endpoints

    async def _supervise(self) -> None:
        """Restart Postgres when it dies (it is a daemon: nobody else would), and stop the
        whole stack cleanly when the process that started it is gone (an orphan)."""
        while True:
            await asyncio.sleep(self.supervise_interval_s)
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                log.warning("local_stack_parent_gone", parent_pid=self._parent_pid)
                self._parent_pid = None
                os.kill(os.getpid(), signal.SIGTERM)  # the clean stop `python -m emulator` does
                return
            postgres = self.postgres
            if postgres is not None and not await asyncio.to_thread(postgres.alive):
                await self._restart_postgres(postgres)

    async def _restart_postgres(self, postgres: EmbeddedPostgres) -> None:
        status = self.postgres_status
        status.last_exit = f"the postmaster (pid {status.pid}) is gone"
        status.state, status.attempt = "restarting", 0
        status.reason = f"Postgres is restarting: {status.last_exit}"
        log.error("postgres.died", pid=status.pid, data_dir=str(self.config.data_dir))
        while True:
            status.attempt += 1
            delay = self.postgres_backoff.delay(status.attempt)
            if delay:
                await asyncio.sleep(delay)
            try:
                # Shielded: a stop() meanwhile lets the start end, then stops the server.
                await asyncio.shield(asyncio.to_thread(postgres.restart))
            except PostgresStartError as exc:
                status.state = "down"
                status.reason = (
                    f"Postgres is down: {status.last_exit}, and restart attempt "
                    f"{status.attempt} failed: {shortened(str(exc))}; trying again"
                )
                log.error("postgres.restart_failed", attempt=status.attempt, reason=str(exc))
                continue
            status.restarts += 1
            status.state, status.reason, status.pid = "running", None, postgres.pid
            log.warning("postgres.restarted", pid=postgres.pid, restarts=status.restarts)
            return

    def endpoints(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "zerobus_endpoint": f"http://{cfg.host}:{self.zerobus_port}",
            "api_url": f"http://{cfg.host}:{self.api_port}",
            "postgres_dsn": self.postgres.dsn if self.postgres else None,
            "token": cfg.token,
            "data_dir": str(cfg.data_dir.resolve()),
            "warehouse_id": "local",
            "zerobus_rest_url": f"http://{cfg.host}:{self.zerobus_rest_port}",
            "workspace_id": self.oauth.workspace_id if self.oauth else None,
            "oauth_client_id": self.oauth.client_id if self.oauth else None,
            "oauth_client_secret": self.oauth.client_secret if self.oauth else None,
            "ca_file": str(self.tls.ca_file.resolve()) if self.tls else None,
            "mqtt_endpoint": f"{cfg.host}:{self.mqtt_port}" if self.mqtt else None,
            "kafka_bootstrap": self.kafka.bootstrap if self.kafka else None,
        }

    async def stop(self) -> None:
        """Stop accepting, commit and acknowledge what is held, then stop every service."""
        if self._ownership is None:
            return  # nothing started: another live stack owns the data, or start never ran
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self.zerobus is not None:
            await self.zerobus.shutdown()
        if self.flight is not None:
            await self.flight.shutdown()
        if self.mqtt is not None:
            await self.mqtt.shutdown()
        if self.kafka is not None:
            await self.kafka.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
        for server, task in ((self._rest_http, self._rest_task), (self._http, self._http_task)):
            if server is not None and task is not None:
                server.should_exit = True
                await task
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.jobs is not None:
            await self.jobs.close()  # a task still running is cancelled, then killed
        if self._statements is not None:
            await self._statements.close()
        if self.catalog is not None:
            await self.catalog.close()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
            self.postgres_status.state, self.postgres_status.reason = "stopped", None
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

    async def _wire_bytes(self, authorization: str = Header(default="")) -> dict[str, Any]:
        """Bytes received per interface and table (`emulator.wire`), cumulative."""
        self._authorize(authorization)
        return self.wire.snapshot()

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
                "vacuumed_files": writer.stats.vacuumed_files if writer else 0,
                "fsync_ms": round(writer.stats.fsync_ms, 3) if writer else 0.0,
            }
        rest = (
            {"requests": self.rest.requests, "rows_committed": self.rest.rows_committed}
            if self.rest
            else {}
        )
        flight = self.flight.stats.as_dict() if self.flight is not None else None
        return {
            "zerobus": self.zerobus.stats.as_dict(),
            "arrow_flight": flight,
            "zerobus_rest": rest,
            "zerobus_kafka": self.kafka.stats.as_dict() if self.kafka is not None else None,
            "tables": tables,
            # Torn Delta log tails recovered at start (`emulator.recovery`).
            "incidents": self.catalog.incidents,
            "fsync": self.config.writer.fsync,
            "zerobus_mqtt": self.mqtt.stats.as_dict() if self.mqtt is not None else None,
            "wire_bytes": self.wire.snapshot(),
            "postgres": self.postgres_status.as_dict() if self.postgres is not None else None,
        }


def _parent_pid() -> int | None:
    """The pid of the process that started this stack and wants it to end with it."""
    value = os.environ.get(PARENT_PID_ENV, "")
    return int(value) if value.isdigit() else None


async def _serve_http(
    app: Any, host: str, port: int
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Serve an ASGI app on host:port (0 = a free port) until `should_exit`; wait until up."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every response waits for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task, bound
