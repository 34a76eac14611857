"""Scheduling primitives of the rollout's off-path work: `IdleGate` lets a job run only while
the replica serves no request; `ShadowRunner` keeps one bounded queue per (stage, variant),
worked by a fixed number of tasks, and drops (and counts) what does not fit, so a slow or
failing shadow cannot reach a client or starve another variant."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serve.offpath import off_path

log = logging.getLogger("funnel.rollout")


class IdleGate:
    """Lets off-path work wait for a moment when this replica serves no client request.

    Shadows and comparisons share the replica's event loop (and its GIL) with the requests
    they mirror: a job's few milliseconds of CPU that land while a request is in flight add
    to that request's latency. A job therefore waits until no request is in flight, at
    most `max_wait_s`: at moderate load it runs in the gaps between requests; under
    sustained saturation it still progresses, but no faster than one job per `max_wait_s`
    per worker, and the bounded queue drops the rest (counted)."""

    def __init__(self, *, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if self.inflight == 0:
                self._idle.set()
        return self._idle

    def started(self) -> None:
        self.inflight += 1
        self._event().clear()

    def finished(self) -> None:
        self.inflight = max(0, self.inflight - 1)
        if self.inflight == 0:
            self._event().set()

    async def wait(self) -> None:
        if self.inflight == 0 or self.max_wait_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event().wait(), self.max_wait_s)


class ShadowRunner:
    """A bounded queue of jobs run by `concurrency` tasks of the current event loop, each
    job started when the `gate` opens."""

    def __init__(self, *, size: int, concurrency: int, gate: IdleGate | None = None) -> None:
        self._gate = gate
        self._size = size
        self._n = concurrency
        self._q: asyncio.Queue[tuple[Callable[[], Awaitable[None]], Callable[[], None]]] | \
            None = None
        self._workers: list[asyncio.Task[None]] = []
        self.done = 0  # jobs run (succeeded or failed)

    def _start(self) -> asyncio.Queue[Any]:
        if self._q is None:
            self._q = asyncio.Queue(self._size)
            self._workers = [asyncio.create_task(self._work(), context=contextvars.Context())
                             for _ in range(self._n)]  # not the request's context
        return self._q

    def submit(self, job: Callable[[], Awaitable[None]], on_error: Callable[[], None]) -> bool:
        """Queue `job`; False (and nothing queued) when the queue is full."""
        try:
            self._start().put_nowait((job, on_error))
            return True
        except asyncio.QueueFull:
            return False

    async def _work(self) -> None:
        assert self._q is not None
        while True:
            job, on_error = await self._q.get()
            try:
                if self._gate is None:
                    await job()
                else:
                    await self._gate.wait()
                    with off_path(self._gate.wait):  # model calls wait for idle too
                        await job()
            except Exception:  # a shadow's failure is counted, never raised to a client
                log.debug("shadow job failed", exc_info=True)
                on_error()
            finally:
                self.done += 1
                self._q.task_done()

    async def drain(self) -> None:
        if self._q is not None:
            await self._q.join()

    def stop(self) -> None:
        for t in self._workers:
            t.cancel()
