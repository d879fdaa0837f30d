"""The writer contract: open, availability, check a table, write a batch durably, close.

A writer only writes. It never times itself, retries on another path or counts
errors: the harness in `bench/` does that. `write()` takes `Rows` (an Arrow record batch
of a table's schema), converts it once to what its wire wants, and returns only after the
target acknowledged the rows as durable; it raises WriteFailedError (or
WriterUnavailableError) otherwise, and never reports rows it did not write.

`check(table)` refuses, before anything is written, a schema whose types the writer's
path cannot carry (SchemaNotSupportedError with the reason); it is cheap and static.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from dwbench.settings import Settings
from workloads.base import Rows, TableRef


@dataclass(frozen=True)
class Targets:
    """Where the writers write, resolved once at start-up (from the local stack or settings)."""

    mode: Literal["local", "databricks"]
    settings: Settings
    zerobus_endpoint: str | None = None
    # The workspace URL, or the local stack's API URL in local mode.
    workspace_url: str | None = None
    warehouse_id: str | None = None
    # The local stack's bearer token (local mode only).
    local_token: SecretStr | None = None
    # A full libpq DSN for Postgres (local mode); Databricks mode builds one per connection.
    postgres_dsn: SecretStr | None = None


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteReceipt:
    """What the target acknowledged: how many rows, and its own identifiers for them."""

    rows: int
    details: dict[str, Any] = field(default_factory=dict)


class DataWriterInterface(ABC):
    name: ClassVar[str]
    label: ClassVar[str]
    # The way in it belongs to (zerobus, sql, lakebase, baseline): the UI groups by it.
    family: ClassVar[str] = "other"
    # Its colour in charts, so a writer looks the same on every page.
    color: ClassVar[str] = "#6b7280"
    # Distributions whose versions the results record (the client libraries it uses).
    client_distributions: ClassVar[tuple[str, ...]] = ()
    # False for writers that store nothing (the benchmark baseline).
    stores_rows: ClassVar[bool] = True

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.settings = targets.settings

    @abstractmethod
    async def open(self) -> None:
        """Prepare clients and pools. Raises WriterUnavailableError when not configured."""

    @abstractmethod
    async def availability(self) -> Availability:
        """Whether the writer can write now, and why not; cheap and without side effects."""

    def check(self, table: TableRef) -> None:
        """Raise SchemaNotSupportedError when this path cannot carry the table's schema."""
        return None

    async def prepare(self, table: TableRef) -> None:
        """Get ready to write into the table (create it where the writer owns it)."""
        self.check(table)

    @abstractmethod
    async def write(self, rows: Rows) -> WriteReceipt:
        """Write the rows durably; return only once the target acknowledged them."""

    @abstractmethod
    async def close(self) -> None:
        """Release clients, streams and pools. Safe to call twice."""

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        """Rows of a batch readable in the target (freshness checks and tests)."""
        raise NotImplementedError(f"{self.name} cannot read back its rows")


def mask(secret: str | None, keep: int = 4) -> str | None:
    """A secret shown as its first characters and stars, for debug output."""
    if not secret:
        return None
    return secret[:keep] + "***" if len(secret) > 2 * keep else "***"
