"""`dwbench sweep` as a user runs it, on the session's local stack (see tests/test_cli.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.results import RunResult
from bench.sweep import SweepResult
from tests.test_cli import base_env, dwbench, stack_env

GRID = ("--batch-size", "100,50", "--concurrency", "1,2", "--records", "400", "--warmup", "0")


@pytest.fixture(scope="module")
def small_sweep(local_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("sweep")
    results, html = tmp / "results", tmp / "report.html"
    args = ("sweep", "--writers", "null,zerobus", *GRID, "--no-visibility")
    proc = dwbench(*args, "--results-dir", results, "--html", html, env=stack_env(local_stack))
    return proc, results, html


def test_a_small_sweep_runs_every_point_and_saves_one_result_set(small_sweep):
    proc, results, html = small_sweep
    assert proc.returncode == 0, proc.stderr
    (path,) = (results / "sweeps").glob("*.json")
    assert f"saved {path}" in proc.stdout and f"saved {html}" in proc.stdout
    sweep = SweepResult.model_validate_json(path.read_text())
    assert (sweep.kind, sweep.status, sweep.mode) == ("sweep", "completed", "local")
    assert [(p.batch_size, p.concurrency) for p in sweep.points] == [
        (50, 1),
        (50, 2),
        (100, 1),
        (100, 2),
    ]
    for point in sweep.points:
        assert point.status == "completed"
        assert [w.writer for w in point.writers] == ["null", "zerobus"]
        for w in point.writers:
            assert (w.status, w.rows, w.failed_batches) == ("completed", 400, 0)
            assert w.batches == 400 // point.batch_size
            # 8 or 4 batches support no p99: it is not given as a number.
            assert w.p99_ms is None
            assert w.p99_unsupported == f"needs 1,000 batches, {w.batches} measured"
        # Each point's full run beside the sweep, labelled with its place in the grid.
        run = RunResult.model_validate_json(
            (path.parent / sweep.id / f"{point.run_id}.json").read_text()
        )
        assert run.config.batch_size == point.batch_size
        assert run.label == (
            f"sweep {sweep.id}: batch size {point.batch_size} x concurrency {point.concurrency}"
        )
    assert {w.writer for w in sweep.writers} == {"null", "zerobus"}
    for w in sweep.writers:
        assert w.best is not None
        assert w.best_note == "highest rows/s; no p99 to weigh (fewer than 1,000 batches per point)"
        assert all(k.knee is None and k.not_judged == k.steps == 1 for k in w.knees)
    # The single-run history does not list the sweep's points.
    assert not list(results.glob("*.json"))


def test_the_sweep_prints_a_grid_per_writer_with_the_best_marked(small_sweep):
    proc, results, _ = small_sweep
    sweep = SweepResult.model_validate_json(next((results / "sweeps").glob("*.json")).read_text())
    out = proc.stdout
    assert "Zerobus" in out and "(zerobus): rows/s (p99 ms)" in out
    assert "point 1/4: batch size 50 x concurrency 1" in proc.stderr
    assert "point 4/4: batch size 100 x concurrency 2" in proc.stderr
    for w in sweep.writers:
        assert w.best is not None
        block = out.split(f"({w.writer}): rows/s (p99 ms)")[1].split("\n\n")[0]
        lines = block.splitlines()
        assert lines[1].split() == ["batch", "size", "conc", "1", "conc", "2"]
        row = next(line for line in lines[3:5] if line.startswith(f"{w.best.batch_size:<10}"))
        cells = re.split(r"\s{2,}", row.strip())
        column = 1 + sweep.config.concurrencies.index(w.best.concurrency)
        assert cells[column].startswith("*") and cells[column].endswith("(n/a)")
        assert sum(line.count("*") for line in lines[3:5]) == 1
        assert f"* best: batch size {w.best.batch_size} x concurrency {w.best.concurrency}" in block
    assert "n/a: p99 not supported by the sample" in out


def test_the_html_report_is_self_contained(small_sweep):
    _, _, html = small_sweep
    text = html.read_text()
    assert "<svg" in text and 'class="cell best"' in text
    assert not re.search(r"https?:|//[a-z]|src=|href=|@import|url\(", text, re.I)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batch-size", "100,100"), "--batch-size: each batch size may appear once"),
        (
            ("--concurrency", "0"),
            "--concurrency: concurrency 0: Input should be greater than or equal to 1",
        ),
        (
            ("--batch-size", "1,2,3,4,5,6,7,8,9", "--concurrency", "1,2,3,4,5,6,7,8"),
            "arguments: the grid has 9 batch sizes x 8 concurrencies = 72 points; at most 64",
        ),
        (("--batch-size", "ten"), "invalid list 'ten': give whole numbers separated by commas"),
        (("--streams", "1,4"), "--streams: one stream count for every point (streams as a grid"),
        (("--streams", "0"), "--streams: Input should be greater than or equal to 1"),
        (("--writers", "nosuch"), "--writers: unknown writer(s) nosuch"),
    ],
)
def test_bad_grids_are_usage_errors(args, message):
    proc = dwbench("sweep", "--writers", "null", *args, env=base_env(APP_MODE="local"))
    assert proc.returncode == 2
    assert message in proc.stderr


def test_streams_apply_to_every_point_of_the_sweep():
    from dwbench.cli import build_parser
    from dwbench.cli_sweep import sweep_config_from_args

    args = build_parser().parse_args(
        ["sweep", "--writers", "null", "--streams", "3", "--batch-size", "10,100"]
    )
    config = sweep_config_from_args(args)
    assert config.streams == 3
    assert [config.point_config(b, c).streams for b, c in config.grid()] == [3] * len(config.grid())
