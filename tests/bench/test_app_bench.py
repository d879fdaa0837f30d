"""The app benchmark's CPU accounting and core pinning, against the kernel's own view."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.app_bench import _cpu_seconds, _pin, split_cores

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_seconds_counts_this_process_and_its_main_thread() -> None:
    pid = os.getpid()
    process_before, thread_before = _cpu_seconds(pid), _cpu_seconds(pid, thread=pid)
    assert process_before is not None and thread_before is not None
    _burn(0.3)
    process_used = _cpu_seconds(pid) - process_before  # type: ignore[operator]
    thread_used = _cpu_seconds(pid, thread=pid) - thread_before  # type: ignore[operator]
    # The kernel counts in clock ticks (1/100 s here): allow two ticks either way.
    assert 0.28 <= thread_used <= 0.5
    assert thread_used - 0.02 <= process_used


def test_cpu_seconds_of_a_process_that_is_gone_is_unknown() -> None:
    assert _cpu_seconds(2**22 + 12345) is None


def test_the_app_gets_the_last_core_and_the_rest_share_the_others() -> None:
    cores = sorted(os.sched_getaffinity(0))
    assert split_cores(False) is None
    if len(cores) < 2:
        assert split_cores(True) is None
        return
    assert split_cores(True) == ({cores[-1]}, set(cores[:-1]))


def test_pinning_reaches_every_thread_of_a_process() -> None:
    cores = sorted(os.sched_getaffinity(0))
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,)).start()\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2:
            assert time.monotonic() < deadline, "the child's thread did not start"
            time.sleep(0.01)
        _pin(child.pid, {cores[0]})
        threads = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(threads) == 2
        assert all(os.sched_getaffinity(t) == {cores[0]} for t in threads)
    finally:
        child.kill()
        child.wait()
