"""The rows every writer stores and their protobuf form, field by field."""

from __future__ import annotations

import datetime as dt

from proto import product_record_pb2
from workloads.products import (
    COLUMNS,
    ProductItem,
    ProductRecord,
    build_records,
    to_proto,
    to_protos,
)

AT = dt.datetime(2026, 11, 21, 10, 30, 15, 123456, tzinfo=dt.UTC)
FULL = ProductItem(
    product_id="PROD005",
    product_name="Smart Watch",
    product_price=499.99,
    category="Electronics",
    sale_start_date=dt.date(2026, 11, 1),
    sale_stop_date=dt.date(2026, 11, 30),
    description="with a strap",
)
BARE = ProductItem(product_id="P1", product_name="Pen", product_price=0.0, category="other")


def test_build_records_fills_every_column_in_order() -> None:
    first, second = build_records([FULL, BARE], batch_id="b1", source="zerobus", processed_at=AT)
    assert ProductRecord._fields == COLUMNS
    assert first.as_dict() == {
        "record_id": "b1-000000",
        "product_id": "PROD005",
        "product_name": "Smart Watch",
        "product_price": 499.99,
        "category": "electronics",
        "sale_start_date": dt.date(2026, 11, 1),
        "sale_stop_date": dt.date(2026, 11, 30),
        "processed_at": AT,
        "batch_id": "b1",
        "source": "zerobus",
        "description": "with a strap",
    }
    assert second == ProductRecord(
        record_id="b1-000001",
        product_id="P1",
        product_name="Pen",
        product_price=0.0,
        category="other",
        sale_start_date=None,
        sale_stop_date=None,
        processed_at=AT,
        batch_id="b1",
        source="zerobus",
        description=None,
    )


def test_protobuf_carries_every_value_and_leaves_missing_ones_unset() -> None:
    later = AT + dt.timedelta(seconds=1)
    records = build_records([FULL, BARE], batch_id="b2", source="zerobus", processed_at=AT)
    records.append(records[0]._replace(record_id="b2-000002", processed_at=later))
    encoded = to_protos(records)
    assert encoded == [to_proto(r) for r in records]

    full, bare, third = (product_record_pb2.ProductRecord.FromString(b) for b in encoded)
    assert (full.record_id, full.product_id, full.product_name) == (
        "b2-000000",
        "PROD005",
        "Smart Watch",
    )
    assert (full.product_price, full.category, full.batch_id, full.source) == (
        499.99,
        "electronics",
        "b2",
        "zerobus",
    )
    assert full.sale_start_date == (dt.date(2026, 11, 1) - dt.date(1970, 1, 1)).days == 20758
    assert full.sale_stop_date == 20787
    assert full.processed_at == 1_795_257_015_123_456
    assert full.description == "with a strap"
    for field in ("sale_start_date", "sale_stop_date", "description"):
        assert not bare.HasField(field), field
    assert bare.HasField("product_price") and bare.product_price == 0.0
    # Each record's own processed_at, even when it changes within a batch.
    assert third.processed_at == full.processed_at + 1_000_000
