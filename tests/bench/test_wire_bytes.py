"""Wire bytes per row (from the bytes a writer's interface carried over the whole run) and
the published-quota projection derived from them."""

from __future__ import annotations

from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.quotas import QuotaProjection, project
from bench.runner import BenchmarkRun
from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from tests.bench.fake_writers import ClockedWriter, FixedSource, StepClock
from workloads.base import TableRef
from writers.base import WIRE_PAYLOAD, Targets, WireReading

TARGETS = Targets(mode="databricks", settings=Settings(app_mode="local"))


class Metered(ClockedWriter):
    """A clocked writer whose interface carries `per_row` bytes per row sent, plus a fixed
    cost per batch; the byte counter is read through the real `wire_bytes` contract."""

    def __init__(self, name: str, clock: StepClock, interface: str | None, per_row: int) -> None:
        super().__init__(TARGETS, clock, step_s=0.125)
        self.name = self.label = name
        self.wire_interface = interface  # type: ignore[misc]
        self.counts_payload = True  # type: ignore[misc]
        self.per_row = per_row

    async def write(self, rows: Any) -> Any:
        self.count_payload(rows.table.delta_table, self.per_row * len(rows) + 24)
        return await super().write(rows)


class Unmetered(Metered):
    async def wire_bytes(self, table: TableRef) -> WireReading | None:
        raise WriterUnavailableError("the local stack does not answer at http://x: refused")


def config(**fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 1, "visibility": False, **fields})
    return base.model_copy(update={"writers": ["proto", "sql"]})


async def test_bytes_per_row_cover_every_batch_sent_and_project_the_stream_quota():
    clock = StepClock()
    proto = Metered("proto", clock, "zerobus-grpc-proto", per_row=1_976)
    sql = Metered("sql", clock, None, per_row=700)
    run = BenchmarkRun(config(duration_s=4, batch_size=100, concurrency=1), clock=clock)
    result = await run.execute(FixedSource(proto, sql))
    w_proto, w_sql = result.writers
    # 8 batches/s over 1 s of warm-up and 4 measured: 40 batches of 100 rows were sent,
    # and the warm-up's bytes are counted with its rows.
    assert w_proto.warmup_rows == 800 and w_proto.rows == 3_200
    assert w_proto.wire_bytes_per_row == round(40 * (1_976 * 100 + 24) / 4_000, 1) == 1_976.2
    assert w_proto.wire_bytes_source == WIRE_PAYLOAD
    assert w_proto.quota_projection == QuotaProjection(
        per="stream",
        rows_per_s=50_601.1,
        limited_by="100 MB/s per stream",
        bytes_per_row=1_976.2,
        measured_share=round(800 / (100e6 / 1_976.24), 4),
        units_to_fill_table=100,
        interface="zerobus-grpc-proto",
        batch_rows=100,
    )
    assert w_sql.wire_bytes_per_row == 700.2 and w_sql.quota_projection is None


async def test_repeats_merge_bytes_and_rows_before_dividing():
    clock = StepClock()
    proto = Metered("proto", clock, "zerobus-grpc-proto", per_row=500)
    sql = Metered("sql", clock, None, per_row=100)
    run = BenchmarkRun(config(duration_s=2, batch_size=10, concurrency=1, repeat=3), clock=clock)
    w_proto = (await run.execute(FixedSource(proto, sql))).writers[0]
    assert w_proto.wire_bytes_per_row == 502.4  # (500 * 10 + 24) / 10
    assert w_proto.quota_projection is not None
    assert w_proto.quota_projection.limited_by == "100,000 records/s per stream"


async def test_a_counter_that_cannot_be_read_leaves_the_figure_out_and_says_why():
    clock = StepClock()
    proto = Unmetered("proto", clock, "zerobus-grpc-proto", per_row=500)
    sql = Metered("sql", clock, None, per_row=100)
    result = await BenchmarkRun(config(duration_s=2, batch_size=10), clock=clock).execute(
        FixedSource(proto, sql)
    )
    w_proto = result.writers[0]
    assert w_proto.status == "completed"
    assert w_proto.wire_bytes_per_row is None and w_proto.quota_projection is None
    assert (
        "wire bytes not measured: the local stack does not answer at http://x: refused"
        in w_proto.warnings
    )


@pytest.mark.parametrize(
    ("interface", "bytes_per_row", "batch", "rows_per_s", "ceiling", "limit", "fill"),
    [
        # 1,000 bytes: both stream quotas meet; records/s is named.
        (
            "zerobus-arrow-flight",
            1_000,
            1_000,
            50_000,
            100_000.0,
            "100,000 records/s per stream",
            100,
        ),
        ("zerobus-kafka", 4_000, 1_000, 0, 25_000.0, "100 MB/s per stream", 100),
        ("zerobus-mqtt", 100, 1, 0, 100_000.0, "100,000 records/s per stream", 1_000),
        (
            "zerobus-rest",
            1_000,
            100,
            0,
            1_000_000.0,
            "10,000 requests/s at 100 rows per request",
            10,
        ),
        # 10,000 requests of 10,000 rows of 1 kB would be 100 GB/s: the table's 10 GB/s binds.
        ("zerobus-rest", 1_000, 10_000, 0, 10_000_000.0, "10 GB/s per table", 1),
    ],
)
def test_projection_names_the_binding_quota(
    interface, bytes_per_row, batch, rows_per_s, ceiling, limit, fill
):
    p = project(interface, bytes_per_row, batch, rows_per_s)
    assert p is not None
    assert (p.rows_per_s, p.limited_by, p.units_to_fill_table) == (ceiling, limit, fill)
    assert p.measured_share == (round(rows_per_s / ceiling, 4) if rows_per_s else None)
    assert "projection" in p.note and "not a measurement" in p.note


def test_no_projection_without_a_zerobus_interface_or_a_byte_count():
    assert project(None, 1_000, 100, 10) is None
    assert project("postgres", 1_000, 100, 10) is None
    assert project("zerobus-grpc-proto", None, 100, 10) is None
    assert project("zerobus-grpc-proto", 0, 100, 10) is None
