"""`dwbench`: run the app, the local stack and benchmarks from a terminal.

A thin adapter over `bench/` and `runtime.py`: it parses arguments, shows progress, renders
tables and saves files; everything measured is measured by `bench.runner`.

Exit codes: 0 done (`run`: every writer completed without failed batches); 1 a writer failed,
was unavailable or had failed batches, or the targets could not be reached; 2 bad arguments;
130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pydantic import ValidationError

from bench.config import DEFAULT_DURATION_S, DEFAULT_WARMUP_S, BenchmarkConfig
from bench.environment import LOCAL_NOTICE, mode_notice
from bench.executors import ELSEWHERE
from bench.report import (
    MISSING,
    UNSUPPORTED,
    config_text,
    fmt_int,
    fmt_mib,
    fmt_ms,
    fmt_seconds,
    status_text,
)
from bench.results import LatencySummary, RunResult, WriterResult, to_csv
from bench.store import (
    NOISE_FLOOR,
    MetricDiff,
    ResultStore,
    compare,
    compare_json,
    compare_notes,
    load_result,
    only_in,
)
from dwbench.errors import DirectWriteError, InvalidSchemaError, ResourceLimitError
from workloads.base import Workload
from workloads.registry import WorkloadRegistry
from writers import WRITERS

if TYPE_CHECKING:
    from dwbench.runtime import Runtime
    from dwbench.settings import Settings

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

# -- argument types ------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from "500ms", "5s", "2m", "1h" or a plain number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 500ms, 30s, 2m, 1h or a number of seconds"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_writers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one writer, e.g. zerobus,sql,lakebase")
    return names


# Config fields as the command line spells them, for error messages.
_OPTION = {
    "writers": "--writers",
    "records": "--records",
    "duration_s": "--duration",
    "batch_size": "--batch-size",
    "concurrency": "--concurrency",
    "record_bytes": "--record-bytes",
    "warmup_s": "--warmup",
    "seed": "--seed",
    "rate": "--rate",
    "parallel": "--parallel",
    "repeat": "--repeat",
    "streams": "--streams",
    "clients": "--clients",
    "executor": "--executor",
    "visibility": "--no-visibility",
    "visibility_poll_ms": "--poll-interval",
    "visibility_sample_ms": "--sample-every",
    "workload": "--workload",
    "drivers": "--drivers",
    "pad_column": "--pad-column",
}
_UNIT = {
    "duration_s": "seconds",
    "warmup_s": "seconds",
    "visibility_poll_ms": "milliseconds",
    "visibility_sample_ms": "milliseconds",
}


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The run's BenchmarkConfig; pydantic's ValidationError when a value is out of range."""
    values: dict[str, Any] = {
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "record_bytes": args.record_bytes,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "rate": args.rate,
        "parallel": args.parallel,
        "repeat": args.repeat,
        "streams": args.streams,
        "clients": args.clients,
        "executor": args.executor,
        "visibility": not args.no_visibility,
        "visibility_poll_ms": round(args.poll_interval * 1000),
        "visibility_sample_ms": round(args.sample_every * 1000),
    }
    if args.writers is not None:
        values["writers"] = args.writers
    if args.workload is not None:
        values["workload"] = args.workload
    if args.drivers is not None:
        values["drivers"] = args.drivers
    if args.pad_column is not None:
        values["pad_column"] = args.pad_column
    if args.duration is not None:
        values["duration_s"] = args.duration
    elif args.records is not None:
        values["records"] = args.records
    return BenchmarkConfig(**values)


def validation_message(exc: ValidationError) -> str:
    """One line per invalid field, named as the command line names it."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = _OPTION.get(field, field or "arguments")
        message = str(error["msg"]).removeprefix("Value error, ")
        unit = _UNIT.get(field)
        lines.append(f"{where}: {message}" + (f" ({unit})" if unit else ""))
    return "; ".join(lines)


# -- number formatting -----------------------------------------------------------------------


def fmt_pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} %"


# -- tables --------------------------------------------------------------------------------


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None
) -> str:
    """Plain text columns; `align` has one letter per column, "l" or "r" (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(w) if a == "l" else cell.rjust(w)
            for cell, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


Metric = Callable[[WriterResult], float | None]
BEST = "*"


class Unsupported(float):
    """A percentile the sample is too small for: never printed, marked, or ranked."""


def _pct(summary: LatencySummary | None, name: str) -> float | None:
    if summary is None:
        return None
    value = float(getattr(summary, name.replace(".", "_")))
    return value if summary.supports(name) else Unsupported(value)


def _fmt_or_unsupported(fmt: Callable[[float | None], str]) -> Callable[[float | None], str]:
    def out(value: float | None) -> str:
        return UNSUPPORTED if isinstance(value, Unsupported) else fmt(value)

    return out


def _rate_pct(w: WriterResult) -> float | None:
    return w.rate_ratio * 100 if w.rate_ratio is not None else None


# (row label, value, format, which is better: "high", "low" or None for no mark)
_RESULT_ROWS: tuple[tuple[str, Metric, Callable[[float | None], str], str | None], ...] = (
    ("rows", lambda w: w.rows, fmt_int, None),
    ("elapsed s", lambda w: w.elapsed_s, fmt_seconds, None),
    ("rows/s", lambda w: w.rows_per_s, fmt_int, "high"),
    ("MiB/s", lambda w: w.mib_per_s, fmt_mib, "high"),
    ("batches", lambda w: w.batches, fmt_int, None),
    ("p50 ms", lambda w: _pct(w.latency_ms, "p50"), fmt_ms, "low"),
    ("p95 ms", lambda w: _pct(w.latency_ms, "p95"), fmt_ms, "low"),
    ("p99 ms", lambda w: _pct(w.latency_ms, "p99"), fmt_ms, "low"),
    ("p99.9 ms", lambda w: _pct(w.latency_ms, "p99.9"), fmt_ms, "low"),
    ("max ms", lambda w: w.latency_ms.max if w.latency_ms else None, fmt_ms, "low"),
    ("errors", lambda w: w.failed_batches, fmt_int, "low"),
    (
        "visibility p95 ms",
        lambda w: w.visibility.p95_ms if w.visibility else None,
        fmt_ms,
        "low",
    ),
    ("client CPU s/M rows", lambda w: w.client_cpu_s_per_million_rows, fmt_mib, "low"),
    ("wire bytes/row", lambda w: w.wire_bytes_per_row, fmt_int, None),
    (
        "quota rows/s (proj.)",
        lambda w: w.quota_projection.rows_per_s if w.quota_projection else None,
        fmt_int,
        None,
    ),
)
_FIXED_RATE_ROWS: tuple[tuple[str, Metric, Callable[[float | None], str], str | None], ...] = (
    (
        "corrected p99 ms",
        lambda w: _pct(w.latency_from_intended_ms, "p99"),
        fmt_ms,
        "low",
    ),
    (
        "send-delay p99 ms",
        lambda w: _pct(w.send_delay_ms, "p99"),
        fmt_ms,
        "low",
    ),
    ("rate achieved", _rate_pct, fmt_pct, "high"),
)


def _best(values: list[float | None], better: str | None, eligible: list[bool]) -> set[int]:
    """Columns holding the best value; none unless at least two eligible columns have one."""
    candidates = [(i, v) for i, v in enumerate(values) if v is not None and eligible[i]]
    if better is None or len(candidates) < 2:
        return set()
    if len({v for _, v in candidates}) == 1:
        return set()  # all equal: nothing to point out
    pick = max if better == "high" else min
    target = pick(v for _, v in candidates)
    return {i for i, v in candidates if v == target}


def results_table(run: RunResult) -> str:
    """The side-by-side table: one column per writer, the best of each row marked."""
    writers = run.writers
    header = ["", *(w.writer for w in writers)]
    # The null writer stores nothing: it is the harness ceiling, never "the best writer".
    eligible = [w.stores_rows and w.status in ("completed", "cancelled") for w in writers]
    rows: list[list[str]] = [["status", *(f"{w.status}  " for w in writers)]]
    specs = _RESULT_ROWS + (_FIXED_RATE_ROWS if run.config.rate is not None else ())
    marked = False
    for label, metric, fmt, better in specs:
        values = [metric(w) if w.status != "unavailable" else None for w in writers]
        rankable = [None if isinstance(v, Unsupported) else v for v in values]
        best = _best(rankable, better, eligible)
        marked = marked or bool(best)
        show = _fmt_or_unsupported(fmt)
        cells = [show(v) + (f" {BEST}" if i in best else "  ") for i, v in enumerate(values)]
        rows.append([label, *cells])
    lines = [
        f"run {run.id}: {status_text(run)}",
        f"mode: {run.mode}. {mode_notice(run.environment)}",
        f"workload: {config_text(run.config)}",
        "",
        render_table(header, rows),
    ]
    if marked:
        lines.append(f"{BEST} best of the writers that store rows")
    lines += intervals_table(run)
    if any(w.latency_ms and w.latency_ms.unsupported for w in writers):
        lines.append(
            f"{UNSUPPORTED}: too few batches for this percentile; pXX needs at least "
            "10/(1-p) measured batches (p50 20, p95 200, p99 1,000, p99.9 10,000)"
        )
    if any(not w.stores_rows for w in writers):
        baseline = ", ".join(w.writer for w in writers if not w.stores_rows)
        lines.append(f"{baseline}: discards rows; the harness ceiling, not a target")
    problems = [f"{w.label}: {w.status}: {w.error}" for w in writers if w.error]
    problems += run.warnings
    if problems:
        lines += ["", "warnings:", *(f"  - {text}" for text in problems)]
    return "\n".join(lines)


_INTERVAL_ROWS = (
    ("rows_per_s", "rows/s", fmt_int),
    ("mib_per_s", "MiB/s", fmt_mib),
    ("p50_ms", "p50 ms", fmt_ms),
    ("p95_ms", "p95 ms", fmt_ms),
    ("p99_ms", "p99 ms", fmt_ms),
)


def intervals_table(run: RunResult) -> list[str]:
    """Each writer's medians with their 95 % intervals ("n/a" and a footnote without one)."""
    writers = [w for w in run.writers if w.intervals]
    if not writers:
        return []
    reasons: list[str] = []
    rows = []
    for metric, name, fmt in _INTERVAL_ROWS:
        cells = []
        for w in writers:
            found = w.intervals.get(metric)
            if found is None:
                cells.append(MISSING)
            elif found.low is None or found.high is None:
                cells.append(f"{fmt(found.median)} [{UNSUPPORTED}]")
                if found.reason and found.reason not in reasons:
                    reasons.append(found.reason)
            else:
                cells.append(f"{fmt(found.median)} [{fmt(found.low)}, {fmt(found.high)}]")
        rows.append([name, *cells])
    repeats = run.config.repeat
    title = (
        f"medians over {repeats} repeats [95 % interval]"
        if repeats > 1
        else "95 % intervals [low, high] from a bootstrap within this run (the noise between "
        "runs is not in them: --repeat 3 or more measures it)"
    )
    out = ["", title, render_table(["", *(w.writer for w in writers)], rows)]
    out += [f"{UNSUPPORTED}: {reason}" for reason in reasons]
    return out


def _date(iso: str) -> str:
    return iso[:19].replace("T", " ")


def history_table(entries: Sequence[dict[str, Any]]) -> str:
    """Stored runs, newest first, as `ResultStore.history()` lists them."""
    if not entries:
        return "no stored runs"
    rows = []
    for e in entries:
        status = e["status"] + (" (partial)" if e["partial"] and e["status"] != "cancelled" else "")
        writers = ", ".join(f"{w['writer']} {fmt_int(w['rows_per_s'])}" for w in e["writers"])
        rows.append(
            [
                e["id"],
                _date(e["started_at"]),
                e.get("mode") or "unknown",
                status,
                writers,
                _workload_summary(e),
                e.get("label") or "",
            ]
        )
    header = ["id", "started (UTC)", "mode", "status", "writers (rows/s)", "workload", "label"]
    lines = [render_table(header, rows, align="lllllll")]
    if any(e.get("mode") == "local" for e in entries):
        lines += ["", f"local: {LOCAL_NOTICE}"]
    return "\n".join(lines)


def _workload_summary(entry: dict[str, Any]) -> str:
    w = entry["workload"]
    amount = f"{w['duration_s']:g} s" if w.get("duration_s") else f"{fmt_int(w['records'])} rows"
    pace = f"{w['rate']:,} rows/s" if w.get("rate") else "max rate"
    name = w.get("name") or "products"  # results from before workloads were products
    return f"{name}: {amount}, batch {w['batch_size']:,}, conc {w['concurrency']}, {pace}"


_METRIC_NAMES = {
    "rows_per_s": ("rows/s", fmt_int),
    "mib_per_s": ("MiB/s", fmt_mib),
    "p50_ms": ("p50 ms", fmt_ms),
    "p95_ms": ("p95 ms", fmt_ms),
    "p99_ms": ("p99 ms", fmt_ms),
    "p99.9_ms": ("p99.9 ms", fmt_ms),
    "max_ms": ("max ms", fmt_ms),
    "visibility_p95_ms": ("visibility p95 ms", fmt_ms),
    "failed_batches": ("failed batches", fmt_int),
}


def _mark(diff: MetricDiff) -> str:
    return {"a better": "A better", "b better": "B better"}.get(diff.decision, diff.decision)


def _change(diff: MetricDiff) -> str:
    return MISSING if diff.change is None else f"{diff.change * 100:+.1f} %"


def _with_interval(
    fmt: Callable[[float | None], str], value: float | None, bounds: tuple[float, float] | None
) -> str:
    text = fmt(value)
    return f"{text} [{fmt(bounds[0])}, {fmt(bounds[1])}]" if bounds is not None else text


def compare_table(a: RunResult, b: RunResult, diffs: Sequence[MetricDiff]) -> str:
    """Per writer, per metric: A and B (with their 95 % intervals), the change, the decision
    and why; the notes first, the writers only one run has last."""
    lines = [
        f"A: {a.id}  {_date(a.started_at)}  {a.status}  ({config_text(a.config)})",
        f"B: {b.id}  {_date(b.started_at)}  {b.status}  ({config_text(b.config)})",
    ]
    lines += [f"note: {note}" for note in compare_notes(a, b)]
    writers = list(dict.fromkeys(d.writer for d in diffs))
    for writer in writers:
        rows = []
        for d in diffs:
            if d.writer != writer:
                continue
            name, fmt = _METRIC_NAMES.get(d.metric, (d.metric, fmt_ms))
            rows.append(
                [
                    name,
                    _with_interval(fmt, d.a, d.a_interval),
                    _with_interval(fmt, d.b, d.b_interval),
                    _change(d),
                    _mark(d),
                    d.reason or "",
                ]
            )
        lines += ["", writer]
        lines.append(render_table(["metric", "A", "B", "change", "", "why"], rows, align="lrrrll"))
    for side, run, other in (("A", a, b), ("B", b, a)):
        missing = only_in(run, other)
        if missing:
            names = ", ".join(f"{w['label']} ({w['status']})" for w in missing)
            lines += ["", f"only in {side}, not compared: {names}"]
    lines += [
        "",
        "decision rule (bench.store.compare): a change counts when the 95 % intervals of the "
        f"two medians do not overlap and it is at least {NOISE_FLOOR * 100:g} %; [low, high] is "
        "that interval (over repeats, or a bootstrap within a single run)",
    ]
    return "\n".join(lines)


# -- progress ------------------------------------------------------------------------------

BAR_WIDTH = 20


def progress_line(writer: dict[str, Any], duration_s: float | None) -> str:
    """One writer's bar and live numbers, from one entry of `BenchmarkRun.progress()`.
    Most telling first: a narrow terminal cuts the end of the line."""
    status, phase = writer["status"], writer["phase"]
    fraction = 1.0 if status == "completed" else _fraction(writer, duration_s)
    filled = round(fraction * BAR_WIDTH)
    bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
    target = writer.get("target_rows")
    rows = f"{writer['rows']:,}" + (f"/{target:,}" if target else "") + " rows"
    if phase == "done" and writer["elapsed_s"] > 0:
        speed = f"{writer['rows'] / writer['elapsed_s']:,.0f} rows/s avg"
    else:
        speed = f"{writer['rows_per_s_last_second']:,} rows/s"
    p50, p99 = fmt_ms(writer.get("p50_ms")), fmt_ms(writer.get("p99_ms"))
    parts = [
        f"{writer['writer']:<9} {bar} {fraction * 100:3.0f}%",
        f"{phase if status == 'running' else status:<11}",
        rows,
        speed,
        f"p50/p99 {p50}/{p99} ms",
        f"{writer['failed_batches']} failed",
        f"{writer['elapsed_s']:.1f} s",
    ]
    return "  ".join(parts)


def _fraction(writer: dict[str, Any], duration_s: float | None) -> float:
    if duration_s:
        done = writer["elapsed_s"] / duration_s
    elif writer.get("target_rows"):
        done = writer["rows"] / writer["target_rows"]
    else:
        done = 0.0
    return min(1.0, max(0.0, done))


class ProgressDisplay:
    """Bars on a stream: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool, duration_s: float | None) -> None:
        self.stream = stream
        self.tty = tty
        self.duration_s = duration_s
        self._drawn = 0
        self._lines: list[str] = []

    def update(self, progress: dict[str, Any]) -> None:
        self._lines = [progress_line(w, self.duration_s) for w in progress["writers"]]
        repeats = progress.get("repeats", 1)
        if repeats > 1:
            self._lines.insert(0, f"repeat {progress['repeat'] + 1} of {repeats}")
        self._draw()

    def note(self, message: str) -> None:
        """A message above the bars (on a terminal the bars are drawn again below it)."""
        if self.tty:
            self.stream.write(self._up() + "\x1b[2K" + message + "\n")
            self._drawn = 0
            self._draw()
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def _up(self) -> str:
        return f"\x1b[{self._drawn}F" if self._drawn else ""

    def _draw(self) -> None:
        if not self._lines:
            return
        if self.tty:
            width = _columns(self.stream) - 1  # no wrap: a wrapped line breaks the redraw
            body = "".join(f"\x1b[2K{line[:width]}\n" for line in self._lines)
            self.stream.write(self._up() + body)
            self._drawn = len(self._lines)
        else:
            self.stream.write("".join(line + "\n" for line in self._lines))
        self.stream.flush()


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size().columns


# -- run -----------------------------------------------------------------------------------


ABORT_GRACE_S = 5.0


class _Interrupts:
    """Ctrl-C. First: cancel the run gracefully (batches in flight finish, results are kept).
    Second: abort (cancel the task, save nothing); if that has not ended the command within
    ABORT_GRACE_S, or on a third Ctrl-C, stop the local stack and exit at once."""

    def __init__(self, display: ProgressDisplay, task: asyncio.Task[Any]) -> None:
        self.display = display
        self.task = task
        self.count = 0
        self.aborting = False
        self.cancel_run: Callable[[], None] | None = None
        self.stop_stack: Callable[[], object] | None = None

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1 and self.cancel_run is not None:
            self.cancel_run()  # act before writing: stderr may be gone
            self.display.note("cancelling: finishing batches in flight (Ctrl-C again to abort)")
        elif not self.aborting:
            self.aborting = True
            self.task.cancel()
            asyncio.get_running_loop().call_later(ABORT_GRACE_S, self.exit_now)
            self.display.note("aborting (Ctrl-C again to exit at once)")
        else:
            self.exit_now()

    def exit_now(self) -> None:
        try:
            if self.stop_stack is not None:
                self.stop_stack()
        finally:
            _say("aborted; nothing saved")
            os._exit(EXIT_CANCELLED)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def schema_source(args: argparse.Namespace) -> Workload | None:
    """A workload from --schema / --schema-file (and --rows-from), checked before any
    target starts; None when the run names a built-in (or --table alone)."""
    from workloads.registry import workload_from_ddl

    text = args.schema
    if args.schema_file is not None:
        try:
            text = args.schema_file.read_text()
        except OSError as exc:
            raise InvalidSchemaError(f"--schema-file {args.schema_file}: {exc.strerror}") from None
    if text is None:
        if args.rows_from is not None and args.table is None:
            raise InvalidSchemaError(
                "--rows-from needs the rows' schema: --schema, --schema-file or --table"
            )
        return None
    return workload_from_ddl(
        args.workload,
        text,
        table=args.table,
        id_column=args.id_column,
        rows_from=args.rows_from,
    )


async def resolve_workload(
    args: argparse.Namespace, runtime: Any, early: Workload | None
) -> Workload | None:
    """The run's workload, registered with the runtime: from a schema given, or read from
    --table's catalog entry; None for a built-in."""
    from workloads.registry import workload_from_schema

    workload = early
    if workload is None and args.table is not None:
        schema = await runtime.table_schema(args.table)
        workload = workload_from_schema(
            args.workload,
            schema,
            table=args.table,
            id_column=args.id_column,
            rows_from=args.rows_from,
        )
    if workload is None:
        return None
    if args.scratch:
        scratch = f"{workload.table.delta_table}_dwbench_scratch"
        leaf = scratch.split(".")[-1]
        workload = dataclasses.replace(
            workload, table=workload.table.with_tables(scratch, f"public.{leaf}")
        )
    runtime.workloads.add(workload, replace=True)
    return workload


async def with_runtime(
    settings: Settings,
    display: ProgressDisplay,
    body: Callable[[Runtime, _Interrupts], Awaitable[T]],
) -> T | None:
    """Start the targets, run `body` on them, stop them; None when Ctrl-C aborted.

    The first Ctrl-C cancels what `body` handed to `interrupts.cancel_run` (the run keeps
    what it measured); before that, or a second time, it aborts."""
    from dwbench.runtime import Runtime

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupts = _Interrupts(display, task)
    loop.add_signal_handler(signal.SIGINT, interrupts)
    runtime = Runtime(settings)
    interrupts.stop_stack = lambda: runtime.stack.stop(timeout_s=5) if runtime.stack else None
    try:
        if settings.is_local and not settings.local_stack_url:
            _say(await asyncio.to_thread(_stack_plan, settings.data_dir / "local-stack"))
        elif settings.is_local:
            _say(f"using the local stack at {settings.local_stack_url}")
        await runtime.start()  # a Ctrl-C meanwhile aborts: cancel_run is not set yet
        return await body(runtime, interrupts)
    except asyncio.CancelledError:
        if interrupts.aborting:
            task.uncancel()
            return None
        raise
    finally:
        try:
            await asyncio.wait_for(runtime.stop(), timeout=30)
        except (TimeoutError, asyncio.CancelledError):
            _say("the targets did not stop in time")
        finally:
            loop.remove_signal_handler(signal.SIGINT)


async def _run_benchmark(
    config: BenchmarkConfig,
    settings: Settings,
    display: ProgressDisplay,
    args: argparse.Namespace | None = None,
    early: Workload | None = None,
) -> RunResult | None:
    """Start the targets, run the benchmark, stop the targets; None when aborted."""
    from bench.environment import capture_environment
    from bench.runner import BenchmarkRun

    async def body(runtime: Runtime, interrupts: _Interrupts) -> RunResult:
        nonlocal config
        custom = await resolve_workload(args, runtime, early) if args is not None else None
        if custom is not None:
            config = config.model_copy(update={"workload": custom.name})
        workload = runtime.workloads.get(config.workload)
        if custom is not None and early is None:  # read from --table: not checked before
            from bench.workload import memory_check

            budget = settings.benchmark_memory_budget_mib
            await asyncio.to_thread(memory_check, [config], workload, budget)
        await runtime.ensure_tables(workload)
        run = BenchmarkRun(
            config,
            environment=capture_environment(runtime.targets),
            workloads=runtime.workloads,
        )
        interrupts.cancel_run = run.cancel
        _say(
            f"run {run.id}: {', '.join(config.writers)}; {config_text(config)} "
            f"({len(workload.schema.columns)} columns into {workload.table.delta_table})"
        )
        _say(f"mode: {runtime.targets.mode}. {mode_notice(run.environment)}")
        if runtime.targets.mode == "databricks":
            from dwbench.auth import auth_line

            _say(auth_line(runtime.targets.workspace_auth, runtime.targets.auth_problem))
        _say("Ctrl-C cancels the run and keeps what was measured")
        # The local stack runs in its own session, so the terminal's Ctrl-C reaches only us.
        if config.executor in ELSEWHERE:
            # Each client in a worker process (or a Spark task) of its own, merged here.
            from bench.executors import clients_run
            from bench.worker_process import make_job

            clients = clients_run(run, runtime.targets)
            interrupts.cancel_run = clients.cancel
            job = await asyncio.to_thread(make_job, run, runtime.targets)
            display.update(clients.progress())
            return await clients.execute(job, display.update)
        display.update(run.progress())  # the bars from the start, then once a second
        return await run.execute(runtime.writers, display.update)

    return await with_runtime(settings, display, body)


def _stack_plan(where: Path) -> str:
    """What the run is about to do for its local stack: share a running one, or start one."""
    from emulator.process import LocalStackStartError, find_running_stack

    try:
        running = find_running_stack(where, wait_s=0)
    except LocalStackStartError:
        running = None  # starting, or unreadable: the runtime's start says which
    if running is not None:
        return (
            f"using the local stack that process {running.pid} runs in {where} (the app's, when "
            "`make run` is up); it keeps running after this run"
        )
    return f"starting the local stack in {where} (this takes a few seconds)"


def _exit_code(run: RunResult) -> int:
    if run.status == "cancelled":
        return EXIT_CANCELLED
    if run.status != "completed":
        return EXIT_FAILED
    if any(w.status != "completed" or w.failed_batches for w in run.writers):
        return EXIT_FAILED
    return EXIT_OK


def _save(run: RunResult, out: Path | None, results_dir: Path) -> list[Path]:
    paths = []
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(run.to_json())
        csv_path = out.with_suffix(".csv")
        csv_path.write_text(to_csv(run))
        paths += [out, csv_path]
    store = ResultStore(results_dir)
    paths += [store.save(run), store.path(run.id, ".csv")]
    return paths


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        parser.error(validation_message(exc))
    try:
        early = schema_source(args)
        if early is None and args.table is None:
            WorkloadRegistry().get(config.workload)  # a typo is exit 2, before anything starts
    except DirectWriteError as exc:
        parser.error(exc.message)
    settings = _settings(parser, profile=args.profile)
    if args.profile and settings.is_local:
        parser.error("--profile runs against a workspace, but APP_MODE is local")
    if not settings.is_local and settings.databricks_config_profile:
        from dwbench.auth import check_profile

        try:
            check_profile(settings)  # a typo is exit 2, before anything starts
        except DirectWriteError as exc:
            parser.error(exc.message)
    # Before the budget check: it imports the writers, and the Zerobus SDK reads RUST_LOG
    # once, when it is imported.
    _configure_logging(args.log_level)
    if early is not None or args.table is None:
        try:  # before anything starts; a workload read from --table is checked once read
            budget_check(config, early or WorkloadRegistry().get(config.workload), settings)
        except ResourceLimitError as exc:
            parser.error(exc.message)
    results_dir = args.results_dir or settings.data_dir / "results"
    display = ProgressDisplay(sys.stderr, tty=sys.stderr.isatty(), duration_s=config.duration_s)
    try:
        run = asyncio.run(_run_benchmark(config, settings, display, args, early))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("aborted; nothing saved")
        return EXIT_CANCELLED
    except (InvalidSchemaError, ResourceLimitError) as exc:
        _say(f"dwbench run: {exc.message}")
        return EXIT_USAGE
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        _say(f"dwbench run: cannot reach the targets: {message}")
        return EXIT_FAILED
    if run is None:
        _say("aborted; nothing saved")
        return EXIT_CANCELLED
    print(results_table(run))
    print()
    try:
        paths = _save(run, args.out, results_dir)
    except OSError as exc:
        _say(f"dwbench run: the result could not be saved: {exc}")
        return EXIT_FAILED
    for path in paths:
        print(f"saved {path}")
    return _exit_code(run)


def budget_check(
    config: BenchmarkConfig | Sequence[BenchmarkConfig], workload: Workload, settings: Settings
) -> None:
    """ResourceLimitError when the run (or a sweep's points) would pass the memory budget."""
    from bench.workload import memory_check

    configs = [config] if isinstance(config, BenchmarkConfig) else list(config)
    memory_check(configs, workload, settings.benchmark_memory_budget_mib)


def _configure_logging(level: str) -> None:
    from dwbench.log import configure_logging

    configure_logging(level)
    # The Zerobus SDK logs from Rust straight to stderr, at info unless told otherwise.
    os.environ.setdefault("RUST_LOG", _RUST_LEVEL[level])


def _settings(parser: argparse.ArgumentParser, profile: str | None = None) -> Settings:
    from dwbench.settings import Settings

    try:
        # --profile is DATABRICKS_CONFIG_PROFILE given on the command line (and wins over it).
        given: dict[str, Any] = {"databricks_config_profile": profile} if profile else {}
        return Settings(**given)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(f"invalid settings in the environment: {fields}")


# -- other commands ------------------------------------------------------------------------


def _store(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ResultStore:
    directory = args.results_dir or _settings(parser).data_dir / "results"
    return ResultStore(directory)


def cmd_history(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    entries = _store(args, parser).history()
    print(json.dumps(entries, indent=2) if args.json else history_table(entries))
    return EXIT_OK


def _load(ref: str, store: ResultStore, parser: argparse.ArgumentParser) -> RunResult:
    path = Path(ref)
    try:
        if path.is_file():
            return load_result(path)
        return store.load(ref)
    except KeyError:
        parser.error(f"no run {ref!r} in {store.directory}, and no such file")
    except (ValidationError, ValueError) as exc:
        parser.error(f"{ref} is not a result file: {str(exc).splitlines()[0]}")


def cmd_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    store = _store(args, parser)
    a, b = _load(args.a, store, parser), _load(args.b, store, parser)
    if args.json:
        print(json.dumps({**compare_json(a, b), "noise_floor": NOISE_FLOOR}, indent=2))
    else:
        print(compare_table(a, b, compare(a, b)))
    return EXIT_OK


def cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bench.report import render_html, render_markdown

    run = _load(args.run, _store(args, parser), parser)
    if args.html is None and args.md is None:
        print(render_markdown(run), end="")
        return EXIT_OK
    for path, render in ((args.html, render_html), (args.md, render_markdown)):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(run))
        except OSError as exc:
            _say(f"dwbench report: {path} could not be written: {exc}")
            return EXIT_FAILED
        print(f"saved {path}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(json.dumps(RunResult.model_json_schema(by_alias=True), indent=2))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import uvicorn

    uvicorn.run("main:app", host=args.host, port=args.port)
    return EXIT_OK


def cmd_local_stack(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from emulator.__main__ import main as emulator_main

    return emulator_main(args.stack_args)


# -- parser --------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
_RUST_LEVEL = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwbench",
        description="Direct Write Bench: compare Zerobus, SQL warehouse and Lakebase writes.",
        epilog="exit codes: 0 ok, 1 a writer failed or was unavailable, 2 bad arguments, "
        "130 cancelled",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=sorted(_RUST_LEVEL), help="default: %(default)s"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the web app (uvicorn main:app)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=cmd_serve, command_parser=serve)

    stack = commands.add_parser(
        "local-stack",
        help="run the local stack in the foreground (python -m emulator)",
        add_help=False,
        description="Options are those of `python -m emulator` (see dwbench local-stack -h).",
    )
    stack.set_defaults(handler=cmd_local_stack, command_parser=stack)

    run = commands.add_parser(
        "run",
        help="run a benchmark and print the writers side by side",
        epilog="durations: 500ms, 30s, 2m, 1h or seconds. exit codes: 0 every writer "
        "completed without failed batches, 1 a writer failed, was unavailable or had failed "
        "batches, 2 bad arguments, 130 cancelled (Ctrl-C; partial results are saved)",
    )
    run.add_argument(
        "--writers",
        type=parse_writers,
        metavar="W1,W2",
        help=f"comma-separated: {', '.join(WRITERS)} (default: zerobus,sql,lakebase)",
    )
    amount = run.add_mutually_exclusive_group()
    amount.add_argument("--records", type=int, help="rows per writer, instead of a duration")
    amount.add_argument(
        "--duration",
        type=parse_duration,
        metavar="TIME",
        help=f"time measured per writer (default: {DEFAULT_DURATION_S:g}s, after the warm-up)",
    )
    run.add_argument("--batch-size", type=int, default=1000, help="default: %(default)s")
    run.add_argument("--concurrency", type=int, default=4, help="batches in flight (per stream)")
    run.add_argument(
        "--streams",
        type=int,
        default=1,
        metavar="N",
        help="independent streams per writer in each client (SDK streams, producers, "
        "connections, request lanes), batches spread round-robin",
    )
    run.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="M",
        help="client processes, each with its own writers; --records and --rate are totals",
    )
    run.add_argument(
        "--executor",
        choices=["inline", "processes", "spark", "databricks-job"],
        help="where clients run: inline (this process, one client), processes (one worker "
        "process per client; the default for --clients above 1), spark (one Spark task per "
        "client, local[clients]; needs pyspark and Java) or databricks-job (one Spark task per "
        "client on a job cluster of the workspace: databricks mode, DWBENCH_JOB_* settings)",
    )
    run.add_argument(
        "--rate",
        type=int,
        metavar="ROWS_PER_S",
        help="target rows/s (open loop); default: max rate",
    )
    run.add_argument(
        "--warmup",
        type=parse_duration,
        default=DEFAULT_WARMUP_S,
        metavar="TIME",
        help=f"written first, not measured (default: {DEFAULT_WARMUP_S:g}s)",
    )
    run.add_argument(
        "--record-bytes",
        type=int,
        default=1024,
        help="approximate row size, padded on one string column (0: none; default: %(default)s)",
    )
    source = run.add_argument_group("workload (default: products)")
    source.add_argument(
        "--workload",
        metavar="NAME",
        help="products, telemetry, or the name to give a schema from the options below",
    )
    source.add_argument(
        "--table",
        metavar="CATALOG.SCHEMA.TABLE",
        help="write into this table; without --schema its schema is read from Unity Catalog "
        "(the local stack's catalog in local mode)",
    )
    source.add_argument("--scratch", action="store_true", help="write into a copy of --table")
    source.add_argument(
        "--schema", metavar="DDL", help="CREATE TABLE ... or a column list 'id BIGINT, ...'"
    )
    source.add_argument(
        "--schema-file", type=Path, metavar="FILE", help="a CREATE TABLE DDL or a JSON column list"
    )
    source.add_argument(
        "--rows-from",
        type=Path,
        metavar="FILE",
        help="replay these sample rows (JSON lines, CSV or Parquet), checked against the schema",
    )
    source.add_argument(
        "--id-column", metavar="COLUMN", help="a column given a fresh unique id per row"
    )
    source.add_argument("--drivers", type=int, help="telemetry: drivers in the fleet (500)")
    source.add_argument(
        "--pad-column", metavar="COLUMN", help="the string column that carries the padding"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--parallel", action="store_true", help="run the writers at the same time")
    run.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run it all N times, the writers interleaved; each metric becomes a median with "
        "a 95 %% interval (3 or more for intervals)",
    )
    run.add_argument(
        "--no-visibility", action="store_true", help="skip ack -> readable measurement"
    )
    run.add_argument(
        "--poll-interval",
        type=parse_duration,
        default=0.05,
        metavar="TIME",
        help="visibility polling interval (default: 50ms)",
    )
    run.add_argument(
        "--sample-every",
        type=parse_duration,
        default=1.0,
        metavar="TIME",
        help="start a visibility sample at most this often (default: 1s); each poll is a "
        "query on the target, a load of its own",
    )
    run.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the result here (JSON, and .csv)"
    )
    run.add_argument("--results-dir", type=Path, metavar="DIR", help="default: $DATA_DIR/results")
    run.add_argument(
        "--profile",
        metavar="NAME",
        help="Databricks mode with this profile of ~/.databrickscfg (or DATABRICKS_CONFIG_FILE), "
        "as DATABRICKS_CONFIG_PROFILE does",
    )
    run.set_defaults(handler=cmd_run, command_parser=run)

    history = commands.add_parser("history", help="list stored runs")
    history.add_argument(
        "--results-dir", type=Path, metavar="DIR", help="default: $DATA_DIR/results"
    )
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=cmd_history, command_parser=history)

    comp = commands.add_parser("compare", help="compare two runs metric by metric")
    comp.add_argument("a", help="run id in the results dir, or a result file")
    comp.add_argument("b", help="run id in the results dir, or a result file")
    comp.add_argument("--results-dir", type=Path, metavar="DIR", help="default: $DATA_DIR/results")
    comp.add_argument("--json", action="store_true")
    comp.set_defaults(handler=cmd_compare, command_parser=comp)

    report = commands.add_parser(
        "report",
        help="a run as a report to share: Markdown (printed), or files with --html/--md",
    )
    report.add_argument("run", help="run id in the results dir, or a result file")
    report.add_argument(
        "--html", type=Path, metavar="FILE", help="write one self-contained HTML page here"
    )
    report.add_argument("--md", type=Path, metavar="FILE", help="write the Markdown summary here")
    report.add_argument(
        "--results-dir", type=Path, metavar="DIR", help="default: $DATA_DIR/results"
    )
    report.set_defaults(handler=cmd_report, command_parser=report)

    schema = commands.add_parser("schema", help="print the JSON schema of result files")
    schema.set_defaults(handler=cmd_schema, command_parser=schema)

    from dwbench.cli_sweep import add_sweep_parser  # it imports this module's helpers

    add_sweep_parser(commands)
    from dwbench.cli_pipeline import add_pipeline_parser  # it imports this module's helpers

    add_pipeline_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # `local-stack` hands every option after it to the local stack's own parser.
        args, rest = parser.parse_known_args(argv)
        if args.command == "local-stack":
            args.stack_args = rest
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        handler: Command = args.handler
        return handler(args, args.command_parser)
    except SystemExit as exc:  # argparse: --help, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BrokenPipeError:  # `dwbench history | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
