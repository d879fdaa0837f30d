"""Helpers of the serving-path tests: the local stack's pipeline API, Delta and Postgres reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pyarrow as pa
from deltalake import DeltaTable

from workloads.telemetry import SCHEMA

COLUMNS = (
    "driver_id, status, order_id, event_time, latitude, longitude, speed_mps, heading_deg, "
    "battery_pct, event_id"
)


def stack_api(endpoints: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=endpoints["api_url"] + "/api/local/pipeline",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
        timeout=30,
    )


def wait_for(
    check: Callable[[], Any], what: str, timeout_s: float = 60.0, every_s: float = 0.1
) -> Any:
    """Poll until `check()` is truthy; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def delta_path(endpoints: dict[str, Any], table: str) -> Path:
    return Path(endpoints["data_dir"]).joinpath("tables", *table.split("."))


def delta_rows(endpoints: dict[str, Any], table: str) -> pa.Table:
    return DeltaTable(str(delta_path(endpoints, table))).to_pyarrow_table()


def newest_per_driver(rows: pa.Table) -> dict[str, dict[str, Any]]:
    """driver_id -> the row with the latest event_time (the synced table's rule)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows.to_pylist():
        known = out.get(row["driver_id"])
        if known is None or row["event_time"] >= known["event_time"]:
            out[row["driver_id"]] = row
    return out


def postgres_rows(endpoints: dict[str, Any], table: str, where: str = "") -> list[dict[str, Any]]:
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        cur = conn.execute(f"SELECT {COLUMNS} FROM {table} {where}")  # test tables only
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def same_state(pg: list[dict[str, Any]], silver: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between Postgres rows and silver's newest per driver ([] when equal)."""
    problems = []
    by_driver = {row["driver_id"]: row for row in pg}
    if by_driver.keys() != silver.keys():
        problems.append(f"drivers differ: {sorted(by_driver.keys() ^ silver.keys())[:5]}")
    for driver, want in silver.items():
        got = by_driver.get(driver)
        if got is None:
            continue
        for column in COLUMNS.split(", "):
            if got[column] != want[column] and not _same_float(got[column], want[column]):
                problems.append(f"{driver}.{column}: {got[column]!r} != {want[column]!r}")
    return problems


def _same_float(a: Any, b: Any) -> bool:
    """REAL columns: Postgres's float4 and Arrow's float32 are the same value, printed apart."""
    return isinstance(a, float) and isinstance(b, float) and np.float32(a) == np.float32(b)


def insert_sql(table: str, rows: list[tuple[str, str, str, str]]) -> str:
    """INSERT of telemetry rows (event_id, driver_id, event_time ISO, status)."""
    values = ", ".join(
        f"('{e}', '{d}', NULL, TIMESTAMP '{t}', 37.75, -122.42, 5.0, 90.0, 4.0, '{s}', 50, "
        f"'5.0.0', 'b', 'test')"
        for e, d, t, s in rows
    )
    return f"INSERT INTO {table} VALUES {values}"


def bronze_ddl(table: str) -> str:
    return SCHEMA.delta_ddl(table)
