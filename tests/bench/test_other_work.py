"""What the rest of the machine did during a run: CPU counted by process tree, not by
wall time, so the assertions hold however loaded the machine is."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from bench.environment import OtherWork, host_busy_cpu_s, tree_cpu_s

# A child that burns this much CPU time (not wall time) and exits.
BURN_S = 0.4
BURN = f"import time\nwhile time.process_time() < {BURN_S}: pass\n"


def burn() -> None:
    subprocess.run([sys.executable, "-c", BURN], check=True)


def test_a_reaped_child_counts_in_its_parents_tree_and_in_the_host() -> None:
    mine, host = tree_cpu_s([os.getpid()]), host_busy_cpu_s()
    burn()
    assert tree_cpu_s([os.getpid()]) - mine >= BURN_S
    after = host_busy_cpu_s()
    assert host is not None and after is not None
    # /proc/stat counts in clock ticks: the child's CPU, less at most a tick per core.
    assert after - host >= BURN_S - (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")


def test_the_runs_own_processes_are_not_other_work() -> None:
    ours = OtherWork(lambda: [os.getpid()])
    ours.start()
    burn()
    mine = ours.result()
    assert mine["own_cores_busy"] > 0

    # Seen from a tree the burner is not in (init's pid is nobody's process here), all
    # of it is somebody else's work.
    theirs = OtherWork(lambda: [])
    theirs.start()
    burn()
    other = theirs.result()
    assert other["other_cores_busy"] >= other["own_cores_busy"] == 0
    assert other["busy_cores"] > 0


def test_busy_neighbours_are_named_in_a_warning() -> None:
    readings = {"host": [100.0, 103.0], "tree": [10.0, 11.0], "clock": [50.0, 52.0]}

    def reader(name: str) -> Any:
        return lambda *_: readings[name].pop(0)

    other = OtherWork(lambda: [1], host=reader("host"), tree=reader("tree"), clock=reader("clock"))
    other.start()
    seen = other.result()
    assert (seen["busy_cores"], seen["own_cores_busy"], seen["other_cores_busy"]) == (1.5, 0.5, 1.0)
    assert seen["warning"] == (
        f"other work kept 1.00 of {os.cpu_count()} cores busy during the run: "
        "these figures also measure it"
    )
    quiet = OtherWork(
        lambda: [1],
        host=lambda: 100.0 + 0.4 * quiet_clock[0],
        tree=lambda _: 10.0 + 0.4 * quiet_clock[0],
        clock=lambda: quiet_clock[0],
    )
    quiet_clock = [0.0]
    quiet.start()
    quiet_clock[0] = 10.0
    assert quiet.result()["other_cores_busy"] == 0.0
    assert quiet.result()["warning"] is None
