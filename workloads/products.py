"""The products workload: the seed Direct Write App's records.

The table schema below is the one source of every form of a product row. What a user
submits (`ProductItem`) is derived from it, with the seed's validation kept: a price is a
finite number from 0 to 10^12 (not text), known categories are matched in any case, and a
sale may not stop before it starts. The harness fills record_id, processed_at, batch_id
and source.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationInfo, field_validator

from workloads.base import BatchMaker, Workload, default_table
from workloads.generate import PooledRows
from workloads.inputs import InputModel, input_model
from workloads.schema import TableSchema

DDL = """
CREATE TABLE main.default.products (
  record_id STRING NOT NULL,
  product_id STRING NOT NULL,
  product_name STRING NOT NULL,
  product_price DOUBLE NOT NULL,
  category STRING NOT NULL,
  sale_start_date DATE,
  sale_stop_date DATE,
  processed_at TIMESTAMP,
  batch_id STRING,
  source STRING,
  description STRING
) USING DELTA
"""
SCHEMA = TableSchema.from_ddl(DDL)
COLUMNS = tuple(SCHEMA.names)
CATEGORIES = (
    "electronics",
    "clothing",
    "home",
    "books",
    "sports",
    "toys",
    "grocery",
    "beauty",
    "automotive",
    "other",
)
MAX_DESCRIPTION_CHARS = 1_000_000


class ProductChecks(InputModel):
    """The seed's checks that a column type alone does not express."""

    model_config = {"str_strip_whitespace": True}

    @field_validator("category", check_fields=False)
    @classmethod
    def _category_case(cls, value: str) -> str:
        return value.lower() if value.lower() in CATEGORIES else value

    @field_validator("sale_stop_date", check_fields=False)
    @classmethod
    def _dates_in_order(cls, stop: dt.date | None, info: ValidationInfo) -> dt.date | None:
        # On the stop date's field, so the error points at an input the user can fix.
        start = info.data.get("sale_start_date")
        if start is not None and stop is not None and start > stop:
            raise ValueError("sale_stop_date must be on or after sale_start_date")
        return stop


INPUT_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "product_id": {"min_length": 1, "max_length": 64, "examples": ["PROD005"]},
    "product_name": {"min_length": 1, "max_length": 256, "examples": ["Smart Watch"]},
    "product_price": {"ge": 0, "le": 1e12, "examples": [499.99]},
    "category": {
        "min_length": 1,
        "max_length": 64,
        "description": f"one of {', '.join(CATEGORIES)}, or free text of up to 64 characters",
        "examples": ["electronics"],
    },
    "sale_start_date": {"examples": ["2026-11-01"]},
    "sale_stop_date": {"examples": ["2026-11-30"]},
    "description": {"max_length": MAX_DESCRIPTION_CHARS},
}
INPUT_COLUMNS = [
    "product_id",
    "product_name",
    "product_price",
    "category",
    "sale_start_date",
    "sale_stop_date",
    "description",
]


def sample_items(count: int, *, seed: int = 0, description_bytes: int = 0) -> list[BaseModel]:
    """Deterministic sample products (the web form's generator and the benchmarks)."""
    rng = random.Random(seed)
    names = ("Smart Watch", "Laptop", "Headphones", "Desk Lamp", "Running Shoes", "Coffee Maker")
    model = ProductItem
    items = []
    for i in range(count):
        start = dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300))
        items.append(
            model(
                product_id=f"PROD{rng.randrange(1, 10_000):04d}",
                product_name=f"{rng.choice(names)} {i}",
                product_price=round(rng.uniform(1, 2000), 2),
                category=rng.choice(CATEGORIES),
                sale_start_date=start,
                sale_stop_date=start + dt.timedelta(days=rng.randrange(1, 60)),
                description=("x" * description_bytes) if description_bytes else None,
            )
        )
    return items


def products_source(
    *, seed: int = 0, record_bytes: int = 0, pad_column: str | None = None, **_: Any
) -> BatchMaker:
    """Rows from a pool of sample products; padding on the description by default."""
    items = sample_items(1000, seed=seed)
    dumped = [item.model_dump() for item in items]
    arrays = []
    for col in SCHEMA.columns:
        values = [row.get(col.name) for row in dumped]
        arrays.append(pa.array(values, type=col.type.arrow()))
    pool = pa.Table.from_arrays(arrays, schema=SCHEMA.arrow())
    return PooledRows(
        TABLE,
        pool,
        seed=seed,
        record_bytes=record_bytes,
        pad_column=pad_column or "description",
        time_column="processed_at",
    )


TABLE = default_table("products", SCHEMA, id_column="record_id")
WORKLOAD = Workload(
    name="products",
    label="Products (the seed app's records)",
    description="Product records as the seed Direct Write App sends them; generated from "
    "sample products, padded on the description to --record-bytes.",
    schema=SCHEMA,
    table=TABLE,
    source=products_source,
    builtin=True,
    options={
        "input_base": ProductChecks,
        "input_constraints": INPUT_CONSTRAINTS,
        "input_model_name": "ProductItem",
        "time_column": "processed_at",
    },
    input_columns=INPUT_COLUMNS,
)
ProductItem = input_model(WORKLOAD)
