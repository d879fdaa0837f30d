"""Where a run ran: machine, software and targets, recorded in every result file."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from dwbench.assets import ROOT
from writers.base import Targets

# The app's own stack; each writer adds its client libraries (the registry's metadata).
LIBRARIES = (
    "grpcio",
    "protobuf",
    "deltalake",
    "pyarrow",
    "duckdb",
    "fastapi",
    "uvicorn",
    "hdrhistogram",
)


def libraries() -> tuple[str, ...]:
    from writers import WRITERS, writer_metadata

    names = list(LIBRARIES)
    for writer in WRITERS:
        for dist in writer_metadata(writer)["client_distributions"]:
            if dist not in names:
                names.append(dist)
    return tuple(names)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> str | None:
    # Only a checkout has one: an installed copy (ROOT is site-packages) may lie inside some
    # other work tree, whose commit is not this code's.
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != ROOT:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return lines[1] + ("+dirty" if dirty.stdout.strip() else "")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _machine() -> dict[str, Any]:
    """What does not change while the process runs (found once: git runs a subprocess)."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in libraries()},
        "git_commit": _git_commit(),
    }


def capture_environment(targets: Targets | None = None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and library versions, git commit, mode and endpoints.

    Endpoints are URLs without credentials; tokens and passwords are never included.
    """
    from writers import WRITERS, writer_config, writer_metadata

    env: dict[str, Any] = dict(_machine())
    if targets is not None:
        # Each writer's own settings as its instances get them (secrets are not recorded).
        configs = {name: writer_config(targets, name) for name in WRITERS}
        values = {name: dict(config) for name, config in configs.items() if config is not None}
        lakebase = values.get("lakebase", {})
        env["mode"] = targets.mode
        env["endpoints"] = {
            "zerobus": targets.zerobus_endpoint,
            "workspace": targets.workspace_url,
            "warehouse_id": targets.warehouse_id,
            "postgres": f"{lakebase.get('host')}:{lakebase.get('port')}"
            if targets.mode == "databricks"
            else "local",
        }
        # The default table of every writer whose settings name one.
        env["tables"] = {name: v["table"] for name, v in values.items() if "table" in v}
        env["writers"] = {
            name: {k: v for k, v in writer_metadata(name).items() if k != "client_distributions"}
            for name in WRITERS
        }
    return env


LOCAL_NOTICE = (
    "Local mode: Zerobus, the SQL warehouse and Lakebase are stood in by the local stack on "
    "this machine. Figures measure the client and the stand-ins here, not a Databricks "
    "workspace."
)


def mode_notice(environment: dict[str, Any]) -> str:
    """One line saying what produced a run's figures, from its recorded environment."""
    mode = environment.get("mode")
    if mode == "local":
        return LOCAL_NOTICE
    if mode == "databricks":
        endpoints = environment.get("endpoints") or {}
        parts = [f"workspace {endpoints.get('workspace') or 'unknown'}"]
        if endpoints.get("warehouse_id"):
            parts.append(f"SQL warehouse {endpoints['warehouse_id']}")
        if endpoints.get("postgres") and endpoints["postgres"] != "local":
            parts.append(f"Lakebase {endpoints['postgres']}")
        # Sizes would need extra workspace calls (warehouses.get, database.get_database_instance)
        # at capture time; they are not recorded yet.
        return f"Databricks mode: {', '.join(parts)} (warehouse and Lakebase sizes not recorded)."
    return "Mode not recorded (a result from before modes were recorded)."


def write_results(out: Path, prefix: str, results: dict[str, Any]) -> Path:
    """A benchmark script's results as `<out>/<prefix>-<timestamp>.json`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


# -- host load: what else the machine was doing --------------------------------------------

BUSY_LOAD_PER_CORE = 0.8  # 1-minute load average per core above which the host is busy
HIGH_STEAL_PERCENT = 5.0  # CPU time taken by the hypervisor for other guests during the run


def host_sample() -> dict[str, Any]:
    """Load averages and the /proc/stat CPU counters (Linux; empty elsewhere)."""
    sample: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):  # no load averages on this platform
        sample["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return sample
    if first and first[0] == "cpu":
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(v) for v in first[1:9]]
        sample["cpu_ticks"] = {"total": sum(ticks), "steal": ticks[7] if len(ticks) > 7 else 0}
    return sample


def host_load(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Load before and after a run, and the share of CPU time stolen in between."""
    out: dict[str, Any] = {
        "loadavg_before": before.get("loadavg"),
        "loadavg_after": after.get("loadavg"),
        "cpu_count": before.get("cpu_count"),
        "steal_percent": None,
    }
    a, b = before.get("cpu_ticks"), after.get("cpu_ticks")
    if a and b and b["total"] > a["total"]:
        out["steal_percent"] = round(100 * (b["steal"] - a["steal"]) / (b["total"] - a["total"]), 2)
    return out


def host_load_warnings(load: dict[str, Any]) -> list[str]:
    """Warnings when the machine was busy or its CPU time was stolen: the figures then also
    measure the neighbours."""
    out = []
    cores = load.get("cpu_count") or 1
    for when in ("before", "after"):
        avg = load.get(f"loadavg_{when}")
        if avg and avg[0] > BUSY_LOAD_PER_CORE * cores:
            out.append(
                f"host busy {when} the run: 1-minute load average {avg[0]:.2f} on {cores} "
                "cores; other work on this machine shows in these figures"
            )
    steal = load.get("steal_percent")
    if steal is not None and steal >= HIGH_STEAL_PERCENT:
        out.append(
            f"CPU steal {steal:.1f} % during the run: the hypervisor gave this machine's CPU "
            "time to other guests"
        )
    return out
