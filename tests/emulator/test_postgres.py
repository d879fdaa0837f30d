"""EmbeddedPostgres against a real server, through real psycopg connections."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from emulator.postgres import EmbeddedPostgres, PostgresStartError, superuser_conninfo

PASSWORD = "first-Secret-42"
MakeServer = Callable[..., EmbeddedPostgres]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pg"


@pytest.fixture
def make_server(data_dir: Path) -> Iterator[MakeServer]:
    servers: list[EmbeddedPostgres] = []

    def make(
        password: str = PASSWORD, *, directory: Path | None = None, port: int = 0
    ) -> EmbeddedPostgres:
        server = EmbeddedPostgres(directory or data_dir, password=password, port=port)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def is_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for its (re)parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.02)


def create_rows(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')")


def read_rows(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()


ROWS = [(1, "one"), (2, "two"), (3, "three")]


def test_data_survives_restart(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    create_rows(server.dsn)
    server.stop()

    server.start()
    assert read_rows(server.dsn) == ROWS
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "dwbench",
            "dwbench",
        )


def test_wrong_password_is_rejected(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn.replace(PASSWORD, "not-the-password"), connect_timeout=5)


def test_listens_only_on_the_loopback_host(make_server: MakeServer, data_dir: Path) -> None:
    server = make_server()
    server.start()
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == (server.host,)
        assert conn.execute("SHOW port").fetchone() == (str(server.port),)
    listening = [
        conn.laddr
        for conn in psutil.Process(postmaster_pid(data_dir)).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening == [(server.host, server.port)]


def test_dsn_and_masked_dsn(make_server: MakeServer, data_dir: Path) -> None:
    server = make_server()
    assert server.dsn == f"postgresql://dwbench:{PASSWORD}@127.0.0.1:{server.port}/dwbench"
    assert server.dsn_masked == f"postgresql://dwbench:***@127.0.0.1:{server.port}/dwbench"
    assert server.log_path.parent == data_dir


def test_new_password_replaces_the_old_one(make_server: MakeServer) -> None:
    first = make_server()
    first.start()
    create_rows(first.dsn)
    first.stop()

    second = make_server(password="second-Secret-43")
    second.start()
    assert read_rows(second.dsn) == ROWS
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(second.dsn.replace("second-Secret-43", PASSWORD), connect_timeout=5)
    assert "second-Secret-43" not in second.log_path.read_text()


def test_start_after_the_postmaster_was_killed(make_server: MakeServer, data_dir: Path) -> None:
    server = make_server()
    server.start()
    create_rows(server.dsn)
    pid = postmaster_pid(data_dir)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)

    server.start()
    assert postmaster_pid(data_dir) != pid
    assert read_rows(server.dsn) == ROWS


def test_start_stops_an_orphan_server_on_the_same_data_dir(
    make_server: MakeServer, data_dir: Path
) -> None:
    # The first instance stands for an earlier process that died without stopping postgres.
    orphan = make_server()
    orphan.start()
    create_rows(orphan.dsn)
    orphan_pid = postmaster_pid(data_dir)

    server = make_server()
    server.start()
    wait_gone(orphan_pid)
    assert postmaster_pid(data_dir) != orphan_pid
    assert read_rows(server.dsn) == ROWS


def test_stop_is_idempotent_and_safe_before_start(make_server: MakeServer, data_dir: Path) -> None:
    server = make_server()
    server.stop()
    server.start()
    pid = postmaster_pid(data_dir)
    server.stop()
    server.stop()
    wait_gone(pid)
    assert not (data_dir / "postmaster.pid").exists()


def test_long_data_dir_uses_a_short_private_socket_dir(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / ("d" * 100) / "pg"
    server = make_server(directory=data_dir)
    server.start()
    socket_dir = Path((data_dir / "postmaster.pid").read_text().splitlines()[4])
    assert socket_dir != data_dir
    assert len(os.fsencode(socket_dir / f".s.PGSQL.{server.port}")) <= 107
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.stop()
    assert not socket_dir.exists()


def test_port_in_use_is_a_clear_error_without_the_password(make_server: MakeServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = make_server(port=taken.getsockname()[1])
        with pytest.raises(PostgresStartError, match="already in use") as error:
            server.start()
    assert PASSWORD not in str(error.value)


def test_non_loopback_host_is_refused(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedPostgres(data_dir, host="0.0.0.0", password=PASSWORD)


# -- roles: the writer is no superuser ---------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "COPY probe FROM PROGRAM 'id'",
        "COPY probe FROM '/etc/passwd'",
        "COPY probe TO '/tmp/dwbench-pg-probe'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_ls_dir('.')",
        "CREATE ROLE intruder LOGIN",
        "ALTER ROLE dwbench SUPERUSER",
        "CREATE DATABASE other",
        "ALTER SYSTEM SET listen_addresses = '*'",
        "GRANT pg_execute_server_program TO dwbench",
        "SET ROLE dwbench_admin",
    ],
)
def test_the_writer_role_cannot_reach_the_host(make_server: MakeServer, statement: str) -> None:
    server = make_server()
    server.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (line text)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (0,)
    assert not Path("/tmp/dwbench-pg-probe").exists()


def test_the_writer_owns_the_apps_database_and_what_it_creates(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    create_rows(server.dsn)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA serving")
        conn.execute("CREATE TABLE serving.events (id bigint GENERATED ALWAYS AS IDENTITY)")
        role = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False, False, False, False)
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert owner == ("dwbench",)
        supers = conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper").fetchall()
        assert supers == [("dwbench_admin",)]


def test_the_superuser_password_is_not_the_token(make_server: MakeServer, data_dir: Path) -> None:
    server = make_server()
    server.start()
    admin_over_tcp = server.dsn.replace("postgresql://dwbench:", "postgresql://dwbench_admin:")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(admin_over_tcp, connect_timeout=5)
    # The superuser is reachable over the private socket only, by the server's OS user.
    with psycopg.connect(superuser_conninfo(data_dir)) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (True,)


def test_a_cluster_whose_superuser_was_the_writer_is_converted(
    make_server: MakeServer, data_dir: Path
) -> None:
    """A data dir made by an earlier version: bootstrap superuser `dwbench`, its password
    the token. Its data stays, and the writer loses every privilege beyond its own data."""
    legacy = make_server()
    legacy._prepare_data_dir()
    initdb = legacy._run(
        "initdb",
        "-D",
        str(data_dir),
        "-U",
        "dwbench",
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "--no-locale",
        "--encoding=UTF8",
        timeout=120,
    )
    assert initdb.returncode == 0, initdb.stderr
    options = f"-c listen_addresses='' -c unix_socket_directories={data_dir} -p 5999"
    start = legacy._run("pg_ctl", "start", "-D", str(data_dir), "-w", "-o", options, timeout=60)
    assert start.returncode == 0, start.stderr
    try:
        old = f"host={data_dir} port=5999 user=dwbench dbname=postgres"
        with psycopg.connect(old, autocommit=True) as conn:
            conn.execute("CREATE DATABASE dwbench OWNER dwbench")
        with psycopg.connect(old.replace("dbname=postgres", "dbname=dwbench")) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
            conn.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')")
            conn.execute("CREATE SCHEMA serving")
            conn.execute("CREATE TABLE serving.events (id serial PRIMARY KEY, at timestamptz)")
            conn.execute("CREATE SEQUENCE loose_seq")
            conn.execute("CREATE TYPE mood AS ENUM ('ok', 'bad')")
            conn.execute(
                "CREATE FUNCTION notify_items() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RETURN NEW; END $$"
            )
    finally:
        stop = legacy._run("pg_ctl", "stop", "-D", str(data_dir), "-m", "fast", "-w", timeout=60)
        assert stop.returncode == 0, stop.stderr

    server = make_server()
    server.start()
    assert read_rows(server.dsn) == ROWS
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'dwbench'"
        ).fetchone() == (False,)
        conn.execute("INSERT INTO items VALUES (4, 'four')")
        conn.execute("INSERT INTO serving.events (at) VALUES (now())")
        conn.execute("SELECT nextval('loose_seq')")
        conn.execute("DROP FUNCTION notify_items()")
        conn.execute("DROP TYPE mood")
        conn.execute("DROP SCHEMA serving CASCADE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY items (name) FROM PROGRAM 'id'")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            server.dsn.replace("postgresql://dwbench:", "postgresql://dwbench_bootstrap:"),
            connect_timeout=5,
        )
    # A start that stopped half-way (renamed, not all adopted) is finished by the next one.
    with psycopg.connect(superuser_conninfo(data_dir), autocommit=True) as conn:
        conn.execute("ALTER TABLE items OWNER TO dwbench_bootstrap")
    server.stop()
    server.start()
    assert read_rows(server.dsn) == [*ROWS, (4, "four")]
