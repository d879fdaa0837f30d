"""A run's result as a report to share: one self-contained HTML file, or Markdown for a pull
request.

The HTML file holds everything it shows: inline CSS, and charts drawn here as inline SVG
(the per-second throughput of each writer, and its latency percentile curve on a log
1/(1-p) axis, cut where the sample stops supporting the percentiles). It links to nothing,
so it opens the same offline, attached to an e-mail or in a CI artefact. It is rendered from
`templates/report.html` with autoescaping on: labels, errors and warnings are user data.

Numbers are printed as `dwbench run` prints them (the `fmt_*` helpers below); a percentile
the sample is too small for is "n/a" with the reason, never a figure.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

from bench.config import BenchmarkConfig
from bench.environment import mode_notice
from bench.results import Interval, LatencySummary, RunResult, WriterResult
from dwbench.assets import TEMPLATES_DIR

MISSING = "-"
UNSUPPORTED = "n/a"

# -- numbers, as the CLI prints them ---------------------------------------------------------


def fmt_int(value: float | None) -> str:
    return MISSING if value is None else f"{round(value):,}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.3f}" if value < 1 else f"{value:,.2f}"


def fmt_mib(value: float | None) -> str:
    return MISSING if value is None else f"{value:,.2f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 2**30:,.1f} GiB"


# -- the side-by-side table ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    reason: str | None = None  # why a percentile is n/a


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    get: Callable[[WriterResult], Cell]


def _num(fmt: Callable[[float | None], str], get: Callable[[WriterResult], float | None]) -> Any:
    return lambda w: Cell(fmt(get(w)))


def _percentile(name: str) -> Callable[[WriterResult], Cell]:
    def get(w: WriterResult) -> Cell:
        lat = w.latency_ms
        if lat is None:
            return Cell(MISSING)
        if not lat.supports(name):
            return Cell(UNSUPPORTED, lat.unsupported[name])
        return Cell(fmt_ms(float(getattr(lat, name.replace(".", "_")))))

    return get


COLUMNS: tuple[Column, ...] = (
    Column("label", "writer", lambda w: Cell(w.label)),
    Column("status", "status", lambda w: Cell(w.status)),
    Column("rows", "rows", _num(fmt_int, lambda w: w.rows)),
    Column("batches", "batches", _num(fmt_int, lambda w: w.batches)),
    Column("elapsed_s", "seconds", _num(fmt_seconds, lambda w: w.elapsed_s)),
    Column("rows_per_s", "rows/s", _num(fmt_int, lambda w: w.rows_per_s)),
    Column("mib_per_s", "MiB/s", _num(fmt_mib, lambda w: w.mib_per_s)),
    Column("p50", "p50 ms", _percentile("p50")),
    Column("p95", "p95 ms", _percentile("p95")),
    Column("p99", "p99 ms", _percentile("p99")),
    Column("p99.9", "p99.9 ms", _percentile("p99.9")),
    Column("max", "max ms", _num(fmt_ms, lambda w: w.latency_ms.max if w.latency_ms else None)),
    Column(
        "visibility_p95",
        "visibility p95 ms",
        _num(fmt_ms, lambda w: w.visibility.p95_ms if w.visibility else None),
    ),
    Column("failed_batches", "failed batches", _num(fmt_int, lambda w: w.failed_batches)),
    Column(
        "client_cpu",
        "client CPU s/M rows",
        _num(fmt_mib, lambda w: w.client_cpu_s_per_million_rows),
    ),
    Column("wire_bytes", "wire bytes/row", _num(fmt_int, lambda w: w.wire_bytes_per_row)),
    Column(
        "quota",
        "quota ceiling rows/s (projection)",
        _num(fmt_int, lambda w: w.quota_projection.rows_per_s if w.quota_projection else None),
    ),
)


def table_rows(run: RunResult) -> list[list[Cell]]:
    return [[column.get(w) for column in COLUMNS] for w in run.writers]


# -- intervals and repeats -------------------------------------------------------------------

# (key in WriterResult.intervals, title, format), in the order they are shown.
INTERVAL_METRICS: tuple[tuple[str, str, Callable[[float | None], str]], ...] = (
    ("rows_per_s", "rows/s", fmt_int),
    ("mib_per_s", "MiB/s", fmt_mib),
    ("p50_ms", "p50 ms", fmt_ms),
    ("p95_ms", "p95 ms", fmt_ms),
    ("p99_ms", "p99 ms", fmt_ms),
    ("visibility_p95_ms", "visibility p95 ms", fmt_ms),
)


def interval_text(interval: Interval, fmt: Callable[[float | None], str]) -> str:
    """ "12,345 [11,900, 12,800]", or the median with the reason there is no interval."""
    if interval.low is None or interval.high is None:
        why = interval.reason or "no interval"
        return f"{fmt(interval.median)} (no interval: {why})"
    return f"{fmt(interval.median)} [{fmt(interval.low)}, {fmt(interval.high)}]"


def interval_rows(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """(metric titles, one row per writer with intervals: label, n and method, then each
    metric's median [low, high]); empty when no writer has any."""
    writers = [w for w in run.writers if w.intervals]
    metrics = [
        (key, title, fmt)
        for key, title, fmt in INTERVAL_METRICS
        if any(key in w.intervals for w in writers)
    ]
    metrics += [
        (key, key, fmt_ms)
        for w in writers
        for key in w.intervals
        if key not in {m[0] for m in INTERVAL_METRICS}
    ]
    metrics = list({m[0]: m for m in metrics}.values())
    rows = []
    for w in writers:
        # Metrics may rest on different numbers of repeats (a repeat without visibility).
        sizes = dict.fromkeys(f"{i.n} ({i.method})" for i in w.intervals.values())
        row = [w.label, ", ".join(sizes)]
        row += [
            interval_text(w.intervals[key], fmt) if key in w.intervals else MISSING
            for key, _, fmt in metrics
        ]
        rows.append(row)
    return [title for _, title, _ in metrics], rows


REPEAT_HEADER = (
    "writer",
    "repeat",
    "status",
    "rows",
    "batches",
    "failed batches",
    "seconds",
    "rows/s",
    "MiB/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "visibility p95 ms",
)


def repeat_rows(run: RunResult) -> list[list[str]]:
    return [
        [
            w.label,
            str(r.repeat),
            r.status,
            fmt_int(r.rows),
            fmt_int(r.batches),
            fmt_int(r.failed_batches),
            fmt_seconds(r.elapsed_s),
            fmt_int(r.rows_per_s),
            fmt_mib(r.mib_per_s),
            fmt_ms(r.p50_ms),
            fmt_ms(r.p95_ms),
            fmt_ms(r.p99_ms),
            fmt_ms(r.visibility_p95_ms),
        ]
        for w in run.writers
        for r in w.repeats
    ]


# -- text lines ------------------------------------------------------------------------------


def config_text(config: BenchmarkConfig) -> str:
    """One line for what the run was asked to do (as `dwbench run` prints it, plus repeats)."""
    amount = (
        f"{config.duration_s:g} s per writer"
        if config.duration_s is not None
        else f"{config.records:,} rows per writer"
    )
    pace = f"at {config.rate:,} rows/s" if config.rate is not None else "max rate"
    parts = [
        config.workload,
        amount,
        f"batch {config.batch_size:,}",
        f"concurrency {config.concurrency}" + (" per stream" if config.streams > 1 else ""),
        f"{config.record_bytes:,} B/row",
        pace,
    ]
    if config.streams > 1 or config.clients > 1:
        parts.append(
            f"{config.streams} stream{'s' if config.streams > 1 else ''} x "
            f"{config.clients} client{'s' if config.clients > 1 else ''} "
            f"({config.executor})"
        )
    if config.warmup_s:
        parts.append(f"warm-up {config.warmup_s:g} s")
    if config.parallel:
        parts.append("writers in parallel")
    if config.repeat > 1:
        parts.append(f"{config.repeat} repeats")
    return ", ".join(parts)


def status_text(run: RunResult) -> str:
    return run.status + (" (partial)" if run.partial and run.status != "partial" else "")


def warning_lines(run: RunResult) -> list[str]:
    """Every writer's error, then the run's warnings (which hold each writer's own, named)."""
    lines = [f"{w.label}: {w.status}: {w.error}" for w in run.writers if w.error]
    return lines + list(run.warnings)


def unsupported_notes(run: RunResult) -> list[str]:
    """One line per writer with percentiles too few batches support: which, and why."""
    out = []
    for w in run.writers:
        lat = w.latency_ms
        if lat is not None and lat.unsupported:
            reasons = "; ".join(f"{name} {why}" for name, why in lat.unsupported.items())
            out.append(f"{w.label}: {reasons}")
    return out


UNSUPPORTED_RULE = (
    f"{UNSUPPORTED}: too few batches for this percentile; pXX needs at least 10/(1-p) "
    "measured batches (p50 20, p95 200, p99 1,000, p99.9 10,000)"
)


def environment_items(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) lines for the machine, its load during the run and the git commit."""
    items: list[tuple[str, str]] = []
    cpu = env.get("cpu") or "unknown CPU"
    cores = env.get("cpu_count")
    items.append(("machine", f"{cpu}, {cores if cores is not None else '?'} cores"))
    if env.get("memory_bytes"):
        items.append(("memory", fmt_bytes(env["memory_bytes"])))
    if env.get("os"):
        items.append(("os", str(env["os"])))
    if env.get("python"):
        items.append(("python", str(env["python"])))
    load = env.get("host_load")
    if isinstance(load, dict):
        parts = []
        for when in ("before", "after"):
            avg = load.get(f"loadavg_{when}")
            if avg:
                parts.append(f"load average {when} {' '.join(str(v) for v in avg)}")
        steal = load.get("steal_percent")
        parts.append(f"CPU steal {steal} %" if steal is not None else "CPU steal not measured")
        items.append(("host load", ", ".join(parts)))
    else:
        items.append(("host load", "not recorded"))
    items.append(("git commit", str(env.get("git_commit") or "not recorded")))
    return items


def library_items(env: dict[str, Any]) -> list[tuple[str, str]]:
    libraries = env.get("libraries")
    if not isinstance(libraries, dict):
        return []
    return [(str(name), str(version or "not installed")) for name, version in libraries.items()]


# -- charts: geometry computed here, drawn as SVG by the template ----------------------------

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777")
_COLOR = re.compile(r"^#[0-9a-fA-F]{3,8}$")
WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40


@dataclass
class Series:
    name: str
    color: str
    points: str  # "x,y x,y ..." for a <polyline>
    dashed: bool = False


@dataclass
class Tick:
    at: float  # pixel position along the axis
    label: str


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    note: str | None = None  # why a writer is missing, or the chart is empty
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def _color(run: RunResult, writer: str, index: int) -> str:
    meta = (run.environment.get("writers") or {}).get(writer) or {}
    color = meta.get("color") if isinstance(meta, dict) else None
    if isinstance(color, str) and _COLOR.match(color):
        return color
    return PALETTE[index % len(PALETTE)]


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above value (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def _axis_label(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def _y_ticks(chart: Chart, top_value: float, count: int = 5) -> None:
    span = chart.bottom - chart.top
    chart.y_ticks = [
        Tick(chart.bottom - span * i / count, _axis_label(top_value * i / count))
        for i in range(count + 1)
    ]


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def throughput_chart(run: RunResult) -> Chart:
    """Rows/s of each measured second, one line per writer (and repeat)."""
    chart = Chart("Throughput per second", "second since measuring began", "rows/s")
    lines: list[tuple[int, WriterResult, list[tuple[float, float]]]] = []
    short = 0
    for index, w in enumerate(run.writers):
        by_repeat: dict[int, list[tuple[float, float]]] = {}
        width = w.bucket_s or 1.0  # whole seconds, or sub-second buckets of a short window
        for s in w.per_second:
            if s.span_s < MIN_SPAN_S * width:
                short += 1
                continue
            rate = s.rows_per_s if s.rows_per_s is not None else s.rows / s.span_s
            # Each bucket (a partial last one too) is drawn at its middle.
            start = s.at_s if s.at_s is not None else float(s.t)
            by_repeat.setdefault(s.repeat, []).append((start + min(s.span_s, width) / 2, rate))
        lines += [(index, w, pts) for pts in by_repeat.values() if pts]
    if short:
        chart.note = (
            f"not drawn: {short} last bucket(s) covering less than half their width, whose "
            "rate over a sliver of time says little"
        )
    if not lines:
        chart.note = chart.note or "no per-second figures recorded"
        return chart
    x_max = max(max(x for x, _ in pts) for _, _, pts in lines)
    x_top = max(1.0, math.ceil(x_max))
    y_top = _nice_max(max(y for _, _, pts in lines for _, y in pts))

    def sx(x: float) -> float:
        return chart.left + (chart.right - chart.left) * x / x_top

    def sy(y: float) -> float:
        return chart.bottom - (chart.bottom - chart.top) * y / y_top

    for index, w, pts in lines:
        chart.series.append(
            Series(
                w.label,
                _color(run, w.writer, index),
                _polyline([(sx(x), sy(y)) for x, y in pts]),
                dashed=not w.stores_rows,
            )
        )
    step = max(1, math.ceil(x_top / 10))
    chart.x_ticks = [Tick(sx(t), f"{t:g}") for t in range(0, int(x_top) + 1, step)]
    _y_ticks(chart, y_top)
    return chart


MIN_SPAN_S = 0.5  # a last bucket covering less than this share of its width is left out
MIN_MS = 0.001  # the latency axis starts at 1 µs at the lowest (the histograms' resolution)


def supported_curve(lat: LatencySummary | None, curve: Sequence[tuple[float, float]]) -> list:
    """The curve's points whose percentile the sample supports: 1/(1-p) at most count/10;
    none below the 20 batches p50 needs (a curve of the lowest third says nothing)."""
    if lat is None or not lat.supports("p50"):
        return []
    limit = lat.count / 10
    return [(p, ms) for p, ms in curve if p < 100 and 1 / (1 - p / 100) <= limit * (1 + 1e-9)]


_PCT_TICKS = ((0.0, "p0"), (50.0, "p50"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9"))


def percentile_chart(run: RunResult) -> Chart:
    """Latency by percentile, x = log10(1/(1-p)), cut at the highest supported percentile.

    The runner draws a fixed-rate run's curve from each batch's scheduled start (latency
    corrected for coordinated omission), a closed-loop run's from its send."""
    from_intended = any(w.latency_from_intended_ms is not None for w in run.writers)
    chart = Chart(
        "Latency by percentile ("
        + ("from each batch's scheduled start" if from_intended else "send to acknowledgement")
        + ")",
        "percentile (log 1/(1-p) scale; cut where the sample stops supporting it)",
        "ms",
    )
    lines = []
    cut = []
    for index, w in enumerate(run.writers):
        summary = w.latency_from_intended_ms or w.latency_ms
        pts = supported_curve(summary, w.percentile_curve)
        if len(pts) >= 2:
            lines.append((index, w, [(math.log10(1 / (1 - p / 100)), ms) for p, ms in pts]))
        elif summary is not None:
            cut.append(w.label)
    if cut:
        chart.note = f"too few batches for a curve: {', '.join(cut)}"
    if not lines:
        chart.note = chart.note or "no latencies recorded"
        return chart
    x_top = max(1.0, math.ceil(max(x for _, _, pts in lines for x, _ in pts)))
    # Log ms too: writers differ by decades (a baseline's 0.01 ms beside a service's 100 ms).
    values = [ms for _, _, pts in lines for _, ms in pts]
    low = math.floor(math.log10(max(min(values), MIN_MS)))
    high = max(low + 1, math.ceil(math.log10(max(max(values), MIN_MS))))

    def sx(x: float) -> float:
        return chart.left + (chart.right - chart.left) * x / x_top

    def sy(y: float) -> float:
        fraction = (math.log10(max(y, MIN_MS)) - low) / (high - low)
        return chart.bottom - (chart.bottom - chart.top) * fraction

    for index, w, pts in lines:
        chart.series.append(
            Series(
                w.label,
                _color(run, w.writer, index),
                _polyline([(sx(x), sy(y)) for x, y in pts]),
                dashed=not w.stores_rows,
            )
        )
    for p, label in _PCT_TICKS:
        x = math.log10(1 / (1 - p / 100))
        if x <= x_top + 1e-9:
            chart.x_ticks.append(Tick(sx(x), label))
    chart.y_ticks = [Tick(sy(10.0**k), _axis_label(10.0**k)) for k in range(low, high + 1)]
    chart.y_label = "ms (log scale)"
    return chart


# -- rendering -------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(run: RunResult) -> str:
    """The run as one self-contained HTML page."""
    interval_header, intervals = interval_rows(run)
    return (
        _environment()
        .get_template("report.html")
        .render(
            run=run,
            status=status_text(run),
            mode=run.mode,
            notice=mode_notice(run.environment),
            config_line=config_text(run.config),
            config=run.config.model_dump(),
            environment=environment_items(run.environment),
            libraries=library_items(run.environment),
            columns=COLUMNS,
            rows=table_rows(run),
            unsupported=unsupported_notes(run),
            unsupported_rule=UNSUPPORTED_RULE,
            baselines=[w.label for w in run.writers if not w.stores_rows],
            warnings=warning_lines(run),
            interval_header=interval_header,
            intervals=intervals,
            repeat_header=REPEAT_HEADER,
            repeats=repeat_rows(run),
            charts=[throughput_chart(run), percentile_chart(run)],
        )
    )


def _md_cell(text: str) -> str:
    """Table cell text safe in GitHub Markdown: pipes escaped, no line breaks, no HTML."""
    text = " ".join(text.split())
    for char in ("\\", "|", "<", ">", "`", "*", "_", "[", "]"):
        text = text.replace(char, "\\" + char)
    return text


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    rule = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join(rule) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def _md_line(text: str) -> str:
    return _md_cell(text)


def render_markdown(run: RunResult) -> str:
    """The run as a Markdown summary for a pull request: mode, config, the table, warnings,
    intervals."""
    title = f"### Direct Write Bench run `{run.id}`"
    lines = [title]
    if run.label:
        lines.append(f"**{_md_line(run.label)}**")
    lines += [
        "",
        f"- status: {status_text(run)}, started {_md_line(run.started_at)}",
        f"- mode: **{run.mode}**. {_md_line(mode_notice(run.environment))}",
        f"- config: {_md_line(config_text(run.config))}",
        f"- git commit: {_md_line(str(run.environment.get('git_commit') or 'not recorded'))}",
        "",
    ]
    header = [c.title for c in COLUMNS]
    rows = [
        [cell.text for cell in row] for row in table_rows(run)
    ]  # n/a reasons go below the table
    lines += _md_table(header, rows, "ll" + "r" * (len(COLUMNS) - 2))
    notes = unsupported_notes(run)
    if notes:
        lines += ["", _md_line(UNSUPPORTED_RULE), *(f"- {_md_line(n)}" for n in notes)]
    baselines = [w.label for w in run.writers if not w.stores_rows]
    if baselines:
        lines += ["", f"{_md_line(', '.join(baselines))}: discards rows; the harness ceiling"]
    interval_header, intervals = interval_rows(run)
    if intervals:
        lines += ["", "**Median [95 % interval]**", ""]
        head = ["writer", "n (method)", *interval_header]
        lines += _md_table(head, intervals, "ll" + "r" * len(interval_header))
    warnings = warning_lines(run)
    if warnings:
        lines += ["", "**Warnings**", "", *(f"- {_md_line(text)}" for text in warnings)]
    return "\n".join(lines) + "\n"


def report_filename(run_id: str, suffix: str) -> str:
    """A download's file name: the id with anything but letters, digits, - _ . replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:80] or "run"
    return f"dwbench-{safe}-report{suffix}"
