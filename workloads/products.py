"""The products workload: the input model, the full row, and its forms on each wire.

A `ProductItem` is what a user submits; a `ProductRecord` is the row every writer
stores: the item plus record_id, batch_id, processed_at and source. The same rows go to
Zerobus as protobuf or JSON, to SQL as typed parameters and to Postgres as COPY tuples.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from proto import product_record_pb2

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
# Column order of the table everywhere (Delta, proto field numbers, Postgres).
COLUMNS = (
    "record_id",
    "product_id",
    "product_name",
    "product_price",
    "category",
    "sale_start_date",
    "sale_stop_date",
    "processed_at",
    "batch_id",
    "source",
    "description",
)
MAX_DESCRIPTION_CHARS = 1_000_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()  # a date's proto value: days since then
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ProductItem(BaseModel):
    """One product as a user submits it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product_id: str = Field(min_length=1, max_length=64, examples=["PROD005"])
    product_name: str = Field(min_length=1, max_length=256, examples=["Smart Watch"])
    # strict: "12.5" or true is not a price; NaN and infinity are refused too.
    product_price: float = Field(ge=0, le=1e12, strict=True, allow_inf_nan=False, examples=[499.99])
    category: str = Field(
        min_length=1,
        max_length=64,
        description=f"one of {', '.join(CATEGORIES)}, or free text of up to 64 characters",
        examples=["electronics"],
    )
    sale_start_date: dt.date | None = Field(default=None, examples=["2026-11-01"])
    sale_stop_date: dt.date | None = Field(default=None, examples=["2026-11-30"])
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)

    @field_validator("category")
    @classmethod
    def _category_case(cls, value: str) -> str:
        return value.lower() if value.lower() in CATEGORIES else value

    @field_validator("sale_stop_date")
    @classmethod
    def _dates_in_order(cls, stop: dt.date | None, info: ValidationInfo) -> dt.date | None:
        # On the stop date's field, so the error points at an input the user can fix.
        start = info.data.get("sale_start_date")
        if start is not None and stop is not None and start > stop:
            raise ValueError("sale_stop_date must be on or after sale_start_date")
        return stop


class ProductRecord(NamedTuple):
    """One stored row, fields in COLUMNS order (a tuple: cheap to build, ready for COPY)."""

    record_id: str
    product_id: str
    product_name: str
    product_price: float
    category: str
    sale_start_date: dt.date | None
    sale_stop_date: dt.date | None
    processed_at: dt.datetime
    batch_id: str
    source: str
    description: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        """Values in COLUMNS order (Postgres COPY, SQL rows)."""
        return tuple(self)

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def new_batch_id() -> str:
    return uuid.uuid4().hex


def build_records(
    items: Sequence[ProductItem],
    *,
    batch_id: str,
    source: str,
    processed_at: dt.datetime | None = None,
) -> list[ProductRecord]:
    """Rows for one writer: record ids are `<batch_id>-<index>`, the same for every writer."""
    at = processed_at or dt.datetime.now(dt.UTC)
    # Stored with microsecond precision (Delta TIMESTAMP, proto int64 µs, timestamptz).
    # Positional construction in COLUMNS order: half the cost of keyword arguments, and
    # this runs for every row of every request.
    make = tuple.__new__
    return [
        make(
            ProductRecord,
            (
                f"{batch_id}-{i:06d}",
                item.product_id,
                item.product_name,
                float(item.product_price),
                item.category,
                item.sale_start_date,
                item.sale_stop_date,
                at,
                batch_id,
                source,
                item.description,
            ),
        )
        for i, item in enumerate(items)
    ]


def epoch_micros(value: dt.datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_proto(record: ProductRecord) -> bytes:
    """The record as a serialized ProductRecord message (Zerobus proto mode)."""
    return to_protos((record,))[0]


def to_protos(records: Sequence[ProductRecord]) -> list[bytes]:
    """Each record as a serialized ProductRecord message, in order.

    The ingestion path's encoder, written for speed: one keyword construction per message
    (None leaves an optional field unset) and the shared processed_at converted once.
    """
    message = product_record_pb2.ProductRecord
    serialize = message.SerializeToString
    out = []
    at: dt.datetime | None = None
    at_micros = 0
    for r in records:
        if r.processed_at is not at:
            at, at_micros = r.processed_at, epoch_micros(r.processed_at)
        start, stop = r.sale_start_date, r.sale_stop_date
        msg = message(
            record_id=r.record_id,
            product_id=r.product_id,
            product_name=r.product_name,
            product_price=r.product_price,
            category=r.category,
            sale_start_date=None if start is None else start.toordinal() - _EPOCH_ORDINAL,
            sale_stop_date=None if stop is None else stop.toordinal() - _EPOCH_ORDINAL,
            processed_at=at_micros,
            batch_id=r.batch_id,
            source=r.source,
            description=r.description,
        )
        out.append(serialize(msg))
    return out


def to_json(record: ProductRecord) -> str:
    """The record as a JSON object (Zerobus JSON mode): dates as ISO text, time in µs."""
    return json.dumps(
        {
            "record_id": record.record_id,
            "product_id": record.product_id,
            "product_name": record.product_name,
            "product_price": record.product_price,
            "category": record.category,
            "sale_start_date": record.sale_start_date.isoformat()
            if record.sale_start_date
            else None,
            "sale_stop_date": record.sale_stop_date.isoformat() if record.sale_stop_date else None,
            "processed_at": epoch_micros(record.processed_at),
            "batch_id": record.batch_id,
            "source": record.source,
            "description": record.description,
        }
    )


def sample_items(count: int, *, seed: int = 0, description_bytes: int = 0) -> list[ProductItem]:
    """Deterministic sample products (the web form's generator and the benchmarks)."""
    import random

    rng = random.Random(seed)
    names = ("Smart Watch", "Laptop", "Headphones", "Desk Lamp", "Running Shoes", "Coffee Maker")
    items = []
    for i in range(count):
        start = dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300))
        items.append(
            ProductItem(
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
