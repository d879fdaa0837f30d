"""Crash durability through the real writers: the stand-in SIGKILLed mid-batch, restarted.

`CrashStack` is a local stack of a test's own on a temporary data directory that can be
killed (SIGKILL: nothing is flushed, nobody is told) and started again on the same data,
ports and token, so the writer's targets stay right. `write_through_crash` drives one
writer as the benchmark does (the registry's class on `Targets`, several batches in
flight) and crashes the stack from a task once some batches were acknowledged while
others are in flight:

    phase 1  batches in flight up to `concurrency`; after `kill_after` receipts, the crash
             (`kill_stack` by default: SIGKILL); then no new batches, the stack restarts
             at once, and the batches in flight end as they end (acknowledged after all,
             or failed). A crash of its own may wait for more receipts, or restart itself.
    phase 2  `after_restart` more batches through the same writer, not re-opened: a
             benchmark writer reconnects on the next batch, so every one of them must be
             acknowledged (`stale_connection` names the one allowed exception)

`CrashRun.check()` then takes the table's ids, read back independently (deltalake, or
psycopg for Postgres), and asserts what a client may rely on: every row of every batch
whose `write()` returned a receipt is there; a batch whose write raised is absent, or
present whole (once or more often), never in part, since a batch is committed atomically;
each failure is a WriteFailedError or WriterUnavailableError whose message names the
cause; no row comes from anywhere else. Duplicates (whole batches written twice: the
at-least-once of a retry after a lost answer) are counted and printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from deltalake import DeltaTable
from psycopg import sql

from dwbench.errors import DirectWriteError, WriteFailedError, WriterUnavailableError
from dwbench.runtime import _ports
from emulator.process import LocalStackProcess
from tests.conftest import local_targets, run_sql
from workloads import products
from workloads.base import Rows, TableRef
from writers import writer_class
from writers.base import DataWriterInterface, WriteReceipt, WriterSettings

# A write that takes longer than this has hung: the test fails and says which batch.
WRITE_TIMEOUT_S = 30.0


class CrashStack:
    """A local stack on a data directory of its own; killed and restarted on the same
    data, ports and token (`dwbench.runtime._ports`, as the app restarts a stack)."""

    def __init__(self, data_dir: Path, *, postgres: bool = False) -> None:
        self.data_dir = data_dir
        self.token = secrets.token_urlsafe(16)
        self.postgres = postgres
        self.endpoints: dict[str, Any] = {}
        self.process: LocalStackProcess | None = None
        self.processes: list[LocalStackProcess] = []
        self.killed = False

    def start(self) -> dict[str, Any]:
        """The first start (ports chosen freely), or a restart on the first one's ports."""
        if self.endpoints:
            args = _ports(self.endpoints)
        else:
            args = [] if self.postgres else ["--no-postgres"]
        process = LocalStackProcess(self.data_dir, token=self.token, args=args)
        self.processes.append(process)
        endpoints = process.start()
        if self.endpoints:
            moved = {
                k: v for k, v in endpoints.items() if k != "pid" and self.endpoints.get(k) != v
            }
            assert not moved, f"the restarted stack moved: {moved}"
        self.endpoints, self.process, self.killed = endpoints, process, False
        return endpoints

    def kill(self) -> None:
        """SIGKILL the stack process (its Postgres is a daemon: see `kill_postgres`)."""
        assert self.process is not None
        self.process.kill()
        self.killed = True

    def postgres_pid(self) -> int:
        """The postmaster's pid, from its postmaster.pid."""
        text = (self.data_dir / "postgres" / "postmaster.pid").read_text()
        return int(text.split("\n", 1)[0])

    def kill_postgres(self) -> int:
        """SIGKILL the postmaster by the pid in its postmaster.pid and wait until its
        backends are gone too (a new postmaster refuses shared memory they still hold).
        Returns the pid killed."""
        pid = self.postgres_pid()
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        os.kill(pid, signal.SIGKILL)
        _gone, alive = psutil.wait_procs([proc, *children], timeout=10)
        assert not alive, f"postgres processes alive after the postmaster's SIGKILL: {alive}"
        return pid

    def logs(self) -> tuple[str, str]:
        """The stack's log (every process on this data dir appends to it) and Postgres's."""
        postgres = self.data_dir / "postgres" / "postgres.log"
        return (
            (self.data_dir / "local-stack.log").read_text(errors="replace"),
            postgres.read_text(errors="replace") if postgres.exists() else "",
        )

    def stop(self) -> None:
        """Stop the running stack cleanly; kill every other one still alive."""
        for process in self.processes:
            if process is not self.process or self.killed:
                process.kill()
        if self.process is not None and not self.killed:
            code = self.process.stop()
            assert code == 0, f"the local stack exited uncleanly ({code}); see its log"

    def targets(self, **writer_settings: WriterSettings) -> Any:
        return local_targets(self.endpoints, **writer_settings)

    def delta_table(self, prefix: str) -> TableRef:
        """A new products table on the stack, as the benchmark's workload describes it."""
        name = f"main.default.{prefix}_{secrets.token_hex(3)}"
        table = products.WORKLOAD.table.with_tables(delta_table=name)
        run_sql(self.endpoints, table.schema.delta_ddl(name))
        return table

    def postgres_table(self, prefix: str) -> TableRef:
        """Products in a new Postgres table (the lakebase writer creates it in prepare)."""
        return products.WORKLOAD.table.with_tables(
            postgres_table=f"public.{prefix}_{secrets.token_hex(3)}"
        )

    # -- reading back, independently of the writers --------------------------------------

    def delta_ids(self, table: TableRef) -> Counter[str]:
        path = Path(self.endpoints["data_dir"], "tables", *table.delta_table.split("."))
        data = DeltaTable(str(path)).to_pyarrow_table(columns=[_id_column(table)])
        return Counter(data.column(0).to_pylist())

    def postgres_ids(self, table: TableRef) -> Counter[str]:
        schema, name = table.postgres_table.split(".")
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.Identifier(_id_column(table)), sql.Identifier(schema, name)
        )
        with psycopg.connect(self.endpoints["postgres_dsn"]) as conn:
            return Counter(row[0] for row in conn.execute(query).fetchall())


@dataclass
class Batch:
    k: int
    rows: Rows
    phase: int  # 1: up to the crash, 2: after the restart
    in_flight_at_crash: bool = False
    receipt: WriteReceipt | None = None
    error: BaseException | None = None

    @property
    def ids(self) -> list[str]:
        ids: list[str] = self.rows.data.column(_id_column(self.rows.table)).to_pylist()
        return ids


@dataclass
class CrashRun:
    writer: str
    batches: list[Batch] = field(default_factory=list)
    crashed_after: int = 0  # receipts when the crash came
    notes: list[str] = field(default_factory=list)

    def check(
        self, ids: Counter[str], *, error: str, stale_connection: str | None = None
    ) -> dict[str, int]:
        """Assert durability against the table's ids (see the module doc).

        `error`: a pattern every failed write's message matches (it names the cause).
        `stale_connection`: a pattern for the one failure allowed after the restart, the
        first use of a pooled connection the dead server had dropped; each fails once, and
        the batches written last all land."""
        self._print(ids)
        assert any(b.in_flight_at_crash for b in self.batches), "no batch was in flight"
        sent = {i for b in self.batches for i in b.ids}
        foreign = set(ids) - sent
        assert not foreign, f"{len(foreign)} rows in the table were never sent"
        summary: Counter[str] = Counter()
        for b in self.batches:
            counts = Counter(ids[i] for i in b.ids)
            assert len(counts) == 1, (
                f"batch {b.k} ({'acknowledged' if b.receipt else 'failed'}) is partly in "
                f"the table: {dict(counts)} (copies: rows)"
            )
            copies = next(iter(counts))
            summary["duplicate_rows"] += max(0, copies - 1) * len(b.rows)
            if b.receipt is not None:
                assert b.receipt.rows == len(b.rows)
                assert copies >= 1, f"batch {b.k} was acknowledged but is not in the table"
                summary["acknowledged"] += 1
                continue
            assert isinstance(b.error, WriteFailedError | WriterUnavailableError), (
                f"batch {b.k} failed with {type(b.error).__name__}: {b.error}"
            )
            assert re.search(error, b.error.message), (
                f"batch {b.k} failed without naming the cause: {b.error.message}"
            )
            summary["failed"] += 1
            summary["failed_but_present" if copies else "failed_absent"] += 1
        # The writer recovers without being re-opened: the batches after the restart land.
        late = [b for b in self.batches if b.phase == 2]
        failed_late = [b for b in late if b.receipt is None]
        if stale_connection is None:
            assert not failed_late, f"after the restart batch {failed_late[0].k} failed"
        else:
            for b in failed_late:
                assert isinstance(b.error, DirectWriteError)
                assert re.search(stale_connection, b.error.message), b.error.message
            last = sorted(late, key=lambda b: b.k)[-len(late) // 2 :]
            assert all(b.receipt for b in last), "the writer did not recover after the restart"
            summary["failed_after_restart"] = len(failed_late)
        summary["in_flight_at_crash"] = sum(b.in_flight_at_crash for b in self.batches)
        return dict(summary)

    def _print(self, ids: Counter[str]) -> None:
        duplicates = sum(n - 1 for n in ids.values())
        acked = sum(b.receipt is not None for b in self.batches)
        print(
            f"\n{self.writer}: {len(self.batches)} batches, {acked} acknowledged, crash after "
            f"{self.crashed_after} receipts, "
            f"{sum(b.in_flight_at_crash for b in self.batches)} batches in flight during it; "
            f"rows={sum(ids.values())} unique={len(ids)} duplicates={duplicates}"
        )
        for note in self.notes:
            print(f"  {note}")
        for b in self.batches:
            copies = ids[b.ids[0]]
            if b.error is not None:
                print(f"  batch {b.k} (phase {b.phase}) failed, {copies} copies: {b.error}")
            elif copies != 1:
                print(f"  batch {b.k} (phase {b.phase}) acknowledged, {copies} copies")


class Progress:
    """What a crash may wait for and must mark: receipts, and the batches in flight."""

    def __init__(self, stack: CrashStack, run: CrashRun) -> None:
        self.stack = stack
        self.run = run
        self.in_flight: set[int] = set()
        self.crashing = False
        self._changed = asyncio.Condition()

    @property
    def receipts(self) -> int:
        return sum(b.receipt is not None for b in self.run.batches)

    async def acknowledged(self, n: int) -> None:
        """Return once n batches have their receipt and at least one is in flight."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.receipts >= n and bool(self.in_flight))

    def mark_crash(self) -> None:
        """Call just before the kill: the batches in flight now, and those that start
        until the crash returns, are in flight at the crash."""
        self.crashing = True
        self.run.crashed_after = self.receipts
        for b in self.run.batches:
            b.in_flight_at_crash = b.k in self.in_flight

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


Crash = Callable[[Progress], Awaitable[None]]


async def kill_stack(progress: Progress) -> None:
    """The default crash: SIGKILL the stack process."""
    progress.mark_crash()
    progress.stack.kill()


async def write_through_crash(
    stack: CrashStack,
    name: str,
    table: TableRef,
    *,
    writer_settings: WriterSettings | None = None,
    batches: int = 24,
    rows: int = 200,
    concurrency: int = 4,
    kill_after: int = 5,
    after_restart: int = 8,
    crash: Crash = kill_stack,
) -> CrashRun:
    """Write batches with writer `name` through a crash of the stack (see the module doc);
    phase 1 writes at most `batches`."""
    settings = {name: writer_settings} if writer_settings is not None else {}
    writer: DataWriterInterface = writer_class(name)(stack.targets(**settings))
    make = products.WORKLOAD.batches(seed=11)
    run = CrashRun(name)
    progress = Progress(stack, run)
    crashed = asyncio.Event()
    taken, limit = 0, batches

    async def write(phase: int) -> None:
        nonlocal taken
        while taken < limit and not (phase == 1 and crashed.is_set()):
            k, taken = taken, taken + 1
            batch_id = f"crash{k:03d}x{secrets.token_hex(4)}"
            batch = Batch(k, Rows(table, make(k, rows, batch_id, name), batch_id), phase)
            batch.in_flight_at_crash = progress.crashing and not crashed.is_set()
            run.batches.append(batch)
            progress.in_flight.add(k)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    batch.receipt = await writer.write(batch.rows)
            except TimeoutError:
                raise AssertionError(
                    f"{name}: the write of batch {k} hung for {WRITE_TIMEOUT_S:g} s"
                ) from None
            except DirectWriteError as exc:
                batch.error = exc
            finally:
                progress.in_flight.discard(k)
            await progress.notify()

    async def crash_and_restart() -> None:
        await progress.acknowledged(kill_after)
        began = time.monotonic()
        await crash(progress)
        crashed.set()
        if stack.killed:  # else the crash restarted it itself
            await asyncio.to_thread(stack.start)
        run.notes.append(f"crash to restarted: {time.monotonic() - began:.1f} s")

    await writer.open()
    try:
        await writer.prepare(table)
        await asyncio.gather(crash_and_restart(), *(write(1) for _ in range(concurrency)))
        limit = taken + after_restart
        await asyncio.gather(*(write(2) for _ in range(concurrency)))
    finally:
        await writer.close()
    return run


def _id_column(table: TableRef) -> str:
    assert table.id_column is not None
    return table.id_column
