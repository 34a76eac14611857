"""The rollout bench's p99 ratio and its interval over rounds."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.rollout import p99_ratio_interval


def test_the_ratio_is_the_pooled_p99s_and_the_interval_holds_it() -> None:
    rng = np.random.default_rng(0)
    base = [rng.exponential(50, 300) for _ in range(6)]
    other = [b * 1.5 for b in base]  # every round exactly 1.5x: no noise between configs
    ratio, low, high = p99_ratio_interval(base, other, boots=200)
    assert ratio == pytest.approx(1.5) and low == pytest.approx(1.5) and high == pytest.approx(1.5)


def test_round_to_round_noise_widens_the_interval() -> None:
    rng = np.random.default_rng(1)
    base = [rng.exponential(50, 300) for _ in range(6)]
    # same distribution, each round's tail scaled by a random machine hiccup
    other = [rng.exponential(50, 300) * rng.choice([0.7, 1.4]) for _ in range(6)]
    ratio, low, high = p99_ratio_interval(base, other, boots=500)
    assert low < ratio < high and high - low > 0.2


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError, match="same number"):
        p99_ratio_interval([np.ones(3)], [np.ones(3), np.ones(3)])
