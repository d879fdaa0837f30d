"""The Lakebase writer's pool under a benchmark: sized to the concurrency, and a wait for a
connection told apart from the server being unreachable."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

import writers.lakebase as lakebase
from dwbench.errors import PoolWaitError, WriterUnavailableError
from tests.writers import test_lakebase as lb
from tests.writers.test_lakebase import open_role_writer, product_rows, products_in
from writers.lakebase import LakebaseSettings

# The Lakebase writer tests' fixtures: the stack's superuser and a login role of its own.
admin = lb.admin
login_role = lb.login_role


async def _waiting_on_a_lock(superuser: psycopg.Connection[Any], role: str) -> None:
    """Until a session of `role` waits on a lock (its write holds its pooled connection)."""
    for _ in range(500):
        row = superuser.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'",
            [role],
        ).fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first write never reached the lock")


async def test_a_pool_wait_is_its_own_error_not_unavailable(
    local_stack, admin, login_role, monkeypatch
):
    monkeypatch.setattr(lakebase, "POOL_TIMEOUT_S", 0.5)  # read when the pool opens
    role = login_role
    ref = products_in(f"{role}.products")
    writer, _ = await open_role_writer(local_stack, admin, role, pool_max_size=1)
    try:
        first, second, third = (product_rows(ref, 20, seed=n) for n in (1, 2, 3))
        await writer.write(first)
        with admin.transaction():
            admin.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(role, "products")
                )
            )
            held = asyncio.create_task(writer.write(second))  # holds the one connection
            await _waiting_on_a_lock(admin, role)
            with pytest.raises(PoolWaitError) as caught:
                await writer.write(third)
        assert caught.value.status_code == 503 and caught.value.error == "pool_wait"
        server = psycopg.conninfo.conninfo_to_dict(local_stack["postgres_dsn"])
        assert caught.value.message == (
            "copy waited for a pooled connection: all 1 of the pool's connections to "
            f"{server['host']}:{server['port']} were in use (more batches in flight than "
            "connections), and it couldn't get a connection after 0.50 sec; nothing written"
        )
        assert (await held).rows == 20  # the lock gone, the held write commits
        assert await writer.count_rows(ref, second.batch_id) == 20
        assert await writer.count_rows(ref, third.batch_id) == 0
    finally:
        await writer.close()


async def test_a_pool_that_cannot_connect_is_unavailable_not_a_pool_wait(
    local_stack, admin, login_role, monkeypatch
):
    monkeypatch.setattr(lakebase, "POOL_TIMEOUT_S", 0.5)
    role = login_role
    ref = products_in(f"{role}.products")
    writer, _ = await open_role_writer(local_stack, admin, role, pool_max_size=1)
    try:
        await writer.write(product_rows(ref, 5, seed=1))
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        # The dropped connection, then a pool that cannot open a new one: both unavailable.
        for seed in (2, 3):
            with pytest.raises(WriterUnavailableError):
                await writer.write(product_rows(ref, 5, seed=seed))
    finally:
        admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        await writer.close()


async def test_the_pool_follows_the_concurrency_within_the_setting_and_the_server(
    local_stack, admin, login_role
):
    role = login_role
    writer, _ = await open_role_writer(local_stack, admin, role)
    try:
        assert await writer.reserve(4) is None
        assert writer._details()["pool"]["max_size"] == lakebase.POOL_MAX_SIZE  # at least
        assert await writer.reserve(40) is None
        assert writer._details()["pool"]["max_size"] == 41  # and one for visibility counts
        free = admin.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        ).fetchone()
        assert free is not None
        note = await writer.reserve(free[0] + 50)
        size = writer._details()["pool"]["max_size"]
        assert size < free[0]
        assert note == (
            f"pool of {size} connections (the server's free max_connections) for concurrency "
            f"{free[0] + 50}: up to {free[0] + 50 - size} batches wait for a connection, and "
            "one that waits over 30 s fails as a pool wait"
        )
    finally:
        await writer.close()
    capped, _ = await open_role_writer(
        local_stack, admin, role, lakebase=LakebaseSettings(pool_max_size=8)
    )
    try:
        assert capped._details()["pool"]["max_size"] == 8
        note = await capped.reserve(40)
        assert capped._details()["pool"]["max_size"] == 8
        assert note is not None and note.startswith(
            "pool of 8 connections (LAKEBASE_POOL_MAX_SIZE) for concurrency 40: up to 32 "
        )
    finally:
        await capped.close()
