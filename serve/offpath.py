"""Work done off the request path (shadow models, canary comparisons) marks the task it runs
in, so that a model client can wait for the replica to be idle right before it spends CPU.

A shadow job may wait a long time inside a model call (a slow variant, a fault's delay):
the idle moment it started in is long gone when the call goes out, and the call's
serialisation and the model's forward would then land inside a client request. Clients
call `yield_to_requests()` just before their network or compute step; outside an
off-path task it returns at once.
"""

from __future__ import annotations

import contextlib
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
