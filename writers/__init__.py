"""The writer registry: names to writer classes, imported lazily with their SDKs.

Adding a writer is one module and one line in WRITERS.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import defaultdict

from dwbench.errors import UnknownWriterError, WriterUnavailableError
from writers.base import DataWriterInterface, Targets

WRITERS: dict[str, str] = {
    "zerobus": "writers.zerobus:ZerobusWriter",
    "sql": "writers.sql:SqlWriter",
    "lakebase": "writers.lakebase:LakebaseWriter",
    "null": "writers.null:NullWriter",
}
# What "all" means for ingestion: the writers that store rows.
INGEST_WRITERS = ("zerobus", "sql", "lakebase")


def writer_class(name: str) -> type[DataWriterInterface]:
    try:
        module_name, _, class_name = WRITERS[name].partition(":")
    except KeyError:
        raise UnknownWriterError(
            f"unknown writer {name!r}; valid writers: {', '.join(WRITERS)} or 'all'"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # the writer's SDK is missing or broken
        raise WriterUnavailableError(
            f"the {name} writer cannot be loaded: {exc}", writer=name
        ) from exc
    cls: type[DataWriterInterface] = getattr(module, class_name)
    return cls


class WriterSet:
    """One long-lived instance per writer name, opened on first use and shared."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self._writers: dict[str, DataWriterInterface] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, name: str) -> DataWriterInterface:
        writer = self._writers.get(name)
        if writer is not None:
            return writer
        cls = writer_class(name)
        async with self._locks[name]:
            writer = self._writers.get(name)
            if writer is None:
                writer = cls(self.targets)
                await writer.open()
                self._writers[name] = writer
        return writer

    async def close(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            await writer.close()
