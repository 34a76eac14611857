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
policy_before = os.sched_getscheduler(t.native_id)
now, idle = lower_priority(5, idle_class=IDLE)
late = []
t2 = threading.Thread(target=lambda: late.append(
    (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))))
t2.start(); t2.join()
print(before, now, os.getpriority(os.PRIO_PROCESS, 0),
      os.getpriority(os.PRIO_PROCESS, t.native_id), late[0][0], int(idle), policy_before,
      os.sched_getscheduler(0), os.sched_getscheduler(t.native_id), late[0][1])
stop.set()
"""


def _child(idle_class: bool) -> list[int]:
    # in a child process: neither change can be undone without privilege
    return [int(x) for x in subprocess.run(
        [sys.executable, "-c", f"IDLE = {idle_class}\n" + CHILD], capture_output=True,
        text=True, check=True, timeout=60).stdout.split()]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("idle_class", [False, True])
def test_lower_priority_reaches_every_thread_and_the_threads_started_later(
        idle_class: bool) -> None:
    before, now, main, other, later, idle, policy_before, *policies = _child(idle_class)
    assert now == min(19, before + 5)
    assert main == other == later == now
    assert policy_before == os.SCHED_OTHER
    assert bool(idle) is idle_class
    expected = os.SCHED_IDLE if idle_class else os.SCHED_OTHER
    assert policies == [expected] * 3, policies


def test_a_background_thread_lowers_only_itself() -> None:
    import os
    import threading

    from serve.offpath import lower_this_thread

    if not hasattr(os, "SCHED_IDLE"):
        return
    seen: dict[str, object] = {}

    def work() -> None:
        seen["idle"] = lower_this_thread()
        tid = threading.get_native_id()
        seen["policy"] = os.sched_getscheduler(tid)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"idle": True, "policy": os.SCHED_IDLE, "nice": 19}
    me = threading.get_native_id()
    assert os.sched_getscheduler(me) != os.SCHED_IDLE  # the caller's thread is untouched
