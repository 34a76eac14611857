"""Comparisons of a variant's lists with the primary's, off the critical path: what one is
(`Comparison`), and how a replica hands them to the `ShadowScorer` deployment in batches
(`RemoteComparisons`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.rollout.router import Assignment
from serve.rollout.scheduling import IdleGate

log = logging.getLogger("funnel.rollout")


@dataclass(frozen=True)
class Comparison:
    """One feed comparison, as the ingress hands it to whoever runs it (its own queue, or the
    `ShadowScorer` deployment): plain values and arrays, nothing process-local, so it
    crosses Ray's process boundary as it is.

    `shadow` given: run that shadow variant on the request and compare it with the served
    primary. `shadow` None: the request was served by the canary `served`; compute the
    primary's list and compare the canary's with it."""

    stage: str  # "ranker" | "retrieval"
    served: Assignment
    shadow: Assignment | None
    ks: tuple[int, ...]
    user_id: int
    now_s: float
    limit: int
    revision: int  # the routing table the request was served by
    served_ms: float  # the served ranker's call (ranker stage)
    kept_ids: np.ndarray  # the candidates the served ranker scored, in order
    rscore: np.ndarray  # their retrieval scores
    scores: np.ndarray  # the served ranker's final score of each
    # the served ranker's inputs for them (its bundle's features): a variant whose bundle
    # has the same fitted features scores without building them again
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """The variant this comparison is counted for."""
        return self.shadow.variant if self.shadow is not None else self.served.variant


class RemoteComparisons:
    """Hands comparisons to the `ShadowScorer` deployment without waiting for them, in
    batches: one call per `batch_interval_s` (or as soon as `batch_size` wait), because a
    Serve call costs milliseconds of CPU on each side whatever it carries. The call goes out
    when the replica serves no request (`gate`, as for local jobs). At most `max_pending`
    comparisons are batched or on their way; beyond that, or when the scorer cannot be
    reached, a comparison is dropped and counted here. The scorer counts what it runs, fails
    and drops itself."""

    def __init__(self, handle: Any, *, max_pending: int, on_drop: Callable[[str, str], None],
                 batch_size: int = 32, batch_interval_s: float = 1.0,
                 gate: IdleGate | None = None) -> None:
        self._handle = handle
        self._max = max_pending
        self._on_drop = on_drop
        self._batch_size = batch_size
        self._interval = batch_interval_s
        self._gate = gate
        self._batch: list[Comparison] = []
        self.inflight = 0  # comparisons in calls not yet answered
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._last_error = ""

    @property
    def pending(self) -> int:
        return len(self._batch) + self.inflight

    def submit(self, c: Comparison) -> bool:
        if self.pending >= self._max:
            return False
        self._batch.append(c)
        if len(self._batch) >= self._batch_size:
            self._send()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())
        return True

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._interval)
        if self._gate is not None:
            await self._gate.wait()
        self._send()

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        self.inflight += len(batch)
        try:
            response = self._handle.compare_many.remote(batch)
        except Exception as e:
            self._lost(batch, e)
            return
        t = asyncio.ensure_future(self._wait(response, batch))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _lost(self, batch: list[Comparison], e: BaseException) -> None:
        self.inflight -= len(batch)
        if str(e) != self._last_error:
            log.warning("rollout: the shadow scorer is unreachable, comparisons dropped: %s",
                        e)
        self._last_error = str(e)
        for c in batch:
            self._on_drop(c.stage, c.variant)

    async def _wait(self, response: Any, batch: list[Comparison]) -> None:
        try:
            await response
        except Exception as e:  # the scorer restarting: the comparisons are lost, counted
            self._lost(batch, e)
            return
        self.inflight -= len(batch)
        self._last_error = ""

    async def drain(self) -> None:
        """Send what is batched now and wait for every call's answer."""
        if self._flusher is not None:
            self._flusher.cancel()
        self._send()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
