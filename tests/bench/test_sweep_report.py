"""The HTML sweep report: self-contained, escaped, the best point and the knee marked."""

from __future__ import annotations

import re

from bench.sweep import PointWriter, SweepConfig, SweepPoint, SweepResult, analyse
from bench.sweep_report import render_sweep_html

LABEL = 'Null <script>alert("x")</script>'


def point(b: int, c: int, rows: float, p99: float | None, status: str = "completed") -> SweepPoint:
    w = PointWriter(
        writer="null",
        label=LABEL,
        status=status,  # type: ignore[arg-type]
        rows=1000,
        batches=5000,
        rows_per_s=rows,
        p99_ms=p99,
        p99_unsupported=None if p99 is not None else "needs 1,000 batches, 300 measured",
        error="target <gone>" if status != "completed" else None,
    )
    return SweepPoint(batch_size=b, concurrency=c, status="completed", writers=[w])


def sweep() -> SweepResult:
    points = [
        point(100, 1, 1000, 2.0),
        point(100, 4, 3000, 2.5),
        point(100, 16, 3100, 9.0),  # knee along concurrency: p99 x3.6, rows +3 %
        point(1000, 1, 2000, None),
        point(1000, 4, 3050, 1.5),  # best: within 2 % of 3,100 at a lower p99
        point(1000, 16, 0, None, status="failed"),
    ]
    config = SweepConfig(
        writers=["null"], batch_sizes=[100, 1000], concurrencies=[1, 4, 16], duration_s=5
    )
    return SweepResult(
        id="sweep-test",
        status="partial",
        started_at="2026-01-01T00:00:00+00:00",
        config=config,
        environment={"mode": "local"},
        points=points,
        writers=[analyse(points, "null", LABEL)],
    )


def test_the_report_marks_best_and_knee_cells_in_both_heatmaps():
    s = sweep()
    (w,) = s.writers
    assert w.best is not None and (w.best.batch_size, w.best.concurrency) == (1000, 4)
    html = render_sweep_html(s)
    for metric in ("rows_per_s", "p99_ms"):
        svg = html.split(f'data-metric="{metric}"')[1].split("</svg>")[0]
        assert re.findall(
            r'class="cell best" data-batch-size="(\d+)" data-concurrency="(\d+)"', svg
        ) == [("1000", "4")]
        assert re.findall(
            r'class="cell knee" data-batch-size="(\d+)" data-concurrency="(\d+)"', svg
        ) == [("100", "16")]
    assert (
        "knee at concurrency 16: p99 3.60x the previous point&#39;s while rows/s changed +3%"
        in html
    )
    # The unsupported p99 is shown as n/a with its reason, never as a number.
    p99_svg = html.split('data-metric="p99_ms"')[1].split("</svg>")[0]
    assert "p99 unsupported: needs 1,000 batches, 300 measured" in p99_svg
    assert "failed (target &lt;gone&gt;)" in p99_svg


def test_the_report_escapes_and_links_nothing():
    html = render_sweep_html(sweep())
    assert "<script" not in html
    assert "<h2>Null &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</h2>" in html
    assert not re.search(r"https?:|//[a-z]|src=|href=|@import|url\(", html, re.I)
    assert "Local mode:" in html
