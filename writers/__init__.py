"""The writer registry: names to writer classes, imported lazily with their SDKs.

Adding a writer is one module and one line in WRITERS. Everything that lists writers (the
API, the UI through it, the CLI's help, the environment capture) reads this registry;
`DWBENCH_EXTRA_WRITERS="name=module:Class,..."` adds writers at start-up (tests use it).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections import defaultdict
from typing import Any

from dwbench.errors import UnknownWriterError, WriterUnavailableError
from writers.base import DataWriterInterface, Targets, WriterSettings

WRITERS: dict[str, str] = {
    "zerobus": "writers.zerobus:ZerobusWriter",
    "zerobus-json": "writers.zerobus:ZerobusJsonWriter",
    "zerobus-arrow": "writers.zerobus_arrow:ZerobusArrowWriter",
    "zerobus-rest": "writers.zerobus_rest:ZerobusRestWriter",
    "zerobus-kafka": "writers.zerobus_kafka:ZerobusKafkaWriter",
    "zerobus-mqtt": "writers.zerobus_mqtt:ZerobusMqttWriter",
    "sql": "writers.sql:SqlWriter",
    "sql-copy": "writers.sql_copy:SqlCopyWriter",
    "sql-connector": "writers.sql_connector:SqlConnectorWriter",
    "lakebase": "writers.lakebase:LakebaseWriter",
    "null": "writers.null:NullWriter",
}
EXTRA_WRITERS_ENV = "DWBENCH_EXTRA_WRITERS"


def register_writer(name: str, target: str) -> None:
    """Add a writer: `target` is "module:Class"."""
    if ":" not in target:
        raise ValueError(f"writer {name}: expected module:Class, got {target!r}")
    WRITERS[name] = target


def _register_from_environment() -> None:
    for entry in filter(
        None, (e.strip() for e in os.environ.get(EXTRA_WRITERS_ENV, "").split(","))
    ):
        name, _, target = entry.partition("=")
        register_writer(name.strip(), target.strip())


_register_from_environment()


def ingest_writers() -> list[str]:
    """What "all" means for ingestion: every writer that stores rows."""
    names = []
    for name in WRITERS:
        try:
            stores = writer_class(name).stores_rows
        except WriterUnavailableError:
            stores = True  # its SDK is missing: listed, and unavailable when asked
        if stores:
            names.append(name)
    return names


def writer_metadata(name: str) -> dict[str, Any]:
    """Name, label, family, colour and client libraries of a writer (no SDK call)."""
    try:
        cls = writer_class(name)
    except WriterUnavailableError as exc:
        return {
            "name": name,
            "label": name,
            "family": "other",
            "color": None,
            "stores_rows": True,
            "client_distributions": [],
            "load_error": exc.message,
        }
    return {
        "name": name,
        "label": cls.label,
        "family": cls.family,
        "color": cls.color,
        "stores_rows": cls.stores_rows,
        "client_distributions": list(cls.client_distributions),
    }


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


def writer_config(targets: Targets, name: str) -> WriterSettings | None:
    """The settings writer `name` gets on these targets (their value for it, else the
    environment), or None when the writer cannot be loaded."""
    try:
        cls = writer_class(name)
    except WriterUnavailableError:
        return None
    return targets.writer_config(name, cls.settings_class)


class WriterSet:
    """One long-lived instance per writer name and stream, opened on first use and shared.
    Stream 0 is the writer the app and the Write view use; a benchmark with --streams N
    also takes streams 1..N-1, each an instance of its own (its own SDK stream, producer,
    connection or pool)."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self._writers: dict[tuple[str, int], DataWriterInterface] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, name: str, stream: int = 0) -> DataWriterInterface:
        key = (name, stream)
        writer = self._writers.get(key)
        if writer is not None:
            return writer
        cls = writer_class(name)
        async with self._locks[key]:
            writer = self._writers.get(key)
            if writer is None:
                writer = cls(self.targets)
                await writer.open()
                self._writers[key] = writer
        return writer

    async def close(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            await writer.close()
