"""Injected faults: a variant that does `repeat` times the work calls its model that often."""

from __future__ import annotations

import asyncio

import numpy as np

from serve.rollout.faults import FaultyRanker, FaultyRetrieval


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        return np.full((2, 3), float(self.calls), np.float32)

    def search(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return np.arange(k), np.zeros(k)


def test_repeat_runs_each_model_call_that_many_times() -> None:
    inner = Counting()
    out = asyncio.run(FaultyRanker(inner, repeat=2.0).logits({}))  # a fault key's float
    assert inner.calls == 2 and float(out[0, 0]) == 2.0  # the last answer
    asyncio.run(FaultyRanker(inner).logits({}))
    assert inner.calls == 3
    r = Counting()
    ids, _ = FaultyRetrieval(r, repeat=3).search(np.zeros(4), 5)
    assert r.calls == 3 and ids.tolist() == [0, 1, 2, 3, 4]
