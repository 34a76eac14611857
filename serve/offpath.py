"""Work done off the request path (shadow models, canary comparisons) marks the task it runs
in, so that a model client can wait for the replica to be idle right before it spends CPU.

A shadow job may wait a long time inside a model call (a slow variant, a fault's delay):
the idle moment it started in is long gone when the call goes out, and the call's
serialisation and the model's forward would then land inside a client request. Clients
call `yield_to_requests()` just before their network or compute step; outside an
off-path task it returns at once.

A process that does only off-path work (the rollout's ShadowScorer) lowers its own CPU
priority with `lower_priority`: a higher nice value and, on Linux, the idle scheduling class
(SCHED_IDLE). A nice value only shifts CPU shares: at nice 10 a busy process still gets
about a tenth of a contended core, and a serving thread that wakes waits for the kernel's
wake-up granularity before it preempts it. A SCHED_IDLE thread runs only on CPU time no
other thread wants and is preempted as soon as one does. Neither needs privilege (lowering
is always allowed), and neither can be undone without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

Wait = Callable[[], Awaitable[None]]
_wait: ContextVar[Wait | None] = ContextVar("funnel_off_path_wait", default=None)


@contextlib.contextmanager
def off_path(wait: Wait) -> Iterator[None]:
    """Within this block (and the tasks it starts), `yield_to_requests()` awaits `wait`."""
    token = _wait.set(wait)
    try:
        yield
    finally:
        _wait.reset(token)


async def yield_to_requests() -> None:
    wait = _wait.get()
    if wait is not None:
        await wait()


def lower_priority(increment: int, *, idle_class: bool = False) -> tuple[int | None, bool]:
    """Add `increment` to the nice value of every thread of this process and, with
    `idle_class`, move them into the idle scheduling class (on Linux both are per thread;
    threads started later inherit their creator's). Returns (the new nice value, or None
    where the platform has no priorities; whether the threads run in the idle class)."""
    if not hasattr(os, "setpriority"):
        return None, False
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + max(0, increment))
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's priority
        tids = [0]
    idle = idle_class and hasattr(os, "SCHED_IDLE")
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.setpriority(os.PRIO_PROCESS, tid, target)
        if idle:
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except ProcessLookupError:  # a thread that just ended
                pass
            except OSError:  # refused (a seccomp profile): the nice value still applies
                idle = False
    return target, idle


def lower_this_thread() -> bool:
    """Move the calling thread (only) to the lowest priority: nice 19 and, on Linux, the idle
    scheduling class. For a thread made for background work (a pool's initializer): it then
    runs on CPU time the serving threads leave over. Returns whether it is in the idle
    class."""
    import threading

    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # refused (a seccomp profile): the nice value still applies
        return False
    return True
