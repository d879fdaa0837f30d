"""Reports to share: the HTML page and the Markdown summary of a run, from synthetic results."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from typing import Any

from bench.config import BenchmarkConfig
from bench.environment import LOCAL_NOTICE
from bench.report import (
    UNSUPPORTED_RULE,
    fmt_int,
    fmt_mib,
    fmt_ms,
    fmt_seconds,
    percentile_chart,
    render_html,
    render_markdown,
    report_filename,
    supported_curve,
    throughput_chart,
)
from bench.results import (
    Interval,
    LatencySummary,
    RepeatStats,
    RunResult,
    SecondStats,
    VisibilitySummary,
    WriterResult,
)
from bench.stats import Latencies, unsupported_percentiles

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class Checker(HTMLParser):
    """Well-formedness (every element closed in order) and every attribute, collected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Checker:
    checker = Checker()
    checker.feed(html)
    checker.close()
    assert not checker.problems, checker.problems
    assert checker.stack == [], f"unclosed: {checker.stack}"
    return checker


def latency(count: int, base_ms: float) -> tuple[LatencySummary, list[tuple[float, float]]]:
    lat = Latencies()
    for i in range(count):
        lat.record((base_ms + (i % 97) * 0.05) / 1000)
    values: dict[str, Any] = dict(lat.summary() or {})
    summary = LatencySummary.model_validate(
        {**values, "unsupported": unsupported_percentiles(count)}
    )
    return summary, lat.curve()


def writer(name: str, label: str, batches: int, rows_per_s: float, **extra: Any) -> WriterResult:
    summary, curve = latency(batches, 3.0 if name == "zerobus" else 12.0)
    per_second = [
        SecondStats(t=t, rows=1000 + 10 * t, rows_per_s=1000.0 + 10 * t, mib=1.0, batches=10,
                    errors=0, p50_ms=3.0, p99_ms=9.0)
        for t in range(5)
    ]  # fmt: skip
    return WriterResult(
        writer=name,
        label=label,
        stores_rows=name != "null",
        status="completed",
        rows=batches * 100,
        bytes=batches * 100 * 512,
        batches=batches,
        failed_batches=2 if name == "sql" else 0,
        elapsed_s=4.321,
        rows_per_s=rows_per_s,
        mib_per_s=rows_per_s * 512 / 2**20,
        latency_ms=summary,
        visibility=VisibilitySummary(samples=5, timeouts=0, poll_interval_ms=50,
                                     p50_ms=40.0, p95_ms=123.456, max_ms=200.0),
        per_second=per_second,
        percentile_curve=curve,
        **extra,
    )  # fmt: skip


def run_result(**extra: Any) -> RunResult:
    return RunResult(
        id="20261201-120000-abc123",
        status="completed",
        started_at="2026-12-01T12:00:00+00:00",
        finished_at="2026-12-01T12:00:30+00:00",
        config=BenchmarkConfig(writers=["zerobus", "sql", "null"], duration_s=5, batch_size=100),
        environment={
            "mode": "local",
            "cpu": "Test CPU 9000",
            "cpu_count": 2,
            "memory_bytes": 8 * 2**30,
            "os": "Linux-test",
            "python": "3.11.9",
            "libraries": {"grpcio": "1.85.1", "deltalake": "1.6.6"},
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "host_load": {"loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [1.2, 0.6, 0.4],
                          "cpu_count": 2, "steal_percent": 0.25},
            "writers": {"zerobus": {"color": "#ff0000"}},
        },
        writers=[
            writer("zerobus", "Zerobus (proto)", 2500, 123456.789),
            writer("sql", "SQL warehouse", 150, 2345.6),
            writer("null", "Null (baseline)", 12000, 999999.4),
        ],
        warnings=["host busy after the run: 1-minute load average 1.20 on 2 cores"],
        **extra,
    )  # fmt: skip


def cells(html: str) -> dict[str, dict[str, str]]:
    """The results table as text: writer -> column -> cell text."""
    body = html.split('<table id="results">', 1)[1].split("</table>", 1)[0]
    out: dict[str, dict[str, str]] = {}
    for row in re.findall(r'<tr data-writer="([^"]+)">(.*?)</tr>', body, re.S):
        name, inner = row
        out[name] = {
            col: " ".join(re.sub(r"<[^>]+>", " ", text).split())
            for col, text in re.findall(r'<td data-col="([^"]+)"[^>]*>(.*?)</td>', inner, re.S)
        }
    return out


# -- HTML --------------------------------------------------------------------------------


def test_html_is_well_formed_and_loads_nothing() -> None:
    html = render_html(run_result())
    checker = parse(html)
    assert html.startswith("<!DOCTYPE html>")
    for tag, name, value in checker.attrs:
        assert "://" not in value and not value.startswith("//"), (tag, name, value)
        if name in ("src", "href", "xlink:href", "action", "srcset"):
            raise AssertionError(f"<{tag} {name}={value!r}>: the report must not load anything")
    assert not {"script", "link", "img", "iframe", "object"} & set(checker.tags)
    assert "http://" not in html and "https://" not in html and "url(" not in html
    assert html.count("<svg") == 2 and "<style>" in html


def test_databricks_mode_names_the_workspace_as_text_never_as_a_link() -> None:
    run = run_result()
    run.environment["mode"] = "databricks"
    run.environment["endpoints"] = {"workspace": "https://example.cloud.databricks.com",
                                    "warehouse_id": "abc123", "postgres": "local"}  # fmt: skip
    html = render_html(run)
    checker = parse(html)
    assert not [(t, k, v) for t, k, v in checker.attrs if "://" in v]
    assert 'data-mode="databricks"' in html and "<a " not in html
    text = " ".join(" ".join(checker.text).split())
    assert (
        "Mode: databricks. Databricks mode: workspace https://example.cloud.databricks.com, "
        "SQL warehouse abc123 (warehouse and Lakebase sizes not recorded)." in text
    )
    assert "- mode: **databricks**. Databricks mode: workspace https://example.cloud" in (
        render_markdown(run)
    )


def test_html_numbers_are_the_result_files() -> None:
    run = run_result()
    reread = RunResult.model_validate_json(run.to_json())  # as the result file has them
    table = cells(render_html(reread))
    assert list(table) == ["zerobus", "sql", "null"]
    for w in reread.writers:
        row = table[w.writer]
        assert row["label"] == w.label
        assert row["status"] == "completed"
        assert row["rows"] == fmt_int(w.rows)
        assert row["batches"] == fmt_int(w.batches)
        assert row["elapsed_s"] == fmt_seconds(w.elapsed_s) == "4.32"
        assert row["rows_per_s"] == fmt_int(w.rows_per_s)
        assert row["mib_per_s"] == fmt_mib(w.mib_per_s)
        assert row["max"] == fmt_ms(w.latency_ms.max)
        assert row["visibility_p95"] == "123"
        assert row["failed_batches"] == str(w.failed_batches)
    assert table["zerobus"]["rows_per_s"] == "123,457"
    assert table["zerobus"]["p50"] == fmt_ms(reread.writers[0].latency_ms.p50)
    assert table["zerobus"]["p95"] == fmt_ms(reread.writers[0].latency_ms.p95)
    assert table["null"]["p99"] == fmt_ms(reread.writers[2].latency_ms.p99)
    assert table["null"]["p99.9"] == fmt_ms(reread.writers[2].latency_ms.p99_9)


def test_html_shows_unsupported_percentiles_as_na_with_the_reason() -> None:
    table = cells(render_html(run_result()))
    # 2,500 batches support up to p99; 150 up to p90 (p95 would need 200).
    assert table["zerobus"]["p99.9"] == "n/a needs 10,000 batches, 2,500 measured"
    assert table["zerobus"]["p99"] != "n/a" and not table["zerobus"]["p99"].startswith("n/a")
    assert table["sql"]["p95"] == "n/a needs 200 batches, 150 measured"
    assert table["sql"]["p99"] == "n/a needs 1,000 batches, 150 measured"
    assert table["sql"]["p50"] == fmt_ms(run_result().writers[1].latency_ms.p50)
    assert UNSUPPORTED_RULE in render_html(run_result())


def test_html_carries_mode_environment_config_and_warnings() -> None:
    html = render_html(run_result())
    text = " ".join(" ".join(parse(html).text).split())
    assert "Mode: local." in text and " ".join(LOCAL_NOTICE.split()) in text
    assert "Test CPU 9000, 2 cores" in text
    assert (
        "host load load average before 0.5 0.4 0.3, load average after 1.2 0.6 0.4, "
        "CPU steal 0.25 %" in text
    )
    assert "0123456789abcdef0123456789abcdef01234567" in text
    assert "grpcio 1.85.1" in text
    assert "products, 5 s per writer, batch 100, concurrency 4, 1,024 B/row, max rate" in text
    assert "host busy after the run: 1-minute load average 1.20 on 2 cores" in text
    assert "Null (baseline): discards rows" in text
    assert 'stroke="#ff0000"' in html  # the writer's own colour from the environment


def test_html_escapes_user_data() -> None:
    run = run_result(label='<script>alert("x")</script> & co')
    run.writers[0].label = "<img src=x onerror=alert(1)>"
    run.writers[1].error = "</td><script>bad()</script>"
    run.writers[1].status = "failed"
    html = render_html(run)
    checker = parse(html)
    assert "script" not in checker.tags and "img" not in checker.tags
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<script>alert("x")</script> & co' in "".join(checker.text)
    assert "SQL warehouse: failed: </td><script>bad()</script>" in "".join(checker.text)


def test_repeats_and_intervals_are_shown_when_present() -> None:
    run = run_result()
    z = run.writers[0]
    z.repeats = [
        RepeatStats(repeat=0, status="completed", rows=5000, batches=50, elapsed_s=2.5,
                    rows_per_s=2000.0, mib_per_s=1.5, p50_ms=3.25, p95_ms=7.5, p99_ms=None),
        RepeatStats(repeat=1, status="completed", rows=5200, batches=52, elapsed_s=2.5,
                    rows_per_s=2080.0, mib_per_s=1.6, p50_ms=3.125, p95_ms=8.0),
    ]  # fmt: skip
    z.intervals = {
        "rows_per_s": Interval(median=2040.0, low=1990.4, high=2100.6, n=2, method="repeats"),
        "p99_ms": Interval(median=9.5, n=2, method="repeats", reason="too few batches"),
    }
    html = render_html(run)
    parse(html)
    text = " ".join(" ".join(parse(html).text).split())
    assert "Median [95 % interval]" in text
    # Only the metrics some writer has an interval for, in their fixed order.
    assert "writer n (method) rows/s p99 ms Zerobus (proto) 2 (repeats) 2,040 [1,990, 2,101] " \
        "9.50 (no interval: too few batches)" in text  # fmt: skip
    assert "2,040 [1,990, 2,101]" in text
    assert "9.50 (no interval: too few batches)" in text
    assert "Zerobus (proto) 0 completed 5,000 50 0 2.50 2,000 1.50 3.25 7.50 - -" in text
    assert "Zerobus (proto) 1 completed 5,200 52 0 2.50 2,080 1.60 3.12 8.00 - -" in text
    md = render_markdown(run)
    assert "| Zerobus (proto) | 2 (repeats) | 2,040 \\[1,990, 2,101\\] |" in md
    assert "9.50 (no interval: too few batches) |" in md
    # Without repeats or intervals, neither section is there.
    plain = render_html(run_result())
    assert "Median [95 % interval]" not in plain and "Repeats" not in plain
    assert "interval" not in render_markdown(run_result())


def test_percentile_curve_stops_at_the_supported_range() -> None:
    run = run_result()
    z = run.writers[0]  # 2,500 batches: 1/(1-p) up to 250, p99.6
    kept = supported_curve(z.latency_ms, z.percentile_curve)
    assert kept and max(p for p, _ in kept) <= 99.6
    assert max(p for p, _ in z.percentile_curve) == 100.0  # the curve itself goes to the max
    chart = percentile_chart(run)
    assert [s.name for s in chart.series] == ["Zerobus (proto)", "SQL warehouse", "Null (baseline)"]
    assert [t.label for t in chart.x_ticks] == ["p0", "p50", "p90", "p99", "p99.9"]
    assert chart.series[2].dashed and not chart.series[0].dashed
    # Latencies of 3 to 17 ms on a log axis: decades from 1 to 100 ms.
    assert [t.label for t in chart.y_ticks] == ["1", "10", "100"]
    assert chart.y_label == "ms (log scale)"
    # The last point drawn for zerobus is its highest supported percentile's value.
    last_x = math.log10(1 / (1 - kept[-1][0] / 100))
    assert last_x <= math.log10(250) + 1e-9


def test_a_writer_with_too_few_batches_gets_no_curve_and_a_note() -> None:
    run = run_result()
    few, curve = latency(15, 5.0)
    run.writers[1].latency_ms, run.writers[1].percentile_curve = few, curve
    chart = percentile_chart(run)
    assert [s.name for s in chart.series] == ["Zerobus (proto)", "Null (baseline)"]
    assert chart.note == "too few batches for a curve: SQL warehouse"


# -- Markdown ----------------------------------------------------------------------------


def test_markdown_summary() -> None:
    run = RunResult.model_validate_json(run_result(label="baseline | main").to_json())
    md = render_markdown(run)
    lines = md.splitlines()
    assert lines[0] == "### Direct Write Bench run `20261201-120000-abc123`"
    assert lines[1] == "**baseline \\| main**"
    assert f"- mode: **local**. {LOCAL_NOTICE}" in lines
    assert (
        "- config: products, 5 s per writer, batch 100, concurrency 4, 1,024 B/row, max rate, "
        "warm-up 5 s" in lines
    )
    header = next(i for i, line in enumerate(lines) if line.startswith("| writer |"))
    assert lines[header] == (
        "| writer | status | rows | batches | seconds | rows/s | MiB/s | p50 ms | p95 ms | "
        "p99 ms | p99.9 ms | max ms | visibility p95 ms | failed batches | "
        "client CPU s/M rows | wire bytes/row | quota ceiling rows/s (projection) |"
    )
    assert lines[header + 1] == "|---|---|" + "---:|" * 15
    z, s, _ = run.writers
    assert lines[header + 2] == (
        f"| Zerobus (proto) | completed | 250,000 | 2,500 | 4.32 | 123,457 | "
        f"{fmt_mib(z.mib_per_s)} | {fmt_ms(z.latency_ms.p50)} | {fmt_ms(z.latency_ms.p95)} | "
        f"{fmt_ms(z.latency_ms.p99)} | n/a | {fmt_ms(z.latency_ms.max)} | 123 | 0 | - | - | - |"
    )
    assert lines[header + 3] == (
        f"| SQL warehouse | completed | 15,000 | 150 | 4.32 | 2,346 | {fmt_mib(s.mib_per_s)} | "
        f"{fmt_ms(s.latency_ms.p50)} | n/a | n/a | n/a | {fmt_ms(s.latency_ms.max)} | 123 | 2 | "
        "- | - | - |"
    )
    assert (
        "- SQL warehouse: p95 needs 200 batches, 150 measured; p99 needs 1,000 batches, 150 "
        "measured; p99.9 needs 10,000 batches, 150 measured" in lines
    )
    assert "- host busy after the run: 1-minute load average 1.20 on 2 cores" in lines
    assert "<" not in md.replace("\\<", "")


def test_markdown_escapes_what_would_break_the_table() -> None:
    run = run_result()
    run.writers[0].label = "a|b <b>x</b>\nnext"
    md = render_markdown(run)
    assert "| a\\|b \\<b\\>x\\</b\\> next | completed |" in md


def test_report_filename_is_safe() -> None:
    assert report_filename("20261201-abc", ".html") == "dwbench-20261201-abc-report.html"
    assert report_filename('a"b\r\n/c', ".md") == "dwbench-a_b___c-report.md"


def test_a_last_second_of_a_few_milliseconds_is_left_out_of_the_chart_with_a_note() -> None:
    run = run_result()
    run.writers[0].per_second.append(
        SecondStats(t=5, span_s=0.0002, rows=20, rows_per_s=100_000.0, mib=0.01, batches=2,
                    errors=0, p50_ms=3.0, p99_ms=3.0)
    )  # fmt: skip
    chart = throughput_chart(run)
    assert chart.note == (
        "not drawn: 1 last bucket(s) covering less than half their width, whose rate over a "
        "sliver of time says little"
    )
    assert len(chart.series[0].points.split()) == 5
    assert chart.y_ticks[-1].label == "2,000"  # the scale is the drawn seconds'


def test_a_short_windows_sub_second_buckets_are_drawn_at_their_own_times() -> None:
    run = run_result()
    w = run.writers[0]
    w.bucket_s = 0.1
    w.per_second = [
        SecondStats(t=0, at_s=round(i * 0.1, 6), span_s=0.1, rows=100, rows_per_s=1000.0,
                    mib=0.1, batches=1, errors=0, p50_ms=3.0, p99_ms=3.0)
        for i in range(8)
    ]  # fmt: skip
    chart = throughput_chart(run)
    assert chart.note is None
    assert len(chart.series[0].points.split()) == 8  # none taken for a short last second


def test_a_fixed_rate_runs_curve_is_from_the_scheduled_start() -> None:
    run = run_result()
    assert percentile_chart(run).title == "Latency by percentile (send to acknowledgement)"
    for w in run.writers:
        w.latency_from_intended_ms = w.latency_ms
    assert percentile_chart(run).title == (
        "Latency by percentile (from each batch's scheduled start)"
    )
