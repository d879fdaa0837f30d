"""A writer that lets each client's first `GATED_FREE` batches through and holds the rest
until the file `GATED_GATE` exists: a test sees every client's progress at an exact count
while the run is still going. Registered by tests through DWBENCH_EXTRA_WRITERS."""

from __future__ import annotations

import asyncio
import os

from pydantic_settings import SettingsConfigDict

from workloads.base import Rows
from writers.base import WriteReceipt, WriterSettings
from writers.null import NullWriter

TARGET = "tests.bench.gated_writer:GatedWriter"


class GatedSettings(WriterSettings):
    model_config = SettingsConfigDict(env_prefix="GATED_")

    gate: str = ""
    free: int = 5


class GatedWriter(NullWriter):
    name = "gated"
    label = "Gated writer (test-only)"
    family = "test"
    settings_class = GatedSettings
    config: GatedSettings

    writes = 0

    async def write(self, rows: Rows) -> WriteReceipt:
        self.writes += 1
        if self.writes > self.config.free:
            # The gate is another process's file: no event reaches across, so look for it.
            while not os.path.exists(self.config.gate):  # noqa: ASYNC110, ASYNC240
                await asyncio.sleep(0.02)
        return WriteReceipt(rows=len(rows))
