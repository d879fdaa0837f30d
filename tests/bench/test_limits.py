"""Resource limits of a benchmark: the in-flight memory estimate and its budget, and batches
built off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest

from bench.config import BenchmarkConfig, check_memory, in_flight_memory, size_text
from bench.runner import run_benchmark
from bench.workload import BatchFactory, RowFootprint, memory_check, row_footprint
from dwbench.errors import ResourceLimitError
from dwbench.settings import Settings
from tests.bench.fake_writers import FixedSource, StallingWriter
from workloads.registry import WorkloadRegistry
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))
# The issue's config: it was accepted, blocked the event loop ~55 s and took the app past
# 6.3 GB (record_bytes 0: the rows' natural size, which the 64 MiB batch limit lets through).
OVERSIZED = {"writers": ["lakebase"], "concurrency": 256, "batch_size": 100_000, "record_bytes": 0}


def test_the_estimate_is_concurrency_x_batch_x_what_a_row_holds_per_writer_at_once():
    fp = RowFootprint(arrow=100.0, encoded=400.0)
    stores = {"lakebase": True, "sql": True, "null": False}.__getitem__
    one = BenchmarkConfig(writers=["lakebase"], concurrency=8, batch_size=1000, records=10)
    assert in_flight_memory(one, fp, stores).bytes == 8 * 1000 * 500
    # One after another: the largest writer's; the null writer holds only the Arrow batch.
    seq = one.model_copy(update={"writers": ["null", "lakebase", "sql"]})
    assert in_flight_memory(seq, fp, stores).bytes == 8 * 1000 * 500
    null = one.model_copy(update={"writers": ["null"]})
    assert in_flight_memory(null, fp, stores).bytes == 8 * 1000 * 100
    # At once: the sum over the writers.
    par = seq.model_copy(update={"parallel": True})
    estimate = in_flight_memory(par, fp, stores)
    assert estimate.bytes == 8 * 1000 * (100 + 500 + 500)
    assert estimate.batches == 24 and estimate.writers_at_once == 3
    # At a target rate, the next batch is built while `concurrency` are in flight.
    paced = one.model_copy(update={"rate": 10_000})
    assert in_flight_memory(paced, fp, stores).bytes == 8 * 1000 * 500 + 1000 * 100
    assert in_flight_memory(paced, fp, stores).batches == 9


def test_over_the_budget_is_refused_with_the_figure_the_rows_and_the_setting():
    fp = RowFootprint(arrow=176.0, encoded=740.0)
    cfg = BenchmarkConfig(**OVERSIZED, records=1_000_000)
    with pytest.raises(ResourceLimitError) as caught:
        check_memory([cfg], fp, 512, lambda _: True)
    assert caught.value.status_code == 422 and caught.value.error == "over_budget"
    assert caught.value.message == (
        "in-flight memory 21.8 GiB (256 batches of 100,000 rows x 916 B: 176 B as Arrow + "
        "740 B as the writer's encoded copy) exceeds the 512 MiB budget "
        "(BENCHMARK_MEMORY_BUDGET_MIB); lower batch_size or concurrency, or raise the budget"
    )
    # Within it: the estimate, no error.
    small = cfg.model_copy(update={"concurrency": 4, "batch_size": 1000})
    assert check_memory([small], fp, 512, lambda _: True).bytes == 4 * 1000 * 916


def test_a_sweep_is_refused_for_its_largest_point():
    fp = RowFootprint(arrow=100.0, encoded=0.0)
    base = BenchmarkConfig(writers=["null"], batch_size=1000, records=10)
    points = [base.model_copy(update={"concurrency": c}) for c in (1, 4, 64)]
    with pytest.raises(ResourceLimitError, match=r"in-flight memory 6.1 MiB \(64 batches"):
        check_memory(points, fp, 5, lambda _: False)


def test_size_text():
    assert [size_text(n) for n in (512, 2048, 512 * 2**20, 2.4 * 2**30, 150 * 2**30)] == [
        "512 B",
        "2 KiB",
        "512 MiB",
        "2.4 GiB",
        "150 GiB",
    ]


def test_the_footprint_is_measured_on_the_workload_s_rows():
    products = WorkloadRegistry().get("products")
    plain = row_footprint(BenchmarkConfig(writers=["null"], record_bytes=0), products)
    padded = row_footprint(BenchmarkConfig(writers=["null"], record_bytes=2000), products)
    # A real batch of the run's rows holds what the sample said, per row.
    cfg = BenchmarkConfig(writers=["null"], record_bytes=2000, batch_size=5000, records=5000)
    batch = BatchFactory(cfg, products, run_id="r", source="null").batch(0)
    assert batch.rows.data.nbytes / 5000 == pytest.approx(padded.arrow, rel=0.02)
    assert padded.arrow > 2000 > plain.arrow
    # The encoded copy: at least the payload, and the Python values on top.
    assert padded.encoded > padded.arrow and plain.encoded > plain.arrow


def test_the_issue_s_oversized_config_is_refused_on_the_products_rows():
    cfg = BenchmarkConfig(**OVERSIZED, records=1_000_000)
    with pytest.raises(ResourceLimitError) as caught:
        memory_check([cfg], WorkloadRegistry().get("products"), 512)
    assert caught.value.message.startswith("in-flight memory ")
    assert "(256 batches of 100,000 rows x " in caught.value.message
    assert "exceeds the 512 MiB budget (BENCHMARK_MEMORY_BUDGET_MIB)" in caught.value.message


async def test_batches_are_built_off_the_event_loop():
    """A batch's maker blocks until a task on the event loop lets it go: built on the loop,
    the run could never finish (the wait below would time out and the test fail)."""
    products = WorkloadRegistry().get("products")
    loop_thread = threading.get_ident()
    building, release = threading.Event(), threading.Event()
    built_on: list[int] = []

    def source(**options: Any) -> Any:
        make = products.source(**options)

        def blocking(k: int, n: int, batch_id: str, src: str) -> Any:
            built_on.append(threading.get_ident())
            building.set()
            if not release.wait(20):
                raise AssertionError("the event loop did not run while a batch was built")
            return make(k, n, batch_id, src)

        blocking.record_bytes = make.record_bytes  # type: ignore[attr-defined]
        return blocking

    blocking = dataclasses.replace(products, name="blocking", source=source)
    writer = StallingWriter(TARGETS, normal_s=0, stall_at=-1, stall_s=0)
    cfg = BenchmarkConfig(writers=["null"], workload="products", warmup_s=0, visibility=False)
    cfg = cfg.model_copy(
        update={
            "writers": ["stalling"],
            "workload": "blocking",
            "records": 40_000,
            "duration_s": None,
            "batch_size": 10_000,  # ~1 MiB of Arrow: over OFF_LOOP_BYTES
            "concurrency": 2,
        }
    )
    run = asyncio.create_task(
        run_benchmark(cfg, FixedSource(writer), workloads=WorkloadRegistry([blocking]))
    )
    ticks = 0
    while not building.is_set():  # the loop keeps turning while the first batch is built
        ticks += 1
        await asyncio.sleep(0.001)
    release.set()  # set from the event loop: only reachable if the loop is free
    result = await asyncio.wait_for(run, 60)
    (w,) = result.writers
    assert w.status == "completed" and w.rows == 40_000 and w.batches == 4
    assert sum(writer.rows.values()) == 40_000
    assert len(built_on) == 4 and loop_thread not in built_on
    assert ticks >= 1


async def test_small_batches_are_built_on_the_loop_without_a_thread_hop():
    products = WorkloadRegistry().get("products")
    cfg = BenchmarkConfig(writers=["null"], batch_size=100, record_bytes=100, records=100)
    factory = BatchFactory(cfg, products, run_id="r", source="null")
    assert not factory.off_loop
    batch = await factory.build(0)
    assert batch.count == 100 and factory._thread is None
