"""`dwbench pipeline run`: the serving path end to end, and its freshness waterfall.

The app is started in this process on a loopback port (in local mode it starts or shares
the local stack, as `dwbench run` does); a run goes through its API with one WebSocket
client per path reporting receipts, as the live map does. The result file is like a
benchmark's (config, environment, mode, encoded histograms); the waterfall per path is
printed. Exit codes: 0 the run completed, 1 it failed, 2 bad arguments, 130 cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from dwbench.cli import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    _configure_logging,
    _say,
    _settings,
    parse_duration,
)
from dwbench.errors import DirectWriteError


def _progress(status: dict[str, Any]) -> None:
    fresh = status.get("freshness", {})
    rt = fresh.get("realtime", {}).get("postgres", {}).get("p95")
    sy = fresh.get("synced", {}).get("postgres", {}).get("p95")
    _say(
        f"{status['elapsed_s']:6.1f}s {status['phase']:<9} events {status['events_acked']:,}"
        f"/{status['events_produced']:,} acked; postgres p95 realtime "
        f"{'-' if rt is None else f'{rt:.0f} ms'}, synced {'-' if sy is None else f'{sy:.0f} ms'}"
    )


async def _run(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from main import create_app
    from pipeline.driver import drive, served

    config = {
        "drivers": args.drivers,
        "rate": args.rate,
        "duration_s": args.duration,
        "sync_interval_s": args.sync_interval,
        "writer": args.writer,
        "realtime_mode": args.realtime_mode,
        "seed": args.seed,
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with served(create_app(settings)) as url:
            _say(
                f"app on {url}; {args.drivers} drivers at {args.rate:g} events/s for "
                f"{args.duration:g} s (Ctrl-C stops the run and keeps what it measured)"
            )
            return await drive(url, config, on_status=_progress, stop=stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def cmd_pipeline_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pipeline.freshness import waterfall

    settings = _settings(parser)
    _configure_logging(args.log_level)
    try:
        result = asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        _say("aborted; nothing saved")
        return EXIT_CANCELLED
    except DirectWriteError as exc:
        _say(f"dwbench pipeline run: {exc.message}")
        return EXIT_FAILED
    print(waterfall(result.get("freshness", {})))
    sync = result.get("paths", {}).get("synced", {}).get("sync", {})
    interval = args.sync_interval
    print(
        f"synced path: interval {'as fast as it keeps up' if not interval else f'{interval:g} s'}"
        f", state {sync.get('detailed_state')}, last processed version "
        f"{sync.get('last_processed_commit_version')}"
    )
    cpu = result.get("cpu", {})
    if cpu.get("cpu_ms_per_1000_events_pushed") is not None:
        print(
            f"app CPU: {cpu['cpu_ms_per_1000_events_pushed']:.1f} ms per 1,000 events pushed "
            f"(this process; the fleet's process used {cpu.get('fleet_process_cpu_s') or 0:g} s)"
        )
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
        except OSError as exc:
            _say(f"dwbench pipeline run: the result could not be saved: {exc}")
            return EXIT_FAILED
        print(f"saved {args.out}")
    if result.get("status") != "completed":
        _say(f"the run {result.get('status')}: {result.get('error')}")
        return EXIT_FAILED
    return EXIT_OK


def add_pipeline_parser(commands: Any) -> None:
    """`dwbench pipeline run`, registered by dwbench.cli.build_parser."""
    pipeline = commands.add_parser(
        "pipeline", help="the serving path (Data Diners): run it and measure freshness per hop"
    )
    actions = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="action")
    run = actions.add_parser(
        "run",
        help="drive a fleet through Zerobus, the CDF copy, the synced table and the real-time "
        "writer into Postgres and out over WebSockets; print the freshness waterfall",
    )
    run.add_argument("--drivers", type=int, default=500, help="default: %(default)s")
    run.add_argument("--rate", type=float, default=2000, help="events/s (default: %(default)s)")
    run.add_argument(
        "--duration", type=parse_duration, default=60.0, metavar="TIME", help="default: 60s"
    )
    run.add_argument(
        "--sync-interval",
        type=parse_duration,
        default=0.0,
        metavar="TIME",
        help="the local synced table's interval (default: as fast as it keeps up; 15s is the "
        "service's documented minimum)",
    )
    run.add_argument("--writer", default="zerobus", help="a Zerobus writer (default: zerobus)")
    run.add_argument("--realtime-mode", choices=("upsert", "insert", "copy"), default="upsert")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, metavar="FILE", help="write the result file here")
    run.set_defaults(handler=cmd_pipeline_run, command_parser=run)
