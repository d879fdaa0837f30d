"""A sweep as one self-contained HTML page: per writer, heatmaps of rows/s and p99 over the
grid (inline SVG drawn here), the best point and the knees marked, and the numbers as a table.

No external URL, script or font: the page opens from a file, offline. Every text from the
result passes through the template's autoescape or `html.escape`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape as _escape
from typing import Literal

import jinja2

from bench.environment import mode_notice
from bench.sweep import (
    KNEE_P99_FACTOR,
    KNEE_ROWS_GAIN,
    NEAR_TIE,
    PointWriter,
    SweepResult,
    WriterSweep,
)
from dwbench.assets import TEMPLATES_DIR

Metric = Literal["rows_per_s", "p99_ms"]

_CELL_W, _CELL_H = 112, 46
_LEFT, _TOP = 96, 44
# Light to dark: throughput in blues (more is better), p99 in oranges (more is worse).
_RAMPS: dict[Metric, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "rows_per_s": ((231, 240, 250), (24, 84, 160)),
    "p99_ms": ((254, 240, 222), (196, 78, 20)),
}


def _mix(ramp: tuple[tuple[int, int, int], tuple[int, int, int]], t: float) -> str:
    lo, hi = ramp
    r, g, b = (round(a + (z - a) * t) for a, z in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def fmt_rows(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    if value < 1:
        return f"{value:.3f} ms"
    return f"{value:,.1f} ms" if value >= 100 else f"{value:.2f} ms"


@dataclass(frozen=True)
class _Shown:
    text: str
    value: float | None  # what the colour scale reads; None: grey
    note: str  # the tooltip


def _shown(w: PointWriter | None, metric: Metric) -> _Shown:
    if w is None:
        return _Shown("-", None, "not run")
    if w.status != "completed":
        return _Shown(w.status, None, w.error or w.status)
    if metric == "rows_per_s":
        note = f"{w.batches:,} batches"
        if w.failed_batches:
            note += f", {w.failed_batches:,} failed"
        return _Shown(fmt_rows(w.rows_per_s), w.rows_per_s, note)
    if w.p99_ms is None:
        return _Shown("n/a", None, f"p99 unsupported: {w.p99_unsupported}")
    return _Shown(fmt_ms(w.p99_ms), w.p99_ms, f"{w.batches:,} batches")


def escape(text: str) -> str:
    return _escape(text, quote=True)


def heatmap_svg(sweep: SweepResult, analysis: WriterSweep, metric: Metric) -> str:
    """Batch sizes down, concurrencies across; the best cell outlined solid, knees dashed."""
    sizes, concs = sweep.config.batch_sizes, sweep.config.concurrencies
    shown = {
        (p.batch_size, p.concurrency): _shown(
            next((w for w in p.writers if w.writer == analysis.writer), None), metric
        )
        for p in sweep.points
    }
    values = [s.value for s in shown.values() if s.value is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    best = analysis.best
    knees = {(k.knee.batch_size, k.knee.concurrency) for k in analysis.knees if k.knee}
    width = _LEFT + _CELL_W * len(concs) + 8
    height = _TOP + _CELL_H * len(sizes) + 8
    what = "rows/s" if metric == "rows_per_s" else "p99 latency"
    parts = [
        f'<svg class="heatmap" data-metric="{metric}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(analysis.label)}: '
        f'{what} by batch size and concurrency">',
        f'<text x="{_LEFT + _CELL_W * len(concs) / 2}" y="14" class="axis">concurrency</text>',
        f'<text x="4" y="{_TOP - 8}" class="axis start">batch size</text>',
    ]
    for j, c in enumerate(concs):
        parts.append(
            f'<text x="{_LEFT + _CELL_W * j + _CELL_W / 2}" y="34" class="tick">{c}</text>'
        )
    for i, b in enumerate(sizes):
        y = _TOP + _CELL_H * i
        parts.append(
            f'<text x="{_LEFT - 8}" y="{y + _CELL_H / 2 + 4}" class="tick end">{b:,}</text>'
        )
        for j, c in enumerate(concs):
            x = _LEFT + _CELL_W * j
            cell = shown.get((b, c), _Shown("-", None, "not run"))
            t = (cell.value - lo) / (hi - lo) if cell.value is not None and hi > lo else 1.0
            fill = _mix(_RAMPS[metric], t) if cell.value is not None else "#e9ecef"
            ink = "#ffffff" if cell.value is not None and t > 0.55 else "#212529"
            is_best = best is not None and (best.batch_size, best.concurrency) == (b, c)
            is_knee = (b, c) in knees
            marks = [m for m, on in (("best", is_best), ("knee", is_knee)) if on]
            parts.append(
                f'<g class="cell{"".join(" " + m for m in marks)}" data-batch-size="{b}" '
                f'data-concurrency="{c}"><title>batch size {b:,} x concurrency {c}: '
                f"{escape(cell.text)} ({escape(cell.note)})</title>"
                f'<rect x="{x + 1}" y="{y + 1}" width="{_CELL_W - 2}" height="{_CELL_H - 2}" '
                f'fill="{fill}"/>'
                f'<text x="{x + _CELL_W / 2}" y="{y + 22}" fill="{ink}" class="value">'
                f"{escape(cell.text)}</text>"
            )
            if marks:
                parts.append(
                    f'<text x="{x + _CELL_W / 2}" y="{y + 38}" fill="{ink}" class="mark">'
                    f"{' + '.join('★ best' if m == 'best' else '▲ knee' for m in marks)}</text>"
                )
            if is_best:
                parts.append(
                    f'<rect x="{x + 2}" y="{y + 2}" width="{_CELL_W - 4}" height="{_CELL_H - 4}" '
                    'fill="none" stroke="#111111" stroke-width="3"/>'
                )
            if is_knee:
                parts.append(
                    f'<rect x="{x + 6}" y="{y + 6}" width="{_CELL_W - 12}" '
                    f'height="{_CELL_H - 12}" fill="none" stroke="#c92a2a" stroke-width="2" '
                    'stroke-dasharray="5 3"/>'
                )
            parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)  # every interpolated text above is escaped or a number


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render_sweep_html(sweep: SweepResult) -> str:
    template = _ENV.get_template("sweep.html.j2")
    writers = [
        {
            "analysis": a,
            "rows_svg": heatmap_svg(sweep, a, "rows_per_s"),
            "p99_svg": heatmap_svg(sweep, a, "p99_ms"),
            "rows": [
                (p, next((w for w in p.writers if w.writer == a.writer), None))
                for p in sweep.points
            ],
        }
        for a in sweep.writers
    ]
    return template.render(
        sweep=sweep,
        mode_notice=mode_notice(sweep.environment),
        writers=writers,
        fmt_rows=fmt_rows,
        fmt_ms=fmt_ms,
        near_tie=NEAR_TIE,
        knee_factor=KNEE_P99_FACTOR,
        knee_gain=KNEE_ROWS_GAIN,
    )
