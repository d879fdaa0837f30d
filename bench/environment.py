"""Where a run ran: machine, software and targets, recorded in every result file."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwbench.assets import ROOT
from writers.base import Targets

if TYPE_CHECKING:
    from dwbench.auth import WorkspaceAuth

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
        if targets.mode == "databricks":
            auth = targets.workspace_auth
            # Who wrote and how (never a token or secret), and the compute behind the figures.
            env["auth"] = (
                auth.describe() if auth else {"auth_type": None, "error": targets.auth_problem}
            )
            env["workspace"] = dict(targets.workspace_facts)
        env["endpoints"] = {
            "zerobus": targets.zerobus_endpoint,
            "workspace": targets.workspace_url,
            "warehouse_id": targets.warehouse_id,
            "postgres": (
                f"{lakebase['host']}:{lakebase.get('port')}" if lakebase.get("host") else None
            )
            if targets.mode == "databricks"
            else "local",
        }
        # The default table of every writer whose settings name one.
        env["tables"] = {name: v["table"] for name, v in values.items() if "table" in v}
        env["writers"] = {
            name: {k: v for k, v in writer_metadata(name).items() if k != "client_distributions"}
            for name in WRITERS
        }
        # The sentence the CLI, the UI and reports show beside every figure.
        env["notice"] = mode_notice(env)
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
        workspace = environment.get("workspace")
        auth = environment.get("auth") or {}
        parts = [f"workspace {endpoints.get('workspace') or 'unknown'}"]
        if auth.get("auth_type"):
            parts.append(f"auth {auth['auth_type']}")
        if workspace is None:  # a result from before sizes were recorded
            if endpoints.get("warehouse_id"):
                parts.append(f"SQL warehouse {endpoints['warehouse_id']}")
            if endpoints.get("postgres") and endpoints["postgres"] != "local":
                parts.append(f"Lakebase {endpoints['postgres']}")
            return (
                f"Databricks mode: {', '.join(parts)} (warehouse and Lakebase sizes not recorded)."
            )
        if endpoints.get("warehouse_id") or workspace.get("warehouse"):
            parts.append(_warehouse_text(endpoints.get("warehouse_id"), workspace.get("warehouse")))
        if endpoints.get("postgres") and endpoints["postgres"] != "local":
            parts.append(_lakebase_text(endpoints["postgres"], workspace.get("lakebase_instance")))
        return f"Databricks mode: {', '.join(parts)}."
    return "Mode not recorded (a result from before modes were recorded)."


def _warehouse_text(warehouse_id: str | None, facts: dict[str, Any] | None) -> str:
    text = f"SQL warehouse {warehouse_id or 'unknown'}"
    if not facts:
        return f"{text} (size not read)"
    if facts.get("error"):
        return f"{text} (size unknown: {facts['error']})"
    kind = facts.get("warehouse_type") or "?"
    if facts.get("enable_serverless_compute"):
        kind = f"serverless {kind}"
    lo, hi = facts.get("min_num_clusters"), facts.get("max_num_clusters")
    clusters = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{text} ({facts.get('cluster_size') or '?'}, {kind}, {clusters} clusters)"


def _lakebase_text(postgres: str, facts: dict[str, Any] | None) -> str:
    text = f"Lakebase {postgres}"
    if not facts:
        return f"{text} (capacity not read)"
    if facts.get("error"):
        return f"{text} (capacity unknown: {facts['error']})"
    nodes = facts.get("node_count")
    return (
        f"{text} (instance {facts.get('name')}, {facts.get('capacity') or '?'}"
        f"{f', {nodes} nodes' if nodes else ''})"
    )


def workspace_facts(
    auth: WorkspaceAuth, warehouse_id: str | None, instance_name: str | None
) -> dict[str, Any]:
    """The sizes of the compute behind Databricks-mode figures, read with databricks-sdk:
    the SQL warehouse (`warehouses.get`) and the Lakebase instance
    (`database.get_database_instance`). A read that fails is recorded with its reason;
    nothing here is fatal. Blocking (workspace calls)."""
    facts: dict[str, Any] = {}
    try:
        w = auth.workspace_client()
    except Exception as exc:  # the SDK's errors
        reason = _one_line(exc)
        return {"warehouse": {"error": reason}, "lakebase_instance": {"error": reason}}
    if warehouse_id:
        try:
            wh = w.warehouses.get(warehouse_id)
        except Exception as exc:  # the SDK's errors, network errors
            facts["warehouse"] = {"id": warehouse_id, "error": _one_line(exc)}
        else:
            facts["warehouse"] = {
                "id": warehouse_id,
                "name": wh.name,
                "cluster_size": wh.cluster_size,
                "warehouse_type": _enum(wh.warehouse_type),
                "enable_serverless_compute": wh.enable_serverless_compute,
                "min_num_clusters": wh.min_num_clusters,
                "max_num_clusters": wh.max_num_clusters,
                "state": _enum(wh.state),
            }
    else:
        facts["warehouse"] = {"error": "DATABRICKS_WAREHOUSE_ID is not set"}
    if instance_name:
        try:
            db = w.database.get_database_instance(instance_name)
        except Exception as exc:  # the SDK's errors, network errors
            facts["lakebase_instance"] = {"name": instance_name, "error": _one_line(exc)}
        else:
            facts["lakebase_instance"] = {
                "name": instance_name,
                "capacity": db.effective_capacity or db.capacity,
                "node_count": db.effective_node_count or db.node_count,
                "pg_version": db.pg_version,
                "state": _enum(db.state),
            }
    else:
        facts["lakebase_instance"] = {"error": "LAKEBASE_INSTANCE_NAME is not set"}
    return facts


def _enum(value: Any) -> Any:
    return getattr(value, "value", value)


_REASON_CHARS = 300  # a reason is a line in a result file, not a server's error page


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". Config: ", 1)[0]  # the SDK's config dump (secrets masked) goes
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


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


# Cores busy with other work during a run, on average, above which its figures are flagged.
OTHER_CORES_BUSY = 0.25


def host_busy_cpu_s() -> float | None:
    """CPU seconds the whole host has spent busy since boot, all cores (Linux's /proc/stat:
    everything but idle and iowait); None elsewhere."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(v) for v in first[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds of these processes and all their descendants, the children they have
    reaped included (a process that ended between two readings is counted in its parent's)."""
    import psutil

    seen: set[int] = set()
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class OtherWork:
    """What the rest of the machine did while a run went: the host's busy CPU less that of
    the run's own processes (`ours`: the roots of their trees), read before and after.
    The readers and the clock are injectable (tests)."""

    ours: Callable[[], list[int]]
    host: Callable[[], float | None] = host_busy_cpu_s
    tree: Callable[[Iterable[int]], float] = tree_cpu_s
    clock: Callable[[], float] = time.monotonic
    _start: tuple[float | None, float, float] | None = None

    def start(self) -> None:
        self._start = (self.host(), self.tree(self.ours()), self.clock())

    def result(self) -> dict[str, Any]:
        assert self._start is not None, "start() first"
        host0, mine0, t0 = self._start
        host, mine, wall = self.host(), self.tree(self.ours()), self.clock() - t0
        cores = os.cpu_count()
        if host is None or host0 is None or wall <= 0:
            return {"cores": cores, "other_cores_busy": None, "warning": None}
        busy = (host - host0) / wall
        own = (mine - mine0) / wall
        other = max(busy - own, 0.0)
        warning = None
        if other > OTHER_CORES_BUSY:
            warning = (
                f"other work kept {other:.2f} of {cores} cores busy during the run: "
                "these figures also measure it"
            )
        return {
            "cores": cores,
            "busy_cores": round(busy, 3),
            "own_cores_busy": round(own, 3),
            "other_cores_busy": round(other, 3),
            "warning": warning,
        }


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
