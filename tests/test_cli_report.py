"""`dwbench report` and the label in `dwbench history`, on stored synthetic results."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import render_html, render_markdown
from bench.results import RunResult
from bench.store import ResultStore
from dwbench.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tests.bench.test_report import parse, run_result


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, RunResult]:
    results = tmp_path / "results"
    run = run_result(label="nightly <main>")
    ResultStore(results).save(run)
    return results, run


def test_without_files_the_markdown_goes_to_stdout(stored, capsys):
    results, run = stored
    assert main(["report", run.id, "--results-dir", str(results)]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out == render_markdown(run) and out.err == ""
    assert "| Zerobus (proto) | completed | 250,000 | 2,500 | 4.32 | 123,457 |" in out.out


def test_html_and_md_files_are_written(stored, tmp_path, capsys):
    results, run = stored
    html, md = tmp_path / "out" / "report.html", tmp_path / "out" / "nested" / "report.md"
    argv = ["report", run.id, "--html", str(html), "--md", str(md), "--results-dir", str(results)]
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [f"saved {html}", f"saved {md}"]
    assert html.read_text() == render_html(run) and md.read_text() == render_markdown(run)
    parse(html.read_text())
    assert "nightly &lt;main&gt;" in html.read_text()


def test_a_result_file_path_is_a_run_too(stored, tmp_path, capsys):
    results, run = stored
    html = tmp_path / "r.html"
    path = str(results / f"{run.id}.json")
    assert main(["report", path, "--html", str(html), "--results-dir", str(tmp_path)]) == EXIT_OK
    assert html.read_text() == render_html(run)


def test_unknown_run_and_bad_file_exit_2(stored, tmp_path, capsys):
    results, _ = stored
    assert main(["report", "nope", "--results-dir", str(results)]) == EXIT_USAGE
    assert f"error: no run 'nope' in {results}, and no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 1}')
    assert main(["report", str(bad), "--results-dir", str(results)]) == EXIT_USAGE
    assert f"error: {bad} is not a result file: " in capsys.readouterr().err


def test_a_file_that_cannot_be_written_exits_1(stored, tmp_path, capsys):
    results, run = stored
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "report.html"  # a directory that is a file
    argv = ["report", run.id, "--html", str(target), "--results-dir", str(results)]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"dwbench report: {target} could not be written: ")


def test_history_shows_the_label(stored, capsys):
    results, run = stored
    store = ResultStore(results)
    other = run_result()
    other.id, other.started_at = "20261201-130000-zzz", "2026-12-01T13:00:00+00:00"
    store.save(other)
    assert main(["history", "--results-dir", str(results)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "label"
    assert lines[2].startswith(other.id) and not lines[2].endswith(">")
    assert lines[3].startswith(run.id) and lines[3].endswith("nightly <main>")
