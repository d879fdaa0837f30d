"""The writer contract: open, availability, check a table, write a batch durably, close.

A writer only writes. It never times itself, retries on another path or counts
errors: the harness in `bench/` does that. `write()` takes `Rows` (an Arrow record batch
of a table's schema), converts it once to what its wire wants, and returns only after the
target acknowledged the rows as durable; it raises WriteFailedError (or
WriterUnavailableError) otherwise, and never reports rows it did not write.

`check(table)` refuses, before anything is written, a schema whose types the writer's
path cannot carry (SchemaNotSupportedError with the reason); it is cheap and static.

Each writer declares its own settings (`settings_class`, a WriterSettings read from the
environment, such as ZEROBUS_* or PG*); a writer gets them as `self.config`, from
`Targets.writer_settings` when that holds a value under its name, else from the
environment. The app's shared settings (mode, workspace, credentials) are `self.settings`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import httpx
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from workloads.base import Rows, TableRef

if TYPE_CHECKING:
    from dwbench.auth import WorkspaceAuth


class WriterSettings(BaseSettings):
    """A writer's own settings, read from the environment (a subclass sets env_prefix).

    A field with a `validation_alias` is read from that variable only (PGHOST, not
    LAKEBASE_HOST) and still constructed by its field name: `LakebaseSettings(host=...)`.
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    @model_validator(mode="before")
    @classmethod
    def _field_names_for_aliases(cls, data: Any) -> Any:
        # populate_by_name would also read env_prefix + field name (LAKEBASE_HOST) from the
        # environment; renaming field-name arguments to their alias accepts them without that.
        if not isinstance(data, dict):
            return data
        renamed = dict(data)
        for name, info in cls.model_fields.items():
            if isinstance(info.validation_alias, str) and name in renamed:
                renamed[info.validation_alias] = renamed.pop(name)
        return renamed


S = TypeVar("S", bound=WriterSettings)


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
    # Writers' settings given as values, by writer name ("lakebase": LakebaseSettings(...)),
    # instead of read from the environment.
    writer_settings: Mapping[str, WriterSettings] = field(default_factory=dict)
    # Databricks mode: the workspace credentials (`dwbench.auth`), resolved once, or why
    # there are none. Every writer's workspace client is built from this one Config.
    workspace_auth: WorkspaceAuth | None = None
    auth_problem: str | None = None
    # Databricks mode: what the workspace says about the compute behind the figures
    # (warehouse size, Lakebase capacity), read once at start; see bench.environment.
    workspace_facts: Mapping[str, Any] = field(default_factory=dict)

    def auth_missing(self) -> str | None:
        """Databricks mode: why no workspace client can be built (None when one can)."""
        if self.workspace_auth is not None:
            return None
        return self.auth_problem or "the workspace credentials are not resolved yet"

    def writer_config(self, name: str, settings_class: type[S]) -> S:
        """The settings of writer `name`: its value in writer_settings, else the environment."""
        config = self.writer_settings.get(name)
        if config is None:
            return settings_class()
        if not isinstance(config, settings_class):
            raise TypeError(
                f"writer {name} is configured by {settings_class.__name__}, "
                f"not {type(config).__name__}"
            )
        return config


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
    # The writer's own settings; a subclass narrows `config` to its class.
    settings_class: ClassVar[type[WriterSettings]] = WriterSettings
    # The local stack's byte counter for this writer's interface (`emulator.wire`): the
    # bytes it received from this client, per table. None where no stand-in counts them.
    wire_interface: ClassVar[str | None] = None
    # False for writers the local stack cannot serve (they report unavailable locally).
    serves_locally: ClassVar[bool] = True
    # True for writers that count the payload bytes they send (`count_payload`).
    counts_payload: ClassVar[bool] = False
    config: WriterSettings

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.settings = targets.settings  # the app's: mode, workspace, credentials
        self.config = targets.writer_config(self.name, self.settings_class)
        # Bytes of the payloads this writer encoded and sent, per table (`count_payload`).
        self.payload_bytes: dict[str, int] = {}

    def count_payload(self, table: str, nbytes: int) -> None:
        """Record `nbytes` of payload sent for `table` (the encoded records, as sent)."""
        self.payload_bytes[table] = self.payload_bytes.get(table, 0) + nbytes

    async def wire_bytes(self, table: TableRef) -> WireReading | None:
        """Cumulative bytes this writer's records put on the wire into `table`, and how known.

        Local mode, for an interface a stand-in meters: what the stand-in received from
        every client of that interface (`emulator.wire`). Otherwise the payloads this
        writer encoded (`count_payload`). None where neither is known.
        """
        name = table.delta_table.lower()
        if self.targets.mode == "local" and self.wire_interface is not None:
            counters = await local_wire_bytes(self.targets)
            return WireReading(counters.get(self.wire_interface, {}).get(name, 0), WIRE_STAND_IN)
        if self.counts_payload:
            return WireReading(self.payload_bytes.get(table.delta_table, 0), WIRE_PAYLOAD)
        return None

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

    async def reserve(self, concurrency: int) -> str | None:
        """Get ready for `concurrency` writes at once (a pool sized to it); a note for the
        run's warnings when it cannot be. Most writers need nothing."""
        return None

    @abstractmethod
    async def write(self, rows: Rows) -> WriteReceipt:
        """Write the rows durably; return only once the target acknowledged them."""

    @abstractmethod
    async def close(self) -> None:
        """Release clients, streams and pools. Safe to call twice."""

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        """Rows of a batch readable in the target (freshness checks and tests)."""
        raise NotImplementedError(f"{self.name} cannot read back its rows")


WIRE_STAND_IN = "the local stand-in's byte counter"
WIRE_PAYLOAD = "the encoded payloads the client sent"


@dataclass(frozen=True)
class WireReading:
    """A cumulative byte count, and where it comes from (WIRE_STAND_IN or WIRE_PAYLOAD)."""

    bytes: int
    source: str


async def local_wire_bytes(targets: Targets) -> dict[str, dict[str, int]]:
    """The local stack's byte counters (`/api/local/wire-bytes`), per interface and table."""
    if targets.workspace_url is None or targets.local_token is None:
        raise WriterUnavailableError("the local stack's address is not known")
    url = f"{targets.workspace_url.rstrip('/')}/api/local/wire-bytes"
    headers = {"Authorization": f"Bearer {targets.local_token.get_secret_value()}"}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise WriterUnavailableError(
            f"the local stack does not answer at {url}: {str(exc) or type(exc).__name__}"
        ) from exc
    if resp.status_code != 200:
        raise WriterUnavailableError(f"the local stack answered HTTP {resp.status_code} at {url}")
    counters: dict[str, dict[str, int]] = resp.json()
    return counters


class RecordTooLargeError(ValueError):
    """One record alone is past a message limit (`size_parts`)."""

    def __init__(self, index: int, length: int) -> None:
        super().__init__(f"record {index} is {length} bytes")
        self.index = index
        self.length = length


def size_parts(lengths: Sequence[int], limit: int, *, separator: int = 0) -> list[range]:
    """Split records of these encoded lengths, in order, into runs whose total (with
    `separator` bytes between neighbours) stays within `limit`: the messages a batch is
    sent as where a service caps a message. RecordTooLargeError for a record that alone
    is past the limit, before any run is formed (so nothing is sent)."""
    parts: list[range] = []
    start, total = 0, 0
    for i, length in enumerate(lengths):
        if length > limit:
            raise RecordTooLargeError(i, length)
        if i > start and total + separator + length > limit:
            parts.append(range(start, i))
            start, total = i, 0
        total += length + (separator if i > start else 0)
    if lengths:
        parts.append(range(start, len(lengths)))
    return parts


def mask(secret: str | None, keep: int = 4) -> str | None:
    """A secret shown as its first characters and stars, for debug output."""
    if not secret:
        return None
    return secret[:keep] + "***" if len(secret) > 2 * keep else "***"
