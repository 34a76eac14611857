"""The soak bench's pure parts: durations, answers in full, the rollout it applies."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.soak import parse_duration, rollout_config
from funnel.contracts.rollout import RolloutConfig


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400),
                                               ("600", 600), ("2.5m", 150)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "10m5", "-1m", "ten minutes"])
def test_a_bad_duration_names_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"use e\.g\. 10m, 90s"):
        parse_duration(text)


def test_the_soak_rollout_is_a_valid_config_with_a_canary_and_a_shadow() -> None:
    cfg = RolloutConfig.model_validate(rollout_config("v1", "v2"))
    ranker = cfg.stages["ranker"]
    assert [(v.name, v.weight) for v in ranker.variants] == [("control", 90), ("canary", 10)]
    assert [s.sample_rate for s in ranker.shadows] == [0.2]
    assert ranker.promotion is not None and ranker.promotion.auto_rollback


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_paced_clients_start_out_of_phase_with_exponential_gaps() -> None:
    """The soak's regression: locust's constant_throughput kept users spawned together in
    phase (bursts of 24). Each pacer's first start is random, its gaps exponential."""
    import random

    from benchmarks.pacing import PoissonPacer

    clock = Clock()
    firsts = [PoissonPacer(2.0, rng=random.Random(i), clock=clock).wait_s() for i in range(24)]
    assert len({round(f, 6) for f in firsts}) == 24  # no two clients in phase
    pacer = PoissonPacer(2.0, rng=random.Random(0), clock=clock)
    starts = []
    for _ in range(4000):
        clock.t += pacer.wait_s()
        starts.append(clock.t)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.5, rel=0.05)
    sd = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert sd == pytest.approx(mean, rel=0.1)  # exponential: sd = mean (constant pacing: 0)


def test_a_client_behind_schedule_goes_again_at_once() -> None:
    import random

    from benchmarks.pacing import PoissonPacer

    clock = Clock()
    pacer = PoissonPacer(1.0, rng=random.Random(1), clock=clock)
    clock.t += 1000  # a very slow answer
    assert pacer.wait_s() == 0.0
