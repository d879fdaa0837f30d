"""Recovering a Delta table whose log tail a power loss tore, before the table is opened.

A commit is acknowledged only once its data files and log entry are fsynced
(`emulator.table_writer`), so what a power loss can leave behind is a tail that was never
acknowledged: a last commit that is empty or cut short (or lists fewer actions than its
commitInfo counts), a commit whose data files did not reach the disk, a checkpoint or
`_last_checkpoint` that is garbage. delta-rs reads an empty commit as one without actions,
and refuses to open a table with a truncated commit or a bad checkpoint, so the table
would vanish from the catalog.

`recover_table` checks the tail and, when it is torn, takes the table back to its last
complete version: the bad files are moved aside into `<data_dir>/quarantine/<time>/`,
never deleted, the moves are fsynced, and an `Incident` says what was found and done.
Only the tail is checked (the commits since the newest readable checkpoint, and the last
`TAIL_COMMITS`): anything older was durable before later commits were even written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import structlog
from deltalake import DeltaTable

from emulator.table_writer import data_file

log = structlog.get_logger(__name__)

QUARANTINE_DIR = "quarantine"
Sync = Callable[[Path], None]
# How many of the newest commits have their data files checked (a commit's files are
# fsynced before the next commit of its writer starts, so only the last few can lack them).
TAIL_COMMITS = 20

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.\d+\.\d+)?\.parquet$")
# commitInfo operation metrics that count a commit's add and remove actions, by operation.
_ACTION_COUNTS = {
    "WRITE": ("num_added_files", "num_removed_files"),
    "OPTIMIZE": ("numFilesAdded", "numFilesRemoved"),
}


@dataclass(frozen=True)
class Incident:
    """What recovery found in one table and what it did about it."""

    table: str
    at: str  # ISO time, UTC
    problems: tuple[str, ...]
    # The table's version after recovery; None when nothing of it could be kept.
    recovered_version: int | None
    removed_versions: tuple[int, ...]
    # Relative to the data directory: messages carry no absolute paths.
    quarantine: str
    quarantined: tuple[str, ...] = field(default=())
    recovered: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "at": self.at,
            "problems": list(self.problems),
            "recovered": self.recovered,
            "recovered_version": self.recovered_version,
            "removed_versions": list(self.removed_versions),
            "quarantine": self.quarantine,
            "quarantined": list(self.quarantined),
        }


def recover_table(
    data_dir: Path,
    path: Path,
    name: str,
    *,
    sync: Callable[[Path], None],
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Incident | None:
    """Check the log tail of the table at `path`; repair it if torn (see the module doc).

    Returns None when the table is whole, else the incident (also logged)."""
    log_dir = path / "_delta_log"
    commits: dict[int, Path] = {}
    checkpoints: dict[int, list[Path]] = {}
    for entry in log_dir.iterdir():
        if m := _COMMIT.match(entry.name):
            commits[int(m.group(1))] = entry
        elif m := _CHECKPOINT.match(entry.name):
            checkpoints.setdefault(int(m.group(1)), []).append(entry)
    problems: list[str] = []

    # Newest first, down to the first readable one: the table is read from there on.
    bad_checkpoints: set[int] = set()
    base = -1
    for version in sorted(checkpoints, reverse=True):
        why = next(filter(None, map(_unreadable_parquet, checkpoints[version])), None)
        if why is None:
            base = version
            break
        problems.append(f"checkpoint of version {version} is unreadable: {why}")
        bad_checkpoints.add(version)
    good_checkpoints = sorted(v for v in checkpoints if v <= base)
    latest = max(commits, default=-1)

    torn: int | None = None  # the first version that is not whole; it and later ones go
    actions: dict[int, list[dict[str, Any]]] = {}
    for version in range(min(base + 1, max(latest - TAIL_COMMITS, 0)), latest + 1):
        if version not in commits:
            if version > base:  # a gap before a checkpoint's version is not read
                problems.append(f"commit of version {version} is missing")
                torn = version
                break
            continue
        parsed, why = _parse_commit(commits[version])
        if why is not None:
            problems.append(f"commit of version {version} {why}")
            torn = version
            break
        actions[version] = parsed
    if (missing := _first_without_data(path, actions, latest - TAIL_COMMITS)) is not None:
        version, why = missing
        if torn is None or version < torn:
            problems.append(f"commit of version {version}: {why}")
            torn = version

    moves: list[Path] = []
    removed: list[int] = []
    if torn is not None:
        removed = [v for v in sorted(commits) if v >= torn]
        moves += [commits[v] for v in removed]
        # Their data files too (those there are): no version names them any more, so a
        # vacuum would delete them, and they may hold rows someone wants back.
        moves += [f for v in removed for f in _files_named(path, commits[v]) if f.exists()]
    for version in sorted(checkpoints):
        if version in bad_checkpoints or (torn is not None and version >= torn):
            moves += checkpoints[version]
    last = log_dir / "_last_checkpoint"
    if last.exists():
        why = _bad_last_checkpoint(last, set(good_checkpoints), torn)
        if why is not None:
            problems.append(f"_last_checkpoint {why}")
            moves.append(last)
    if not problems:
        return None

    at = now()
    quarantine = _quarantine_dir(data_dir, at)
    if torn == 0:
        moves = [path]  # not even its first commit is whole: the table as a whole
    _move_aside(data_dir, quarantine, moves, sync)

    recovered_version: int | None = None
    recovered = torn != 0
    if recovered:
        try:
            recovered_version = DeltaTable(str(path)).version()
        except Exception as exc:
            # Never left in place: the catalog would skip it and its name could not be
            # created again. The whole table goes with the files already moved.
            problems.append(
                f"the table does not open after recovery ({short_error(exc)}): set aside whole"
            )
            recovered = False
            moves = [path]
            _move_aside(data_dir, quarantine, moves, sync)
    return _reported(
        data_dir,
        Incident(
            table=name,
            at=at.isoformat(),
            problems=tuple(problems),
            recovered_version=recovered_version,
            removed_versions=tuple(removed),
            quarantine=str(quarantine.relative_to(data_dir)),
            quarantined=tuple(str(s.relative_to(data_dir)) for s in moves),
            recovered=recovered,
        ),
    )


def set_aside_table(
    data_dir: Path,
    path: Path,
    name: str,
    problem: str,
    *,
    sync: Callable[[Path], None],
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Incident:
    """Move a table that does not open into the quarantine, whole, so the stack starts
    and the name is free; nothing of it is deleted."""
    at = now()
    quarantine = _quarantine_dir(data_dir, at)
    _move_aside(data_dir, quarantine, [path], sync)
    return _reported(
        data_dir,
        Incident(
            table=name,
            at=at.isoformat(),
            problems=(f"the table does not open ({problem}): set aside whole",),
            recovered_version=None,
            removed_versions=(),
            quarantine=str(quarantine.relative_to(data_dir)),
            quarantined=(str(path.relative_to(data_dir)),),
            recovered=False,
        ),
    )


def _quarantine_dir(data_dir: Path, at: dt.datetime) -> Path:
    return data_dir / QUARANTINE_DIR / at.strftime("%Y%m%dT%H%M%S%fZ")


def _move_aside(data_dir: Path, quarantine: Path, sources: list[Path], sync: Sync) -> None:
    """Move files or directories under `quarantine`, at their path in the data directory;
    the moves durable before the freed version numbers are committed again."""
    for source in sources:
        _move_tree(source, quarantine / source.relative_to(data_dir))
    targets = [quarantine / source.relative_to(data_dir) for source in sources]
    for directory in sorted({p.parent for p in (*sources, *targets)}):
        sync(directory)
    if sources:
        sync(quarantine.parent)
        sync(data_dir)


def _move_tree(source: Path, target: Path) -> None:
    """os.replace, merged into a target directory that exists already."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    for entry in list(source.iterdir()):
        _move_tree(entry, target / entry.name)
    source.rmdir()


def _reported(data_dir: Path, incident: Incident) -> Incident:
    """Log the incident, and keep it beside the files it moved (the status shows the
    incidents of the current start only)."""
    record = data_dir / incident.quarantine / "incident.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(incident.as_dict(), indent=2) + "\n")
    log.error(
        "table_recovered" if incident.recovered else "table_set_aside",
        table=incident.table,
        problems="; ".join(incident.problems),
        recovered_version=incident.recovered_version,
        removed_versions=list(incident.removed_versions),
        quarantine=incident.quarantine,
    )
    return incident


def _parse_commit(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """A commit's actions, or why it is not a whole commit."""
    data = path.read_bytes()
    if not data.strip():
        return [], "is empty"
    parsed: list[dict[str, Any]] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError:
            return [], f"is cut short (line {n} is not JSON)"
        if not isinstance(action, dict):
            return [], f"is not a commit (line {n} is not an action)"
        parsed.append(action)
    info = next((a["commitInfo"] for a in parsed if "commitInfo" in a), None)
    if isinstance(info, dict):
        counted = _ACTION_COUNTS.get(str(info.get("operation")))
        metrics = info.get("operationMetrics")
        if counted is not None and isinstance(metrics, dict):
            for key, kind in zip(counted, ("add", "remove"), strict=True):
                expected = metrics.get(key)
                found = sum(1 for a in parsed if kind in a)
                if isinstance(expected, int) and found != expected:
                    return [], f"is cut short ({found} of {expected} {kind} actions)"
    return parsed, None


def _files_named(path: Path, commit: Path) -> list[Path]:
    """The data files the add actions of a commit name, from the lines that parse."""
    files: list[Path] = []
    for line in commit.read_bytes().splitlines():
        try:
            action = json.loads(line)
        except ValueError:
            continue
        add = action.get("add") if isinstance(action, dict) else None
        if isinstance(add, dict) and isinstance(add.get("path"), str):
            file = data_file(path, add["path"])
            if file is not None and path in file.parents:
                files.append(file)
    return files


def _first_without_data(
    path: Path, actions: dict[int, list[dict[str, Any]]], since: int
) -> tuple[int, str] | None:
    """The first recent commit whose data files (those no later commit removed) are
    missing or shorter than it says."""
    removed_later: set[str] = set()
    found: tuple[int, str] | None = None
    for version in sorted((v for v in actions if v > since), reverse=True):
        for action in actions[version]:
            if "remove" in action:
                removed_later.add(action["remove"]["path"])
        for action in actions[version]:
            add = action.get("add")
            if add is None or add["path"] in removed_later:
                continue
            file = data_file(path, add["path"])
            if file is None:
                continue
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                found = (version, f"its data file {add['path']} is missing")
                break
            if isinstance(add.get("size"), int) and size != add["size"]:
                found = (version, f"its data file {add['path']} has {size} of {add['size']} bytes")
                break
    return found


def _unreadable_parquet(path: Path) -> str | None:
    try:
        pq.read_table(path)
    except Exception as exc:
        return short_error(exc)
    return None


def _bad_last_checkpoint(path: Path, good: set[int], torn: int | None) -> str | None:
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return "is not JSON"
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, int):
        return "names no version"
    if version not in good:
        return f"names version {version}, which has no readable checkpoint"
    if torn is not None and version >= torn:
        return f"names version {version}, which was not complete"
    return None


def short_error(exc: BaseException) -> str:
    """An error's first line, without the paths it may name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"(/[^\s:'\"]+)+", "<path>", text)[:300]
