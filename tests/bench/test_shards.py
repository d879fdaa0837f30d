"""Streams and clients: the run's batches and target rate dealt out exactly, ids unique
across every client and stream, per-stream figures (on an injected clock throughout)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from pydantic import ValidationError

from bench.config import BenchmarkConfig, in_flight_memory
from bench.merge import merge_workers
from bench.results import to_csv
from bench.runner import BenchmarkRun
from bench.workload import RowFootprint
from dwbench.settings import Settings
from tests.bench.fake_writers import FixedSource, RecordingWriter, StepClock, WallClock
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


def config(**fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, "visibility": False, **fields})
    return base.model_copy(update={"writers": ["recording"]})


async def run_client(
    cfg: BenchmarkConfig,
    client: int,
    *,
    streams: int = 1,
    step_s: float = 0.001,
    suspend: bool = False,
) -> tuple[Any, list[RecordingWriter]]:
    """Client `client` of the run on its own clock, as its worker process would run it."""
    clock = StepClock()
    writers = [RecordingWriter(TARGETS, clock, [step_s], suspend=suspend) for _ in range(streams)]
    run = BenchmarkRun(
        cfg,
        run_id="shards",
        clock=clock,
        sleep=clock.sleep,
        wall_clock=WallClock(1_800_000_000.0),
        host_probe=dict,
        client=client,
    )
    result = await run.execute(FixedSource(*writers))
    return result.writers[0], writers


def batch_number(batch_id: str) -> int:
    return int(batch_id.rsplit("-", 1)[1])


async def test_the_target_rate_is_split_exactly_over_four_clients():
    cfg = config(clients=4, rate=10_000, batch_size=100, duration_s=2.0, warmup_s=0.5)
    results, sent = [], []
    for client in range(4):
        result, (writer,) = await run_client(cfg, client)
        results.append(result)
        sent.append(writer)
    # rate x duration rows measured, a quarter each, and the warm-up's 0.5 s before them.
    assert [r.rows for r in results] == [5_000] * 4
    assert [r.warmup_rows for r in results] == [1_300, 1_300, 1_200, 1_200]  # batches 0-49
    assert [r.rate_ratio for r in results] == [1.0] * 4  # each held to 2,500 rows/s
    assert all(r.target_rows_per_s == 10_000 for r in results)
    # Client c sent the run's batches c, c + 4, ...: together every batch once.
    numbers = [batch_number(b) for w in sent for b in w.batch_ids]
    assert sorted(numbers) == list(range(250))
    assert [batch_number(b) % 4 for b in sent[3].batch_ids] == [3] * len(sent[3].batch_ids)
    row_ids = [i for w in sent for i in w.row_ids]
    assert len(row_ids) == len(set(row_ids)) == 25_000
    merged = merge_workers(results)
    assert merged.rows == 20_000 and merged.target_rows_per_s == 10_000


async def test_a_records_run_deals_its_batches_and_the_short_last_one():
    cfg = config(clients=4, records=1_050, batch_size=100, concurrency=2)
    results, sent = [], []
    for client in range(4):
        result, (writer,) = await run_client(cfg, client)
        results.append(result)
        sent.append(writer)
    assert sum(r.rows for r in results) == 1_050
    assert [r.rows for r in results] == [300, 300, 250, 200]
    assert [sorted(map(batch_number, w.batch_ids)) for w in sent] == [
        [0, 4, 8],
        [1, 5, 9],
        [2, 6, 10],
        [3, 7],
    ]


async def test_streams_take_the_batches_round_robin_and_are_reported_each():
    cfg = config(streams=4, rate=1_000, batch_size=10, duration_s=1.0)
    result, writers = await run_client(cfg, 0, streams=4)
    assert result.rows == 1_000 and result.streams == 4
    for s, writer in enumerate(writers):
        assert [batch_number(b) % 4 for b in writer.batch_ids] == [s] * 25
    assert [(p.client, p.stream, p.rows, p.batches) for p in result.per_stream] == [
        (0, s, 250, 25) for s in range(4)
    ]
    assert [p.rows_per_s for p in result.per_stream] == [250.0] * 4


async def test_a_closed_loop_keeps_concurrency_in_flight_on_every_stream():
    cfg = config(streams=3, concurrency=2, records=600, batch_size=10)
    result, writers = await run_client(cfg, 0, streams=3, suspend=True)
    assert result.rows == 600
    assert [w.most_in_flight for w in writers] == [2, 2, 2]
    assert sum(len(w.batch_ids) for w in writers) == 60
    assert [p.batches for p in result.per_stream] == [len(w.batch_ids) for w in writers]
    assert sum(p.rows for p in result.per_stream) == 600


async def test_clients_and_streams_of_a_merge_keep_their_streams_apart():
    cfg = config(clients=2, streams=2, rate=1_000, batch_size=10, duration_s=1.0)
    results = [(await run_client(cfg, c, streams=2))[0] for c in range(2)]
    merged = merge_workers(results, names=["client 0", "client 1"])
    assert merged.rows == 1_000 and (merged.clients, merged.streams) == (2, 2)
    assert [(p.client, p.stream, p.rows) for p in merged.per_stream] == [
        (0, 0, 250),
        (0, 1, 250),
        (1, 0, 250),
        (1, 1, 250),
    ]


def test_memory_counts_every_stream_of_every_client():
    footprint = RowFootprint(arrow=100.0, encoded=300.0)
    one = in_flight_memory(config(batch_size=1_000), footprint, lambda _: True)
    many = in_flight_memory(config(batch_size=1_000, streams=4, clients=2), footprint, bool)
    assert many.bytes == 8 * one.bytes == 8 * 4 * 1_000 * 400
    assert many.batches == 8 * 4


def test_the_executor_follows_the_clients_and_refuses_what_cannot_run():
    assert BenchmarkConfig(writers=["null"]).executor == "inline"
    assert BenchmarkConfig(writers=["null"], clients=3).executor == "processes"
    with pytest.raises(ValidationError) as exc:
        BenchmarkConfig(writers=["null"], clients=2, executor="inline")
    assert (
        "2 clients need an executor that runs them apart: executor processes or spark (the "
        "inline executor runs one client)" in str(exc.value)
    )
    with pytest.raises(ValidationError) as exc:
        BenchmarkConfig(writers=["null"], clients=2, repeat=3)
    assert "repeat with more than one client is not supported yet" in str(exc.value)


async def test_the_csv_says_streams_clients_and_rows_per_stream():
    clock = StepClock()
    writers = [RecordingWriter(TARGETS, clock, [0.001]) for _ in range(4)]
    cfg = config(streams=4, clients=2, rate=2_000, batch_size=10, duration_s=1.0)
    run = BenchmarkRun(cfg, clock=clock, sleep=clock.sleep, host_probe=dict, client=1)
    result = await run.execute(FixedSource(*writers))
    (row,) = csv.DictReader(io.StringIO(to_csv(result)))
    assert (row["streams"], row["clients"]) == ("4", "2")
    assert float(row["rows_per_s_per_stream"]) == round(result.writers[0].rows_per_s / 8, 1)
    assert result.writers[0].rows == 1_000  # client 1's half of 2,000 rows/s for 1 s
