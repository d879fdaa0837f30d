"""Generated rows: deterministic, shaped by the column specs, ids unique, padding random."""

from __future__ import annotations

import decimal
import zlib

from workloads.base import default_table
from workloads.generate import generated_source
from workloads.schema import TableSchema

SPEC = TableSchema.from_text(
    """[
  {"name": "id", "type": "BIGINT", "nullable": false},
  {"name": "city", "type": "STRING", "generator": {"values": ["Oslo", "Lima", "Pune"]}},
  {"name": "code", "type": "STRING",
   "generator": {"min_length": 3, "max_length": 3, "cardinality": 5}},
  {"name": "score", "type": "DOUBLE", "generator": {"min": -1, "max": 1, "null_fraction": 0.5}},
  {"name": "level", "type": "TINYINT", "generator": {"min": 1, "max": 3}},
  {"name": "price", "type": "DECIMAL(6,2)"},
  {"name": "tags", "type": "ARRAY<STRING>", "generator": {"min_length": 2, "max_length": 2}},
  {"name": "attrs", "type": "MAP<STRING, INT>"},
  {"name": "pos", "type": "STRUCT<lat: DOUBLE, lon: DOUBLE NOT NULL>"},
  {"name": "note", "type": "STRING"},
  {"name": "batch_id", "type": "STRING"}
]"""
)
TABLE = default_table("spec", SPEC, id_column="id")


def test_columns_follow_their_specs() -> None:
    make = generated_source(TABLE)(seed=1)
    rows = make(0, 2000, "b-0", "null").to_pylist()
    assert {r["city"] for r in rows} == {"Oslo", "Lima", "Pune"}
    assert len({r["code"] for r in rows}) <= 5 and {len(r["code"]) for r in rows} == {3}
    scores = [r["score"] for r in rows]
    assert 700 < scores.count(None) < 1300
    assert all(-1 <= s <= 1 for s in scores if s is not None)
    assert {r["level"] for r in rows} == {1, 2, 3}
    assert all(isinstance(r["price"], decimal.Decimal) and r["price"] <= 9999 for r in rows)
    assert all(len(r["tags"]) == 2 for r in rows)
    assert all(
        len({k for k, _ in r["attrs"]}) == len(r["attrs"]) for r in rows
    )  # keys unique per map
    assert all(r["pos"]["lon"] is not None for r in rows)
    assert {r["batch_id"] for r in rows} == {"b-0"}


def test_deterministic_ids_unique_and_padding_incompressible() -> None:
    make = generated_source(TABLE)(seed=9, record_bytes=800)
    a, b = make(0, 3000, "b-0", "x"), make(1, 3000, "b-1", "x")
    ids = a.column("id").to_pylist() + b.column("id").to_pylist()
    assert len(set(ids)) == 6000
    assert generated_source(TABLE)(seed=9, record_bytes=800)(0, 3000, "b-0", "x") == a
    assert generated_source(TABLE)(seed=10, record_bytes=800)(0, 3000, "b-0", "x") != a
    padded = "".join(a.column("note").to_pylist()[:200]).encode()
    assert min(len(n) for n in a.column("note").to_pylist()) > 400  # the widest string carries it
    assert len(zlib.compress(padded)) > 0.7 * len(padded)
