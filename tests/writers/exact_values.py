"""Values compared exactly: floats by their bits (NaN, -0.0 and float32 rounding), aware
times in UTC — what the writer tests read back from a table."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any


def exact(value: Any) -> Any:
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [exact(v) for v in value]
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    return value
