"""`python -m emulator`: run the local stack until SIGTERM or SIGINT.

When every service is ready, one JSON line with the endpoints goes to stdout; logs go
to stderr. On a signal the stack stops accepting, commits and acknowledges what it
holds, and exits 0. When another live stack owns the data directory it touches nothing
and exits 3 (EXIT_IN_USE), naming the owner's pid.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

# Set before gRPC loads: the stack starts Postgres tools (initdb, pg_ctl) as child processes,
# and gRPC's fork handlers can abort a child forked while its threads are busy.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import structlog

from emulator.process import EXIT_IN_USE, LocalStackInUseError
from emulator.stack import LocalStack, StackConfig
from emulator.table_writer import TableWriterConfig

log = structlog.get_logger("emulator")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emulator", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(".data"))
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--zerobus-port", type=int, default=0, help="0 = any free port")
    p.add_argument("--api-port", type=int, default=0, help="0 = any free port")
    p.add_argument(
        "--zerobus-rest-port", type=int, default=0, help="Zerobus REST port; 0 = any free port"
    )
    p.add_argument("--postgres-port", type=int, default=0, help="0 = any free port")
    p.add_argument("--mqtt-port", type=int, default=0, help="Zerobus MQTT port; 0 = any free port")
    p.add_argument(
        "--kafka-port", type=int, default=0, help="Zerobus Kafka (TLS) port; 0 = any free port"
    )
    p.add_argument("--no-postgres", action="store_true", help="do not start PostgreSQL")
    p.add_argument(
        "--token",
        default=os.environ.get("LOCAL_STACK_TOKEN"),
        help="bearer token the APIs require and the Postgres password "
        "(default: $LOCAL_STACK_TOKEN, else a random one)",
    )
    p.add_argument(
        "--rotation-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="ask Zerobus clients to rotate streams this often (default: never)",
    )
    p.add_argument("--rotation-grace", type=float, default=5.0, metavar="SECONDS")
    p.add_argument(
        "--ack-only",
        action="store_true",
        help="acknowledge Zerobus messages without decoding or storing them (benchmark ceiling)",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="UNSAFE, for measuring what durability costs only: acknowledge commits "
        "without fsyncing them (acknowledged rows may be lost on power loss)",
    )
    p.add_argument(
        "--jobs",
        action="store_true",
        help="serve the Jobs API's one-time runs (the databricks-job executor's stand-in): "
        "a submitted run runs the code of the wheel it names on this machine, as a cluster "
        "would, so the token then opens the host (default: off)",
    )
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if not is_loopback_host(args.host):
        p.error(
            "--host must be a loopback address (an IP in 127.0.0.0/8, ::1, or localhost): "
            f"the local stack is not meant for a network, got {args.host!r}"
        )
    return args


def is_loopback_host(host: str) -> bool:
    """A loopback IP literal, or `localhost`; a name that merely starts with 127. is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


async def _serve(args: argparse.Namespace) -> None:
    stack = LocalStack(
        StackConfig(
            data_dir=args.data_dir,
            token=args.token or secrets.token_urlsafe(24),
            host=args.host,
            zerobus_port=args.zerobus_port,
            api_port=args.api_port,
            zerobus_rest_port=args.zerobus_rest_port,
            postgres_port=args.postgres_port,
            mqtt_port=args.mqtt_port,
            kafka_port=args.kafka_port,
            postgres=not args.no_postgres,
            rotation_interval_s=args.rotation_interval,
            rotation_grace_s=args.rotation_grace,
            ack_only=args.ack_only,
            jobs=args.jobs,
            writer=TableWriterConfig(fsync=not args.no_fsync),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        endpoints = await stack.start()
    except BaseException:
        await stack.stop()
        raise
    if args.no_fsync:
        log.warning("fsync_disabled", reason="--no-fsync: acknowledged rows may be lost")
    print(json.dumps({**endpoints, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await stack.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _configure_logging(args.log_level)
    # Delta commits run in a thread and release the GIL while they encode and write, but
    # take it back many times; with the default 5 ms switch interval each take-back waits
    # behind the event loop's decoding, and a 10 ms commit stretches to 30-40 ms.
    sys.setswitchinterval(0.0005)
    try:
        asyncio.run(_serve(args))
    except LocalStackInUseError as exc:
        print(f"python -m emulator: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    return 0


if __name__ == "__main__":
    sys.exit(main())
