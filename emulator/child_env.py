"""The environment the local stack's child processes get: what they need, nothing inherited.

The app that starts the stack holds workspace credentials (`DATABRICKS_CLIENT_SECRET`,
`DATABRICKS_TOKEN`) and secrets of its own in its environment; a child started with
`os.environ` would carry them all, readable in `/proc/<pid>/environ` by anything the
child runs and by any bug that reads a file. So children get an allowlist, not the parent's
environment minus a denylist that can never be complete:

- every child: `PATH`, the locale (`LANG`, `LANGUAGE`, `LC_*`), `TZ`, `HOME`, `USER`,
  `LOGNAME`, the temporary directory (`TMPDIR`, `TMP`, `TEMP`), `LD_LIBRARY_PATH` and
  `XDG_RUNTIME_DIR`;
- the stack process also: the interpreter's own `PYTHON*` settings, gRPC's `GRPC_*`, the
  stack's `LOCAL_STACK_*` (its token) and coverage's `COVERAGE_*` (tests measure it);
- Postgres tools (`initdb`, `pg_ctl`, the postmaster): the common set only, no `PG*`
  variable (a `PGPASSWORD` or `PGHOST` meant for another server must not steer them).

The caller adds what it sets itself (the token, `PYTHONPATH`, the server user's `HOME`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_COMMON = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TMP",
        "TEMP",
        "LD_LIBRARY_PATH",
        "XDG_RUNTIME_DIR",
    }
)
_COMMON_PREFIXES = ("LC_",)
_STACK_PREFIXES = ("PYTHON", "GRPC_", "LOCAL_STACK_", "COVERAGE_")


def _kept(name: str, prefixes: tuple[str, ...]) -> bool:
    return name in _COMMON or name.startswith(_COMMON_PREFIXES + prefixes)


def stack_environment(
    extra: Mapping[str, str] | None = None, *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of the `python -m emulator` child: the allowlist, then `extra`."""
    source = os.environ if parent is None else parent
    env = {k: v for k, v in source.items() if _kept(k, _STACK_PREFIXES)}
    env.update(extra or {})
    return env


def postgres_environment(
    extra: Mapping[str, str] | None = None, *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of initdb, pg_ctl and the server: the common allowlist, then `extra`."""
    source = os.environ if parent is None else parent
    env = {k: v for k, v in source.items() if _kept(k, ())}
    env.update(extra or {})
    return env


def allowlisted_environment(
    prefixes: tuple[str, ...] = (), *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The common allowlist and the variables starting with `prefixes`, for another kind
    of child (the app's benchmark worker)."""
    source = os.environ if parent is None else parent
    return {k: v for k, v in source.items() if _kept(k, prefixes)}
