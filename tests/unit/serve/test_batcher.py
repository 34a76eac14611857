"""GreedyBatcher: batches form while the model is busy, results go back in order."""

from __future__ import annotations

import asyncio

import pytest

from serve.batcher import GreedyBatcher


class SlowDouble:
    def __init__(self, delay_s: float = 0.02, fail_on: int | None = None) -> None:
        self.delay_s, self.fail_on, self.sizes = delay_s, fail_on, []  # type: ignore[var-annotated]

    async def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("model failed")
        return [2 * i for i in items]


def test_calls_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    model = SlowDouble()
    b = GreedyBatcher(model, max_batch_size=32)

    async def go() -> list[int]:
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.005)  # the model is now busy with [0]
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 11)]
        return [await first, *[await r for r in rest]]

    assert asyncio.run(go()) == [2 * i for i in range(11)]
    assert model.sizes == [1, 10]
    assert b.mean_batch_size == pytest.approx(5.5)


def test_max_batch_size_splits_a_backlog() -> None:
    model = SlowDouble()
    b = GreedyBatcher(model, max_batch_size=4)

    async def go() -> list[int]:
        return list(await asyncio.gather(*(b.submit(i) for i in range(10))))

    assert asyncio.run(go()) == [2 * i for i in range(10)]
    assert max(model.sizes) <= 4 and sum(model.sizes) == 10


def test_a_lone_call_waits_at_most_max_wait_for_company() -> None:
    model = SlowDouble(delay_s=0.0)
    b = GreedyBatcher(model, max_batch_size=8, max_wait_s=0.05)

    async def go() -> list[int]:
        first = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(b.submit(2))
        return [await first, await second]

    assert asyncio.run(go()) == [2, 4]
    assert model.sizes == [2]


def test_a_failing_batch_fails_its_calls_only() -> None:
    model = SlowDouble(fail_on=3)
    b = GreedyBatcher(model, max_batch_size=2)

    async def go() -> list[object]:
        return list(await asyncio.gather(*(b.submit(i) for i in (1, 2, 3, 4, 5)),
                                         return_exceptions=True))

    out = asyncio.run(go())
    failed = [i for i, r in zip((1, 2, 3, 4, 5), out, strict=True) if isinstance(r, Exception)]
    assert 3 in failed and out[-1] == 10  # later batches still run
    assert all(r == 2 * i for i, r in zip((1, 2, 3, 4, 5), out, strict=True) if i not in failed)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        GreedyBatcher(SlowDouble(), max_batch_size=0)
