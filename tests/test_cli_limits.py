"""The CLI refuses a run or sweep over the memory budget: exit 2 with the figure, before any
target starts."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from dwbench.cli import main

OVERSIZED = ["--writers", "lakebase", "--concurrency", "256", "--batch-size", "100000"]
OVERSIZED += ["--record-bytes", "0", "--records", "1000000"]


@pytest.fixture(autouse=True)
def _local(monkeypatch, tmp_path) -> Iterator[None]:
    monkeypatch.setenv("APP_MODE", "local")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BENCHMARK_MEMORY_BUDGET_MIB", raising=False)
    monkeypatch.delenv("RUST_LOG", raising=False)  # the CLI sets it; gone afterwards
    # The CLI configures logging for its process (to this test's captured stderr): put
    # back what the other tests of this process log with.
    saved = dict(structlog.get_config())
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def test_run_over_the_budget_exits_2_with_the_figure(capsys, tmp_path):
    assert main(["run", *OVERSIZED]) == 2
    err = capsys.readouterr().err
    assert "dwbench run: error: in-flight memory " in err
    assert "(256 batches of 100,000 rows x " in err
    assert "exceeds the 512 MiB budget (BENCHMARK_MEMORY_BUDGET_MIB)" in err
    assert not (tmp_path / "local-stack").exists()  # refused before the stack started


def test_the_budget_is_a_setting(capsys, monkeypatch):
    monkeypatch.setenv("BENCHMARK_MEMORY_BUDGET_MIB", "1")
    small = ["--writers", "null", "--concurrency", "8", "--batch-size", "1000", "--records", "10"]
    assert main(["run", *small]) == 2
    assert "exceeds the 1 MiB budget (BENCHMARK_MEMORY_BUDGET_MIB)" in capsys.readouterr().err


def test_sweep_over_the_budget_exits_2_naming_its_largest_point(capsys):
    args = ["--writers", "lakebase", "--concurrency", "1,256", "--batch-size", "1000,100000"]
    assert main(["sweep", *args, "--record-bytes", "0", "--records", "1000000"]) == 2
    err = capsys.readouterr().err
    assert "dwbench sweep: error: in-flight memory " in err
    assert "(256 batches of 100,000 rows x " in err
