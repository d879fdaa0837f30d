"""`dwbench sweep`: one workload over a grid of batch sizes x concurrencies, every point a full
run of every writer; then per writer the grid of rows/s and p99 with the best point and the
knee (bench/sweep.py says how they are chosen), one saved result set, and an HTML report.

Exit codes as `run`: 0 every point of every writer completed without failed batches; 1 a
point or writer did not (or the targets could not be reached); 2 bad arguments; 130 cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bench.config import DEFAULT_DURATION_S, DEFAULT_WARMUP_S
from bench.environment import mode_notice
from bench.results import RunResult
from bench.sweep import SweepConfig, SweepPoint, SweepResult, SweepRun, SweepStore
from dwbench.cli import (
    _OPTION,
    _UNIT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    ProgressDisplay,
    _configure_logging,
    _Interrupts,
    _say,
    _settings,
    budget_check,
    fmt_int,
    fmt_ms,
    parse_duration,
    parse_writers,
    render_table,
    with_runtime,
)
from dwbench.errors import DirectWriteError, ResourceLimitError
from workloads.registry import WorkloadRegistry
from writers import WRITERS

if TYPE_CHECKING:
    from dwbench.runtime import Runtime
    from dwbench.settings import Settings

BEST, KNEE = "*", "!"
_SWEEP_OPTION = {"batch_sizes": "--batch-size", "concurrencies": "--concurrency"}
STREAMS_AXIS = (
    "--streams: one stream count for every point (streams as a grid axis is not built yet); "
    "sweep --batch-size and --concurrency"
)


def parse_int_list(text: str) -> list[int]:
    """ "100,1000,10000" -> [100, 1000, 10000]; thousands separators "_" are allowed."""
    try:
        values = [int(part.strip().replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid list {text!r}: give whole numbers separated by commas, e.g. 100,1000"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value, e.g. 100,1000")
    return values


def sweep_config_from_args(args: argparse.Namespace) -> SweepConfig:
    values: dict[str, Any] = {
        "batch_sizes": args.batch_size,
        "concurrencies": args.concurrency,
        "record_bytes": args.record_bytes,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "rate": args.rate,
        "parallel": args.parallel,
        "visibility": not args.no_visibility,
    }
    if args.streams is not None:
        (values["streams"],) = args.streams
    for name, value in (
        ("writers", args.writers),
        ("workload", args.workload),
        ("drivers", args.drivers),
    ):
        if value is not None:
            values[name] = value
    if args.duration is not None:
        values["duration_s"] = args.duration
    elif args.records is not None:
        values["records"] = args.records
    return SweepConfig(**values)


def sweep_validation_message(exc: ValidationError) -> str:
    """One line per invalid field, named as the command line names it."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = _SWEEP_OPTION.get(field) or _OPTION.get(field, field or "arguments")
        message = str(error["msg"]).removeprefix("Value error, ")
        unit = _UNIT.get(field)
        lines.append(f"{where}: {message}" + (f" ({unit})" if unit else ""))
    return "; ".join(lines)


# -- text ----------------------------------------------------------------------------------


def grid_text(sweep: SweepResult) -> str:
    """Per writer: rows/s (p99 ms) per batch size x concurrency, best (*) and knees (!)."""
    blocks = []
    concs = sweep.config.concurrencies
    for analysis in sweep.writers:
        best = analysis.best
        knees = {(k.knee.batch_size, k.knee.concurrency) for k in analysis.knees if k.knee}
        rows = []
        for b in sweep.config.batch_sizes:
            row = [f"{b:,}"]
            for c in concs:
                point = sweep.point(b, c)
                w = next((w for w in point.writers if w.writer == analysis.writer), None)
                mark = ""
                if best is not None and (best.batch_size, best.concurrency) == (b, c):
                    mark += BEST
                if (b, c) in knees:
                    mark += KNEE
                row.append(mark + _cell(point, w))
            rows.append(row)
        header = ["batch size", *(f"conc {c}" for c in concs)]
        lines = [
            f"{analysis.label} ({analysis.writer}): rows/s (p99 ms)",
            render_table(header, rows),
        ]
        if best is not None:
            p99 = fmt_ms(best.p99_ms) + " ms" if best.p99_ms is not None else "n/a"
            lines.append(
                f"{BEST} best: batch size {best.batch_size:,} x concurrency {best.concurrency}: "
                f"{fmt_int(best.rows_per_s)} rows/s, p99 {p99} ({analysis.best_note})"
            )
        else:
            lines.append(f"no best point: {analysis.best_note}")
        for k in analysis.knees:
            where = (
                f"batch size {k.fixed:,}, concurrency rising"
                if k.along == "concurrency"
                else f"concurrency {k.fixed}, batch size rising"
            )
            lines.append(f"{KNEE if k.knee else ' '} {where}: {k.note}")
        blocks.append("\n".join(lines))
    unsupported = any(w.p99_unsupported for p in sweep.points for w in p.writers if w.rows)
    notes = [
        *(
            ["n/a: p99 not supported by the sample (it needs 1,000 batches; run longer)"]
            if unsupported
            else []
        ),
        *sweep.warnings,
    ]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(notes)


def _cell(point: SweepPoint, w: Any) -> str:
    if w is None:
        return point.status
    if w.status != "completed":
        return w.status
    p99 = fmt_ms(w.p99_ms) if w.p99_ms is not None else "n/a"
    failed = f" {w.failed_batches} failed" if w.failed_batches else ""
    return f"{fmt_int(w.rows_per_s)} ({p99}){failed}"


def _exit_code(sweep: SweepResult) -> int:
    if sweep.status == "cancelled":
        return EXIT_CANCELLED
    if sweep.status != "completed":
        return EXIT_FAILED
    if any(w.status != "completed" or w.failed_batches for p in sweep.points for w in p.writers):
        return EXIT_FAILED
    return EXIT_OK


# -- running -------------------------------------------------------------------------------


class _SweepProgress:
    """A line per point as it starts, the point's writer bars in between."""

    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display
        self.point = 0

    def __call__(self, progress: dict[str, Any]) -> None:
        if progress["point"] != self.point:
            self.point = progress["point"]
            self.display.note(
                f"point {progress['point']}/{progress['points']}: batch size "
                f"{progress['batch_size']:,} x concurrency {progress['concurrency']}"
            )
        if progress["run"] is not None:
            self.display.update(progress["run"])


async def _run_sweep(
    config: SweepConfig, settings: Settings, display: ProgressDisplay, store: SweepStore
) -> SweepResult | None:
    """Start the targets, run every point, stop the targets; None when aborted."""
    from bench.environment import capture_environment

    async def body(runtime: Runtime, interrupts: _Interrupts) -> SweepResult:
        workload = runtime.workloads.get(config.workload)
        await runtime.ensure_tables(workload)
        run = SweepRun(
            config, environment=capture_environment(runtime.targets), workloads=runtime.workloads
        )
        interrupts.cancel_run = run.cancel
        per_point = (config.duration_s or 0) + config.warmup_s
        estimate = (
            f", about {per_point * len(run.points) * len(config.writers):,.0f} s"
            if config.duration_s
            else ""
        )
        _say(
            f"sweep {run.id}: {', '.join(config.writers)}; {len(run.points)} points "
            f"(batch sizes {', '.join(map(str, config.batch_sizes))} x concurrencies "
            f"{', '.join(map(str, config.concurrencies))}){estimate}"
        )
        _say(f"mode: {runtime.targets.mode}. {mode_notice(run.environment)}")
        _say("Ctrl-C cancels the sweep and keeps the points measured")

        def keep(point: SweepPoint, result: RunResult) -> None:
            store.save_point(run.id, result)

        return await run.execute(runtime.writers, _SweepProgress(display), keep)

    return await with_runtime(settings, display, body)


def cmd_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.streams is not None and len(args.streams) != 1:
        parser.error(STREAMS_AXIS)
    try:
        config = sweep_config_from_args(args)
    except ValidationError as exc:
        parser.error(sweep_validation_message(exc))
    try:
        workload = WorkloadRegistry().get(config.workload)
    except DirectWriteError as exc:
        parser.error(exc.message)
    settings = _settings(parser)
    _configure_logging(args.log_level)  # before the writers are imported (RUST_LOG)
    try:  # every point, before anything starts
        budget_check([config.point_config(b, c) for b, c in config.grid()], workload, settings)
    except ResourceLimitError as exc:
        parser.error(exc.message)
    store = SweepStore(args.results_dir or settings.data_dir / "results")
    display = ProgressDisplay(sys.stderr, tty=sys.stderr.isatty(), duration_s=config.duration_s)
    try:
        sweep = asyncio.run(_run_sweep(config, settings, display, store))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("aborted; nothing saved")
        return EXIT_CANCELLED
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        _say(f"dwbench sweep: cannot reach the targets: {message}")
        return EXIT_FAILED
    if sweep is None:
        _say("aborted; nothing saved")
        return EXIT_CANCELLED
    print(grid_text(sweep))
    print()
    try:
        print(f"saved {store.save(sweep)}")
        if args.html is not None:
            from bench.sweep_report import render_sweep_html

            args.html.parent.mkdir(parents=True, exist_ok=True)
            args.html.write_text(render_sweep_html(sweep))
            print(f"saved {args.html}")
    except OSError as exc:
        _say(f"dwbench sweep: the result could not be saved: {exc}")
        return EXIT_FAILED
    return _exit_code(sweep)


def add_sweep_parser(commands: Any) -> None:
    """`dwbench sweep`, registered by dwbench.cli.build_parser."""
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of batch sizes x concurrencies and find the best setting per writer",
        epilog="lists: comma-separated, e.g. --batch-size 100,1000,10000 --concurrency 1,4,16 "
        "(at most 64 points). best: the highest rows/s (within 2 %, the lowest p99); knee: "
        "the first point where p99 grows > 1.5x while rows/s grows < 10 %. exit codes: 0 every "
        "point of every writer completed without failed batches, 1 otherwise, 2 bad arguments, "
        "130 cancelled",
    )
    sweep.add_argument(
        "--writers",
        type=parse_writers,
        metavar="W1,W2",
        help=f"comma-separated: {', '.join(WRITERS)} (default: zerobus,sql,lakebase)",
    )
    sweep.add_argument(
        "--batch-size", type=parse_int_list, default=[1000], metavar="N1,N2", help="rows per batch"
    )
    sweep.add_argument(
        "--concurrency",
        type=parse_int_list,
        default=[4],
        metavar="N1,N2",
        help="batches in flight",
    )
    sweep.add_argument(
        "--streams",
        type=parse_int_list,
        metavar="N",
        help="streams per writer at every point (dwbench run --streams)",
    )
    amount = sweep.add_mutually_exclusive_group()
    amount.add_argument("--records", type=int, help="rows per writer and point")
    amount.add_argument(
        "--duration",
        type=parse_duration,
        metavar="TIME",
        help=f"time measured per writer and point (default: {DEFAULT_DURATION_S:g}s)",
    )
    sweep.add_argument(
        "--warmup",
        type=parse_duration,
        default=DEFAULT_WARMUP_S,
        metavar="TIME",
        help=f"written first at each point, not measured (default: {DEFAULT_WARMUP_S:g}s)",
    )
    sweep.add_argument("--rate", type=int, metavar="ROWS_PER_S", help="target rows/s at each point")
    sweep.add_argument("--record-bytes", type=int, default=1024, help="default: %(default)s")
    sweep.add_argument("--workload", metavar="NAME", help="products (default) or telemetry")
    sweep.add_argument("--drivers", type=int, help="telemetry: drivers in the fleet")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--parallel", action="store_true", help="writers at the same time")
    sweep.add_argument("--no-visibility", action="store_true", help="skip ack -> readable")
    sweep.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    sweep.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        help="default: $DATA_DIR/results (the sweep goes to DIR/sweeps/<id>.json)",
    )
    sweep.set_defaults(handler=cmd_sweep, command_parser=sweep)
