"""Off-path helpers: a process doing only off-path work lowers its CPU priority."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import os, threading
from serve.offpath import lower_priority
started = threading.Event(); stop = threading.Event()
def run():
    started.set(); stop.wait()
t = threading.Thread(target=run); t.start(); started.wait()
before = os.getpriority(os.PRIO_PROCESS, t.native_id)
now = lower_priority(5)
late = []
t2 = threading.Thread(target=lambda: late.append(os.getpriority(os.PRIO_PROCESS, 0)))
t2.start(); t2.join()
print(before, now, os.getpriority(os.PRIO_PROCESS, 0),
      os.getpriority(os.PRIO_PROCESS, t.native_id), late[0])
stop.set()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice is Linux's")
def test_lower_priority_reaches_every_thread_and_the_threads_started_later() -> None:
    # in a child process: a nice value cannot be lowered back without privilege
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    before, now, main, other, later = map(int, out)
    assert now == min(19, before + 5)
    assert main == other == later == now
