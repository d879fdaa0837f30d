"""The Lakebase writer against the local stack's embedded PostgreSQL: real sockets, real auth."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dwbench.errors import WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from tests.conftest import local_targets
from workloads.products import ProductRecord, build_records, sample_items
from writers.base import Targets
from writers.lakebase import (
    POOL_MAX_SIZE,
    DatabaseCredentialProvider,
    LakebaseWriter,
    parse_table,
)

COLUMN_LIST = (
    "record_id, product_id, product_name, product_price, category, sale_start_date, "
    "sale_stop_date, processed_at, batch_id, source, description"
)


@pytest.fixture
def admin(local_stack: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    """The stack's own role (a superuser), for setting up and reading back."""
    with psycopg.connect(local_stack["postgres_dsn"], autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"public.lakebase_{secrets.token_hex(4)}"
    yield name
    admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*name.split("."))))


async def open_writer(targets: Targets, **kwargs: Any) -> LakebaseWriter:
    writer = LakebaseWriter(targets, **kwargs)
    await writer.open()
    return writer


@pytest.fixture(params=["copy", "insert"])
async def writer(local_stack: dict[str, Any], table: str, request: Any) -> AsyncIterator[Any]:
    targets = local_targets(local_stack, lakebase_table=table, lakebase_write_mode=request.param)
    writer = await open_writer(targets)
    yield writer
    await writer.close()


def read_rows(admin: psycopg.Connection[Any], table: str, batch_id: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} WHERE batch_id = %s ORDER BY record_id").format(
        sql.SQL(COLUMN_LIST), sql.Identifier(*table.split("."))
    )
    return admin.execute(query, [batch_id]).fetchall()


def tricky_records(batch_id: str) -> list[ProductRecord]:
    """Values that break naive encodings: quotes, escapes, unicode, NULLs, odd time zones."""
    at = dt.datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
    texts = [
        "O'Brien's \"best\" watch",
        "tab\there, newline\nthere, backslash \\ and \\N",
        "ünïcödé — 日本語 — 🚀 — e\u0301",
        ",;|\r\n",
        "",
    ]
    records = build_records(sample_items(len(texts), seed=7), batch_id=batch_id, source="lakebase")
    out = []
    for i, (record, text) in enumerate(zip(records, texts, strict=True)):
        out.append(
            ProductRecord(
                record_id=record.record_id,
                product_id=f"P{i}",
                product_name=text or "x",
                product_price=[0.0, 0.1, 1e12, 123.456789012345, 2.5e-300][i],
                category=text or "other",
                sale_start_date=None if i == 2 else dt.date(1970 + 20 * i, 1, 1),
                sale_stop_date=None if i == 2 else dt.date(9999, 12, 31),
                processed_at=at + dt.timedelta(microseconds=i),
                batch_id=batch_id,
                source="lakebase",
                description=None if i % 2 else text * 3,
            )
        )
    return out


async def test_open_creates_the_table_with_its_index_and_is_available(writer, admin, table):
    schema, name = table.split(".")
    indexes = admin.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s", [schema, name]
    ).fetchall()
    defs = " ".join(row[0] for row in indexes)
    assert "UNIQUE" in defs and "(record_id)" in defs and "(batch_id)" in defs
    not_null = admin.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND is_nullable = 'NO'",
        [schema, name],
    ).fetchall()
    assert sorted(row[0] for row in not_null) == sorted(
        ["record_id", "product_id", "product_name", "product_price", "category"]
    )
    types = dict(
        admin.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            [schema, name],
        ).fetchall()
    )
    assert types["product_price"] == "double precision" and types["sale_stop_date"] == "date"
    assert types["processed_at"] == "timestamp with time zone" and types["record_id"] == "text"
    state = await writer.availability()
    assert state.available, state.reason
    assert state.details["table"] == table and state.details["auth"] == "password (local)"
    assert state.details["write_mode"] == writer.write_mode
    password = conninfo_to_dict(writer.targets.postgres_dsn.get_secret_value())["password"]
    assert password not in repr(state)
    # A second writer on the existing table opens without DDL.
    again = await open_writer(writer.targets)
    await again.close()
    await again.close()  # twice is fine


async def test_rows_land_with_exact_values(writer, admin, table):
    batch_id = secrets.token_hex(8)
    records = tricky_records(batch_id)
    receipt = await writer.write(records)
    assert receipt.rows == len(records)
    if writer.write_mode == "copy":
        assert receipt.details == {"mode": "copy", "rows_copied": 5, "transaction": "committed"}
    else:
        assert receipt.details == {"mode": "insert", "rows_inserted": 5, "transaction": "committed"}
    rows = read_rows(admin, table, batch_id)
    assert rows == [r.as_tuple() for r in records]
    stored_at = rows[4][7]
    assert stored_at.tzinfo is not None and stored_at.microsecond == 3
    assert await writer.count_rows(batch_id) == 5


async def test_a_large_batch_in_one_transaction(writer, admin, table):
    batch_id = secrets.token_hex(8)
    items = sample_items(2_000, seed=3, description_bytes=100)
    records = build_records(items, batch_id=batch_id, source="lakebase")
    assert (await writer.write(records)).rows == 2_000
    assert await writer.count_rows(batch_id) == 2_000
    assert read_rows(admin, table, batch_id)[1999] == records[1999].as_tuple()
    assert (await writer.write([])).rows == 0


async def test_a_duplicate_record_id_fails_the_whole_batch(writer, table):
    batch_id = secrets.token_hex(8)
    records = build_records(sample_items(300, seed=5), batch_id=batch_id, source="lakebase")
    with pytest.raises(WriteFailedError) as caught:
        await writer.write([*records, records[150]])
    message = caught.value.message
    assert "23505" in message and "UniqueViolation" in message and "record_id" in message
    assert "no rows of the batch were written" in message
    assert await writer.count_rows(batch_id) == 0
    # The connection went back to the pool healthy; the same rows without the duplicate land.
    assert (await writer.write(records)).rows == 300
    # Writing a committed batch again is refused and changes nothing.
    with pytest.raises(WriteFailedError, match="23505"):
        await writer.write(records)
    assert await writer.count_rows(batch_id) == 300


async def test_a_value_postgres_refuses_fails_the_whole_batch(writer):
    batch_id = secrets.token_hex(8)
    good = build_records(sample_items(10, seed=6), batch_id=batch_id, source="lakebase")
    bad = ProductRecord(**{**good[9].as_dict(), "product_name": "nul\x00byte"})
    with pytest.raises(WriteFailedError, match="22021|NUL"):  # server (COPY) or client
        await writer.write([*good[:9], bad])
    surrogate = ProductRecord(**{**good[9].as_dict(), "description": "\ud800"})
    with pytest.raises(WriteFailedError, match="surrogates"):
        await writer.write([*good[:9], surrogate])
    assert await writer.count_rows(batch_id) == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_server_is_unavailable_fast_and_says_why(local_stack, table):
    password = "very-secret-" + secrets.token_hex(8)
    port = closed_port()
    dsn = f"postgresql://dwbench:{password}@127.0.0.1:{port}/dwbench"
    targets = local_targets({**local_stack, "postgres_dsn": dsn}, lakebase_table=table)
    writer = LakebaseWriter(targets)
    began = time.monotonic()
    with pytest.raises(WriterUnavailableError) as caught:
        await writer.open()
    assert time.monotonic() - began < 5
    message = caught.value.message
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert password not in message
    state = await writer.availability()
    assert not state.available and state.reason == message
    assert state.details["port"] == port and password not in repr(state)
    with pytest.raises(WriterUnavailableError, match="not open"):
        await writer.write(tricky_records("x"))
    await writer.close()


async def test_the_table_name_is_checked_and_quoted(local_stack):
    assert parse_table("Public.Products") == ("public", "products")
    for bad in ("products", "a.b.c", "public.products; drop table x", 'public."x"', "1a.b"):
        with pytest.raises(WriterUnavailableError, match="LAKEBASE_TABLE"):
            parse_table(bad)
    writer = LakebaseWriter(local_targets(local_stack, lakebase_table="public.x-y"))
    with pytest.raises(WriterUnavailableError, match="LAKEBASE_TABLE"):
        await writer.open()


async def test_databricks_mode_says_what_is_missing():
    settings = Settings(app_mode="databricks", pghost="instance.database.example.com")
    writer = LakebaseWriter(Targets(mode="databricks", settings=settings))
    with pytest.raises(WriterUnavailableError) as caught:
        await writer.open()
    message = caught.value.message
    for var in ("PGDATABASE", "PGUSER", "LAKEBASE_INSTANCE_NAME", "DATABRICKS_CLIENT_SECRET"):
        assert var in message
    assert "PGHOST" not in message


async def test_databricks_mode_insists_on_tls_and_asks_the_provider(local_stack, table):
    pg = conninfo_to_dict(local_stack["postgres_dsn"])
    settings = Settings(
        app_mode="databricks",
        databricks_host="https://workspace.example.invalid",
        databricks_client_id="app-sp",
        databricks_client_secret="sp-secret",
        pghost=pg["host"],
        pgport=int(pg["port"]),
        pgdatabase=pg["dbname"],
        pguser=pg["user"],
        pgsslmode="disable",  # Lakebase needs TLS whatever the variable says
        lakebase_instance_name="my-instance",
        lakebase_table=table,
    )
    provider = RotatingPassword("oauth-token-" + secrets.token_hex(8))
    writer = LakebaseWriter(
        Targets(mode="databricks", settings=settings), password_provider=provider
    )
    with pytest.raises(WriterUnavailableError, match="SSL") as caught:  # the local server has none
        await writer.open()
    assert provider.served == [provider.current]
    assert provider.current not in caught.value.message
    state = await writer.availability()
    assert not state.available
    assert state.details["sslmode"] == "require"
    assert state.details["auth"] == (
        "oauth token via generate_database_credential (instance my-instance)"
    )


# -- token rotation ---------------------------------------------------------------------------


class RotatingPassword:
    """A password provider whose value the test changes, as Lakebase's tokens change."""

    def __init__(self, password: str) -> None:
        self.current = password
        self.served: list[str] = []

    async def __call__(self) -> str:
        self.served.append(self.current)
        return self.current


def set_password(admin: psycopg.Connection[Any], role: str, password: str) -> None:
    verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    admin.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(verifier.decode())
        )
    )


@pytest.fixture
def login_role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A role of its own with a schema of its own, so the stack's password stays untouched."""
    role = f"dwb_rotation_{secrets.token_hex(4)}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin.execute(
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(role), sql.Identifier(role)
        )
    )
    yield role
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
    )
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def role_dsn(local_stack: dict[str, Any], role: str, password: str) -> str:
    params = conninfo_to_dict(local_stack["postgres_dsn"])
    return make_conninfo(**{**params, "user": role, "password": password})


def backend_starts(admin: psycopg.Connection[Any], role: str) -> list[dt.datetime]:
    rows = admin.execute(
        "SELECT backend_start FROM pg_stat_activity WHERE usename = %s", [role]
    ).fetchall()
    return [row[0] for row in rows]


async def test_new_pooled_connections_use_the_rotated_password(local_stack, admin, login_role):
    role = login_role
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    set_password(admin, role, old)
    provider = RotatingPassword(old)
    # The DSN carries no usable password: every connection asks the provider.
    endpoints = {**local_stack, "postgres_dsn": role_dsn(local_stack, role, "unused")}
    targets = local_targets(endpoints, lakebase_table=f"{role}.products")
    writer = await open_writer(targets, password_provider=provider, max_lifetime_s=0.5)
    try:
        batches = [secrets.token_hex(8) for _ in range(4)]
        await writer.write(build_records(sample_items(50), batch_id=batches[0], source="t"))
        assert set(provider.served) == {old}

        set_password(admin, role, new)
        provider.current = new
        rotated_at = admin.execute("SELECT now()").fetchone()[0]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(role_dsn(local_stack, role, old), connect_timeout=5).close()

        # Pooled connections outlive their max_lifetime only until they are returned: the
        # next writes retire them, and their replacements log in with the new password.
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + 10
        for batch_id in batches[1:]:
            records = build_records(sample_items(50), batch_id=batch_id, source="t")
            assert (await writer.write(records)).rows == 50
        while True:
            starts = backend_starts(admin, role)
            if starts and all(start > rotated_at for start in starts):
                break
            assert time.monotonic() < deadline, f"old connections remain: {starts}"
            await writer.write([])
            await asyncio.sleep(0.05)
        assert new in provider.served
        assert provider.served[provider.served.index(new) :] == [new] * (
            len(provider.served) - provider.served.index(new)
        )
        assert (await writer.availability()).available
        for batch_id in batches:
            assert await writer.count_rows(batch_id) == 50
    finally:
        await writer.close()

    # A writer still holding the old password is refused, and says why without showing it.
    stale = LakebaseWriter(targets, password_provider=RotatingPassword(old))
    with pytest.raises(WriterUnavailableError, match="password authentication failed") as caught:
        await stale.open()
    assert old not in caught.value.message and new not in caught.value.message


async def open_role_writer(
    local_stack: dict[str, Any],
    admin: psycopg.Connection[Any],
    role: str,
    *,
    pool_max_size: int = POOL_MAX_SIZE,
    **settings: Any,
) -> tuple[LakebaseWriter, str]:
    """A writer logging in as `role` with a fresh password, into the role's own schema."""
    password = secrets.token_urlsafe(16)
    set_password(admin, role, password)
    endpoints = {**local_stack, "postgres_dsn": role_dsn(local_stack, role, password)}
    targets = local_targets(endpoints, lakebase_table=f"{role}.products", **settings)
    return await open_writer(targets, pool_max_size=pool_max_size), password


async def test_a_dropped_connection_fails_the_write_then_the_pool_recovers(
    local_stack, admin, login_role
):
    role = login_role
    writer, password = await open_role_writer(local_stack, admin, role)
    try:
        first, second = secrets.token_hex(8), secrets.token_hex(8)
        await writer.write(build_records(sample_items(20), batch_id=first, source="t"))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        records = build_records(sample_items(20), batch_id=second, source="t")
        with pytest.raises(WriterUnavailableError, match="did not commit") as caught:
            await writer.write(records)
        assert password not in caught.value.message
        assert (await writer.availability()).available
        assert (await writer.write(records)).rows == 20
        assert await writer.count_rows(first) == 20 and await writer.count_rows(second) == 20
    finally:
        await writer.close()


async def test_a_server_that_stops_answering_fails_the_write_in_bounded_time(
    local_stack, admin, login_role
):
    role = login_role
    writer, _ = await open_role_writer(
        local_stack, admin, role, pool_max_size=1, lakebase_write_timeout_s=1.0
    )
    frozen: list[int] = []
    try:
        first, second, third = (secrets.token_hex(8) for _ in range(3))
        await writer.write(build_records(sample_items(20), batch_id=first, source="t"))
        # Freeze this writer's server process (its one pooled connection), mid-session.
        frozen = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s", [role]
            ).fetchall()
        ]
        assert len(frozen) == 1
        os.kill(frozen[0], signal.SIGSTOP)
        started = time.perf_counter()
        with pytest.raises(WriteFailedError) as caught:
            await writer.write(build_records(sample_items(20), batch_id=second, source="t"))
        took = time.perf_counter() - started
        server = conninfo_to_dict(local_stack["postgres_dsn"])
        assert caught.value.message == (
            f"copy: no answer from {server['host']}:{server['port']} within 1 s; "
            "the transaction was cancelled and did not commit"
        )
        # The timeout, then psycopg's own wait for the cancelled query before it drops
        # the connection (5 s).
        assert took < 1.0 + 5.0 + 3.0
        os.kill(frozen.pop(), signal.SIGCONT)

        assert (
            await writer.write(build_records(sample_items(7), batch_id=third, source="t"))
        ).rows == 7
        assert await writer.count_rows(first) == 20
        assert await writer.count_rows(second) == 0
        assert await writer.count_rows(third) == 7
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        await writer.close()


# -- the Databricks credential provider, with an in-repo stand-in for the SDK client ----------


class FakeDatabaseAPI:
    """What the provider uses of `WorkspaceClient.database`, answering like the service."""

    def __init__(self, clock: list[float], lifetime_s: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.calls: list[dict[str, Any]] = []

    def generate_database_credential(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        expires = dt.datetime.fromtimestamp(self.clock[0] + self.lifetime_s, dt.UTC)
        return SimpleNamespace(
            token=f"token-{len(self.calls)}",
            expiration_time=expires.isoformat().replace("+00:00", "Z"),
        )


async def test_credentials_are_reused_briefly_and_never_past_expiry():
    now = [1_000_000.0]
    api = FakeDatabaseAPI(now)
    provider = DatabaseCredentialProvider(
        SimpleNamespace(database=api), "my-instance", reuse_s=300, clock=lambda: now[0]
    )
    assert await asyncio.gather(provider(), provider(), provider()) == ["token-1"] * 3
    assert len(api.calls) == 1
    assert api.calls[0]["instance_names"] == ["my-instance"] and api.calls[0]["request_id"]
    now[0] += 299
    assert await provider() == "token-1"
    now[0] += 2
    assert await provider() == "token-2"
    assert api.calls[1]["request_id"] != api.calls[0]["request_id"]
    # A token close to its expiry is not handed out again.
    api.lifetime_s = 200
    now[0] += 1000
    assert await provider() == "token-3"
    assert await provider() == "token-4"


async def test_a_failing_credential_call_is_unavailable():
    class Refusing:
        def generate_database_credential(self, **kwargs: Any) -> Any:
            raise PermissionError("PERMISSION_DENIED: not allowed on instance")

    provider = DatabaseCredentialProvider(SimpleNamespace(database=Refusing()), "inst")
    with pytest.raises(WriterUnavailableError, match="PERMISSION_DENIED"):
        await provider()
