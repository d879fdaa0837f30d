"""What Zerobus's published quotas allow at the bytes per row a run measured (a projection).

Zerobus Ingest documents (2026) 100 MB/s and 100,000 records/s per stream, 10 GB/s per
table and 10,000 REST requests/s. A stream (a gRPC or Arrow stream, a Kafka producer's
connection, an MQTT connection) is therefore capped by whichever of its two limits a row
of this size reaches first; a REST client by requests/s times the rows per request. MB and
GB are read as 10^6 and 10^9 bytes. These are ceilings of the service, not measurements:
results label them as projections, next to what the run reached.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

STREAM_BYTES_PER_S = 100 * 10**6
STREAM_RECORDS_PER_S = 100_000
TABLE_BYTES_PER_S = 10 * 10**9
REST_REQUESTS_PER_S = 10_000
SOURCE = "Zerobus Ingest published quotas (documentation, 2026)"

# The interfaces (`emulator.wire` names) each quota applies to.
STREAM_INTERFACES = frozenset(
    {
        "zerobus-grpc-proto",
        "zerobus-grpc-json",
        "zerobus-arrow-flight",
        "zerobus-kafka",
        "zerobus-mqtt",
    }
)
REST_INTERFACES = frozenset({"zerobus-rest"})


class QuotaProjection(BaseModel):
    """The rows/s the published quotas allow one stream (or REST client), and what binds."""

    per: str = Field(description="what the ceiling is for: 'stream' or 'REST client'")
    rows_per_s: float = Field(description="the projected ceiling, rows/s")
    limited_by: str = Field(description="the quota that binds at this row size")
    bytes_per_row: float
    measured_share: float | None = Field(
        default=None, description="the run's rows/s as a share of the ceiling"
    )
    units_to_fill_table: int | None = Field(
        default=None,
        description="streams (or REST clients) at the ceiling that a table's 10 GB/s would take",
    )
    note: str = Field(default=f"a projection from the {SOURCE}, not a measurement")
    # What the projection was made from, so a merge of clients can make it again.
    interface: str | None = None
    batch_rows: int | None = None


def project(
    interface: str | None, bytes_per_row: float | None, batch_rows: int, rows_per_s: float
) -> QuotaProjection | None:
    """The ceiling the quotas set for `interface` at `bytes_per_row`; None if none applies."""
    if interface is None or not bytes_per_row or bytes_per_row <= 0:
        return None
    by_bytes = STREAM_BYTES_PER_S / bytes_per_row
    if interface in STREAM_INTERFACES:
        per = "stream"
        if by_bytes < STREAM_RECORDS_PER_S:
            ceiling, limit = by_bytes, "100 MB/s per stream"
        else:
            ceiling, limit = float(STREAM_RECORDS_PER_S), "100,000 records/s per stream"
    elif interface in REST_INTERFACES:
        per = "REST client"
        ceiling = float(REST_REQUESTS_PER_S * max(batch_rows, 1))
        limit = f"10,000 requests/s at {batch_rows:,} rows per request"
    else:
        return None
    by_table = TABLE_BYTES_PER_S / bytes_per_row
    if by_table < ceiling:
        ceiling, limit = by_table, "10 GB/s per table"
    return QuotaProjection(
        per=per,
        rows_per_s=round(ceiling, 1),
        limited_by=limit,
        bytes_per_row=round(bytes_per_row, 1),
        measured_share=round(rows_per_s / ceiling, 4) if rows_per_s > 0 else None,
        units_to_fill_table=math.ceil(by_table / ceiling),
        interface=interface,
        batch_rows=batch_rows,
    )
