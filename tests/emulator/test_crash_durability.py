"""Each interface's writer through a SIGKILL of its stand-in mid-batch and a restart on
the same data and ports: every row the writer was told is durable is in the table,
batches that failed are absent or whole, duplicates counted (tests/emulator/crash_support).

What happens, as observed:
- The Zerobus SDK streams (proto, JSON, Arrow) recover by themselves: they reconnect and
  send the unacknowledged batches again, so the batches in flight at the kill are
  acknowledged after the restart, and may be in the table twice.
- zerobus-rest fails the requests in flight (the connection's error), retries the ones
  that could not connect, and writes the next batches.
- sql and sql-copy: databricks-sdk re-sends a request whose connection broke (it retries
  every connection error, for 2 s in local mode), so a statement committed just before
  the kill can be committed again after the restart: whole batches twice. The stand-in's
  COPY INTO forgets across a restart which files it loaded (a warehouse would skip the
  file the second time). A statement still failing after the SDK's retries fails the batch.
- Lakebase: Postgres is a daemon of its own (`pg_ctl start`), not killed with the stack:
  it keeps serving the writer while the stack is dead, and a stack started on the same
  data dir stops it as an orphan (a fast shutdown) before starting its own. So its crash
  is a SIGKILL of the postmaster too, after which Postgres recovers from its WAL.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.emulator.crash_support import CrashStack, Progress, write_through_crash

# What the failed writes say; each names where and why.
ZEROBUS_LOST = r"Zerobus stream lost: |cannot open a Zerobus stream to .* at http://127\.0\.0\.1"
ERRORS = {
    "zerobus": ZEROBUS_LOST,
    "zerobus-json": ZEROBUS_LOST,
    "zerobus-arrow": ZEROBUS_LOST.replace("Zerobus ", "Zerobus Arrow "),
    "zerobus-rest": r"cannot connect to http://127\.0\.0\.1:\d+: |the request failed: \S",
    "sql": r"cannot reach the SQL API at http://127\.0\.0\.1:\d+: \S",
    # Or: the crash came after the COPY INTO committed and before its answer; the COPY INTO
    # sent again after the restart skips the loaded file (0 rows), so the batch is whole in
    # the table but not reported as written.
    "sql-copy": r"cannot reach the SQL API at http://127\.0\.0\.1:\d+: \S|COPY INTO "
    r"\(statement \S+\) loaded 0 rows of \S+, expected \d+; the batch is not reported",
}
POSTGRES_LOST = (
    r"(copy|connect) failed at 127\.0\.0\.1:\d+.*: .*; "
    r"(the transaction did not commit|the outcome of COMMIT is unknown)"
)
# The first write on a pooled connection that the server closed while it sat idle: the
# lakebase writer fails that batch (as tests/writers/test_lakebase.py's dropped-connection
# test has it), and the pool replaces the connection.
STALE_POOLED_CONNECTION = (
    r"copy failed at 127\.0\.0\.1:\d+(: consuming input failed: server closed the connection "
    r"unexpectedly| \(SQLSTATE 57P01\): terminating connection due to (administrator "
    r"command|unexpected postmaster exit)).*; the transaction did not commit"
)


@pytest.fixture
def delta_stack(tmp_path):
    stack = CrashStack(tmp_path / "data")
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def postgres_stack(tmp_path):
    stack = CrashStack(tmp_path / "data", postgres=True)
    stack.start()
    yield stack
    stack.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(ERRORS))
async def test_sigkill_mid_batch_loses_no_acknowledged_row(delta_stack, name):
    table = delta_stack.delta_table("crash")
    run = await write_through_crash(delta_stack, name, table)
    run.check(delta_stack.delta_ids(table), error=ERRORS[name])


@pytest.mark.timeout(60)
async def test_lakebase_postmaster_sigkill_loses_no_committed_row(postgres_stack):
    stack = postgres_stack

    async def crash(progress: Progress) -> None:
        postmaster = stack.postgres_pid()
        stack.kill()
        # Postgres outlives the stack, and the writer goes on committing through it.
        assert psutil.Process(postmaster).status() != psutil.STATUS_ZOMBIE
        await progress.acknowledged(progress.receipts + 3)
        progress.mark_crash()
        stack.kill_postgres()
        progress.run.notes.append(f"postmaster {postmaster} killed after the stack")

    table = stack.postgres_table("crash")
    run = await write_through_crash(stack, "lakebase", table, crash=crash, after_restart=12)
    ids = stack.postgres_ids(table)
    run.check(ids, error=POSTGRES_LOST, stale_connection=STALE_POOLED_CONNECTION)
    # A crash indeed: the new postmaster replayed the WAL.
    _, postgres_log = stack.logs()
    assert "not properly shut down; automatic recovery in progress" in postgres_log


@pytest.mark.timeout(60)
async def test_lakebase_orphaned_postgres_taken_over_loses_no_committed_row(postgres_stack):
    """The stack SIGKILLed alone: the restarted stack stops the orphaned Postgres (a fast
    shutdown, which ends the writer's transactions in flight) and starts its own."""
    stack = postgres_stack

    async def crash(progress: Progress) -> None:
        stack.kill()
        await progress.acknowledged(progress.receipts + 3)
        progress.mark_crash()
        await asyncio.to_thread(stack.start)  # while the writer goes on writing

    table = stack.postgres_table("orphan")
    # Batches go on until the take-over is done, so that some are in flight when it comes.
    run = await write_through_crash(
        stack, "lakebase", table, crash=crash, batches=1000, after_restart=12
    )
    ids = stack.postgres_ids(table)
    run.check(ids, error=POSTGRES_LOST, stale_connection=STALE_POOLED_CONNECTION)
    # The orphan was stopped cleanly (no WAL replay) by the new stack, not by us.
    stack_log, postgres_log = stack.logs()
    assert "event=postgres.orphan_found" in stack_log
    assert "received fast shutdown request" in postgres_log
    assert "automatic recovery in progress" not in postgres_log
