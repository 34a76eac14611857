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


def test_every_config_declares_the_same_shadows_and_feeds_at_most_one() -> None:
    from benchmarks.rollout import configs
    from serve.rollout.config import parse_rollout

    plans = configs("v1", "v1-shadow", ["slow_shadow", "failing_shadow"])
    assert list(plans) == ["baseline", "slow_shadow", "failing_shadow"]
    declared = {name: [(s["name"], s["bundle_version"], s.get("fault"))
                       for s in cfg["stages"]["ranker"]["shadows"]]
                for name, cfg in plans.items()}
    # a switch between configs loads and unloads nothing: same versions, same faults
    assert all(d == declared["baseline"] for d in declared.values())
    assert [n for n, _, _ in declared["baseline"]] == ["slow", "failing"]
    rates = {name: {s["name"]: s["sample_rate"] for s in cfg["stages"]["ranker"]["shadows"]}
             for name, cfg in plans.items()}
    assert rates == {"baseline": {"slow": 0.0, "failing": 0.0},
                     "slow_shadow": {"slow": 1.0, "failing": 0.0},
                     "failing_shadow": {"slow": 0.0, "failing": 1.0}}
    for cfg in plans.values():  # each is a config the admin route accepts
        parse_rollout(cfg)


def test_blocks_rotate_so_each_config_runs_in_every_position() -> None:
    from benchmarks.rollout import cycle_order

    names = ["baseline", "slow_shadow", "failing_shadow"]
    orders = [cycle_order(names, c) for c in range(3)]
    assert all(sorted(o) == sorted(names) for o in orders)
    for pos in range(3):
        assert {o[pos] for o in orders} == set(names)
    assert cycle_order(names, 3) == orders[0]


def test_requests_sent_while_a_config_settles_are_not_counted() -> None:
    from benchmarks.rollout import counted

    lat = counted([50.0, 40.0, 30.0, 20.0], [0.0, 1.9, 2.0, 5.0], settle_s=2.0)
    assert lat.tolist() == [30.0, 20.0]
