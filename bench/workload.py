"""Deterministic batches of product rows for a benchmark.

Rows come from a pool of sample products fixed by the seed, with the description padded
so that a row is about `record_bytes` as protobuf. Padding is random letters (from the
seed), not one repeated character, so columnar storage cannot compress it away and flatter
the writers that store it. Record and batch ids are unique per run, writer and batch.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import string
from dataclasses import dataclass

from bench.config import BenchmarkConfig
from workloads.products import ProductRecord, build_records, sample_items, to_proto

POOL_SIZE = 1000


@dataclass(frozen=True)
class Batch:
    batch_id: str
    records: list[ProductRecord]
    rows: int
    bytes: int


class BatchFactory:
    def __init__(self, config: BenchmarkConfig, *, run_id: str, source: str) -> None:
        self.batch_size = config.batch_size
        self.prefix = f"{run_id}-{source}"
        self.source = source
        items = sample_items(min(config.batch_size, POOL_SIZE), seed=config.seed)
        probe = build_records(items[:1], batch_id=f"{self.prefix}-0000000", source=source)[0]
        base = len(to_proto(probe._replace(record_id=probe.record_id + "-00000")))
        pad = max(0, config.record_bytes - base - 3)  # 3: the description's tag and length
        rng = random.Random(config.seed)
        letters = string.ascii_letters + string.digits + " "
        # One random buffer; each pooled row takes its padding at its own offset. Cost grows
        # with the row size plus the pool, not with their product.
        noise = "".join(rng.choices(letters, k=pad + len(items))) if pad else ""
        self.record_bytes = base + (pad + 3 if pad else 0)
        self._templates = [
            (
                (
                    item.product_id,
                    item.product_name,
                    float(item.product_price),
                    item.category,
                    item.sale_start_date,
                    item.sale_stop_date,
                ),
                noise[i : i + pad] if pad else None,
            )
            for i, item in enumerate(items)
        ]
        self.measured_rows = config.records
        self.measured_batches = (
            math.ceil(config.records / config.batch_size) if config.records is not None else 0
        )
        self._last_rows = (
            config.records - (self.measured_batches - 1) * config.batch_size
            if config.records is not None
            else config.batch_size
        )

    def batch(self, k: int, *, last: bool = False) -> Batch:
        rows = self._last_rows if last else self.batch_size
        batch_id = f"{self.prefix}-{k:07d}"
        now = dt.datetime.now(dt.UTC)
        tail = (now, batch_id, self.source)
        templates = self._templates
        if rows > len(templates):
            templates = (templates * math.ceil(rows / len(templates)))[:rows]
        # tuple.__new__ skips NamedTuple's Python-level __new__: this loop is the harness's
        # main cost, and the harness must never be what limits a writer.
        new = tuple.__new__
        records = [
            new(ProductRecord, (f"{batch_id}-{i:05d}", *head, *tail, description))
            for i, (head, description) in zip(range(rows), templates, strict=False)
        ]
        return Batch(batch_id, records, rows, rows * self.record_bytes)
