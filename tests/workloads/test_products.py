"""The products workload: the seed's rows, validation and protobuf form, field by field."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from proto import product_record_pb2
from workloads import products
from workloads.inputs import build_rows
from workloads.proto import descriptor_proto, proto_form

AT = dt.datetime(2026, 11, 21, 10, 30, 15, 123456, tzinfo=dt.UTC)
FULL = products.ProductItem(
    product_id="PROD005",
    product_name="Smart Watch",
    product_price=499.99,
    category="Electronics",
    sale_start_date=dt.date(2026, 11, 1),
    sale_stop_date=dt.date(2026, 11, 30),
    description="with a strap",
)
BARE = products.ProductItem(
    product_id="P1", product_name="Pen", product_price=0.0, category="other"
)


def test_build_rows_fills_every_column_in_order() -> None:
    rows = build_rows(
        products.WORKLOAD, [FULL, BARE], batch_id="b1", source="zerobus", processed_at=AT
    )
    assert rows.data.schema.names == list(products.COLUMNS)
    first, second = rows.data.to_pylist()
    assert first == {
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
    assert second == {
        "record_id": "b1-000001",
        "product_id": "P1",
        "product_name": "Pen",
        "product_price": 0.0,
        "category": "other",
        "sale_start_date": None,
        "sale_stop_date": None,
        "processed_at": AT,
        "batch_id": "b1",
        "source": "zerobus",
        "description": None,
    }


def test_protobuf_carries_every_value_and_leaves_missing_ones_unset() -> None:
    rows = build_rows(
        products.WORKLOAD, [FULL, BARE], batch_id="b2", source="zerobus", processed_at=AT
    )
    encoded = proto_form(products.SCHEMA, "products").encoder(products.SCHEMA)(rows.data)
    # The seed's committed message parses what the derived descriptor encodes: same numbers.
    full, bare = (product_record_pb2.ProductRecord.FromString(b) for b in encoded)
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
    assert full.processed_at == int(AT.timestamp()) * 1_000_000 + 123456
    assert full.description == "with a strap"
    for field in ("sale_start_date", "sale_stop_date", "description"):
        assert not bare.HasField(field)
    assert bare.product_price == 0.0 and bare.HasField("product_price")


def test_the_committed_proto_is_the_derived_descriptor() -> None:
    """proto/product_record.proto is the seed's artefact; nothing depends on it, but it must
    say what the schema derives (field names, numbers, labels and types)."""
    derived = descriptor_proto(products.SCHEMA, "ProductRecord")
    committed = product_record_pb2.DESCRIPTOR.message_types_by_name["ProductRecord"]
    from google.protobuf import descriptor_pb2

    seed = descriptor_pb2.DescriptorProto()
    committed.CopyToProto(seed)
    for field in seed.field:
        field.ClearField("json_name")
    assert seed == derived


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"product_price": "12.5"}, "Input should be a valid number"),
        ({"product_price": -1}, "greater than or equal to 0"),
        ({"product_price": float("nan")}, "finite number"),
        ({"product_id": ""}, "at least 1 character"),
        ({"sale_start_date": "2026-12-02", "sale_stop_date": "2026-12-01"}, "on or after"),
        ({"product_name": "x\0y"}, "NUL"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_the_seed_validation_holds(change: dict[str, object], message: str) -> None:
    item = {"product_id": "P1", "product_name": "Pen", "product_price": 1.5, "category": "books"}
    with pytest.raises(ValidationError, match=message):
        products.ProductItem.model_validate({**item, **change})


def test_categories_match_in_any_case_and_text_is_trimmed() -> None:
    item = products.ProductItem.model_validate(
        {"product_id": " P1 ", "product_name": "Pen", "product_price": 2, "category": "BOOKS"}
    )
    assert (item.product_id, item.category, item.product_price) == ("P1", "books", 2.0)
    assert (
        products.ProductItem.model_validate(
            {"product_id": "P1", "product_name": "Pen", "product_price": 2, "category": "Gadgets"}
        ).category
        == "Gadgets"
    )


def test_generated_rows_pad_the_description_and_keep_ids_unique() -> None:
    make = products.WORKLOAD.batches(seed=3, record_bytes=1024)
    first = make(0, 500, "run-a-0000000", "sql")
    second = make(1, 500, "run-a-0000001", "sql")
    ids = first.column("record_id").to_pylist() + second.column("record_id").to_pylist()
    assert len(set(ids)) == 1000 and ids[0] == "run-a-0000000-000000"
    assert set(first.column("batch_id").to_pylist()) == {"run-a-0000000"}
    assert set(first.column("source").to_pylist()) == {"sql"}
    sizes = {len(d) for d in first.column("description").to_pylist()}
    assert min(sizes) > 800
    # Deterministic from the seed (except the time the batch was made).
    again = products.WORKLOAD.batches(seed=3, record_bytes=1024)(0, 500, "run-a-0000000", "sql")
    assert again.drop_columns(["processed_at"]) == first.drop_columns(["processed_at"])
