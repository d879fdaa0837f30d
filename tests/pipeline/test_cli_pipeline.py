"""`dwbench pipeline run` on the session's local stack: the waterfall printed, the result
file written like a benchmark's (config, environment, mode, histograms)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.stats import Latencies
from dwbench.cli import main


def test_pipeline_run_prints_the_waterfall_and_writes_the_result(
    local_stack: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("APP_MODE", "local")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOCAL_STACK_URL", local_stack["api_url"])
    monkeypatch.setenv("LOCAL_STACK_TOKEN", local_stack["token"])
    out = tmp_path / "pipeline.json"
    code = main(
        ["pipeline", "run", "--drivers", "5", "--rate", "50", "--duration", "2s",
         "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "realtime path (ms from event time)" in printed
    assert "synced path (ms from event time)" in printed
    assert "synced path: interval as fast as it keeps up" in printed
    assert "ms per 1,000 events pushed (this process; the fleet's process used " in printed
    result = json.loads(out.read_text())
    assert result["kind"] == "pipeline" and result["status"] == "completed"
    assert result["config"]["drivers"] == 5 and result["config"]["rate"] == 50
    assert result["mode"] == "local" and result["environment"]["mode"] == "local"
    assert result["events_acked"] == result["events_produced"] == 100
    ack = Latencies.decode(result["histograms"]["realtime"]["ack"])
    assert ack.count == 100 == result["freshness"]["realtime"]["ack"]["count"]
    assert result["watchers"]["realtime"]["snapshots"] >= 1
    assert local_stack["token"] not in out.read_text()  # no secret in a result
