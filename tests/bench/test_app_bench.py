"""The app benchmark's CPU accounting reads the kernel's counters for a process and a thread."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.app_bench import _cpu_seconds

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
