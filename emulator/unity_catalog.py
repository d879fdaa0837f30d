"""Unity Catalog table metadata of the local catalog, as `/api/2.1/unity-catalog/tables` shows it.

The shape is what `databricks-sdk`'s `TableInfo.from_dict` reads (and the Zerobus SDK's
`generate_proto` tool): every table is MANAGED and DELTA; each column has its `type_text`
(lower case, `array<struct<lat:double,lon:double>>`), `type_name` (LONG, DECIMAL, ARRAY, ...),
`type_json` (the Spark StructField JSON), precision and scale (0 unless DECIMAL), position,
nullability and comment.
"""

from __future__ import annotations

import json
from typing import Any

from deltalake import DeltaTable

from emulator.catalog import Table
from emulator.schema import Column, DecimalType


def column_info(column: Column, position: int) -> dict[str, Any]:
    decimal = column.type if isinstance(column.type, DecimalType) else None
    info: dict[str, Any] = {
        "name": column.name,
        "type_text": column.type.catalog_string(),
        "type_name": column.type.type_name,
        "type_json": json.dumps(column.spark_json(), separators=(",", ":")),
        "type_precision": decimal.precision if decimal else 0,
        "type_scale": decimal.scale if decimal else 0,
        "position": position,
        "nullable": column.nullable,
    }
    if column.comment is not None:
        info["comment"] = column.comment
    return info


def table_info(table: Table, *, with_columns: bool = True) -> dict[str, Any]:
    catalog_name, schema_name, name = table.name.split(".")
    info: dict[str, Any] = {
        "name": name,
        "catalog_name": catalog_name,
        "schema_name": schema_name,
        "full_name": table.name,
        "table_type": "MANAGED",
        "data_source_format": "DELTA",
        "storage_location": table.path.resolve().as_uri(),
        "owner": "local",
    }
    try:
        metadata = DeltaTable(str(table.path)).metadata()
    except Exception:  # dropped meanwhile: the columns still describe it
        metadata = None
    if metadata is not None:
        info["table_id"] = metadata.id
        info["created_at"] = metadata.created_time
        info["properties"] = dict(metadata.configuration)
        if metadata.description:
            info["comment"] = metadata.description
    if with_columns:
        info["columns"] = [column_info(c, i) for i, c in enumerate(table.schema.columns)]
    return info
