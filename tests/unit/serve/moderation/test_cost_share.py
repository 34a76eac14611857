"""A moderation batch's CPU is charged to the `moderate` route by the head's version."""

from __future__ import annotations

import time

from monitoring import metrics
from serve import cost
from serve.moderation.deployment import charged_batch


def _burn(items: list[str]) -> list[int]:
    end = time.thread_time() + 0.005 * len(items)
    while time.thread_time() < end:
        pass
    return [len(i) for i in items]


def test_a_batch_charges_its_cpu_once_and_nothing_when_costs_are_off() -> None:
    c = metrics.COST_CORE_SECONDS.labels(cost.MODERATION_TEXT, "v9", "", "moderate")
    before = c._value.get()
    assert charged_batch(_burn, ["a", "bb", "ccc", "dddd"], cost.MODERATION_TEXT, "v9") \
        == [1, 2, 3, 4]
    assert 0.02 <= c._value.get() - before < 0.05  # the batch's 20 ms, all items together
    cost.set_recording(False)
    try:
        after = c._value.get()
        assert charged_batch(_burn, ["a"], cost.MODERATION_TEXT, "v9") == [1]
        assert c._value.get() == after
    finally:
        cost.set_recording(True)
