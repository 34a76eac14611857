"""Fault injection for a variant's model calls (`fault: {delay_ms, error_rate, repeat}` in
the rollout config), as a service mesh injects HTTP faults: for exercising guardrails,
shadows and rollback on a real stack (`repeat`: a ranker that does that many times the work,
for the cost guardrail). Off unless `args.rollout.allow_fault_injection` is true."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import numpy as np

from serve.errors import RankerUnavailable
from serve.offpath import yield_to_requests
from serve.ranker.client import Ranker


class InjectedFault(RuntimeError):
    """The error a fault with `error_rate` raises."""


class FaultyRanker:
    """A `Ranker` that waits `delay_ms`, then fails `error_rate` of its calls; each call
    runs the model `repeat` times (the last answer is returned)."""

    def __init__(self, inner: Ranker, *, delay_ms: float = 0.0, error_rate: float = 0.0,
                 repeat: float = 1, rng: random.Random | None = None) -> None:
        self._inner = inner
        self._delay_s = delay_ms / 1000.0
        self._rate = error_rate
        self._repeat = int(repeat)
        self._rng = rng or random.Random()

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
            await yield_to_requests()  # a shadow's idle moment is gone after the delay
        if self._rng.random() < self._rate:
            raise RankerUnavailable("injected fault (rollout config `fault.error_rate`)")
        for _ in range(self._repeat - 1):
            await self._inner.logits(inputs)
        return await self._inner.logits(inputs)

    async def ready(self) -> bool:
        ready = getattr(self._inner, "ready", None)
        return bool(await ready()) if ready else True


class FaultyRetrieval:
    """A retrieval whose ANN search waits `delay_ms` and fails `error_rate` of its calls
    (search runs in a worker thread, so the wait is a blocking sleep there). Everything else
    is the wrapped retrieval's."""

    def __init__(self, inner: Any, *, delay_ms: float = 0.0, error_rate: float = 0.0,
                 repeat: float = 1, rng: random.Random | None = None) -> None:
        self._inner = inner
        self._delay_s = delay_ms / 1000.0
        self._rate = error_rate
        self._repeat = int(repeat)
        self._rng = rng or random.Random()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def search(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._delay_s:
            time.sleep(self._delay_s)
        if self._rng.random() < self._rate:
            raise InjectedFault("injected fault (rollout config `fault.error_rate`)")
        for _ in range(self._repeat - 1):
            self._inner.search(user_vec, k)
        result: tuple[np.ndarray, np.ndarray] = self._inner.search(user_vec, k)
        return result
