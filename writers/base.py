"""The writer contract: open, availability, write a batch durably, close.

A writer only writes. It never times itself, retries on another path or counts
errors: the harness in `bench/` does that. `write()` returns only after the target
acknowledged the rows as durable, and raises WriteFailedError (or
WriterUnavailableError) otherwise; a writer never reports rows it did not write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from dwbench.settings import Settings
from workloads.products import ProductRecord


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

    @abstractmethod
    async def write(self, records: Sequence[ProductRecord]) -> WriteReceipt:
        """Write the records durably; return only once the target acknowledged them."""

    @abstractmethod
    async def close(self) -> None:
        """Release clients, streams and pools. Safe to call twice."""

    async def count_rows(self, batch_id: str) -> int:
        """Rows of a batch readable in the target (freshness checks and tests)."""
        raise NotImplementedError(f"{self.name} cannot read back its rows")


def mask(secret: str | None, keep: int = 4) -> str | None:
    """A secret shown as its first characters and stars, for debug output."""
    if not secret:
        return None
    return secret[:keep] + "***" if len(secret) > 2 * keep else "***"
