"""Work done off the request path (shadow models, canary comparisons) marks the task it runs
in, so that a model client can wait for the replica to be idle right before it spends CPU.

A shadow job may wait a long time inside a model call (a slow variant, a fault's delay):
the idle moment it started in is long gone when the call goes out, and the call's
serialisation and the model's forward would then land inside a client request. Clients
call `yield_to_requests()` just before their network or compute step; outside an
off-path task it returns at once.

A process that does only off-path work (the rollout's ShadowScorer) lowers its own CPU
priority with `lower_priority`.
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


def lower_priority(increment: int) -> int | None:
    """Add `increment` to the nice value of every thread of this process (on Linux a nice
    value is per thread; threads started later inherit their creator's); the new value, or
    None where the platform has no priorities. Raising it needs no privilege."""
    if not hasattr(os, "setpriority"):
        return None
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + max(0, increment))
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's priority
        tids = [0]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.setpriority(os.PRIO_PROCESS, tid, target)
    return target
