from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import (
    CANDIDATE,
    CONTROL,
    Settings,
    World,
    _crossing,
    ab_analyse,
    ab_run,
    interleaving_run,
)
from training.data.synthetic import Profile, generate_with_truth

SMALL = Profile("unit", n_users=300, n_posts=2000, impressions_per_user=2, mean_follows=5)


@pytest.fixture(scope="module")
def world() -> World:
    return World(generate_with_truth(SMALL, seed=0)[1], Settings())


def test_the_less_noisy_ranker_is_truly_better(world: World) -> None:
    s = world.s
    control = world.true_ctr(s.control_noise, 20_000, np.random.default_rng(1))
    candidate = world.true_ctr(s.candidate_noise, 20_000, np.random.default_rng(1))
    random = world.true_ctr(100.0, 20_000, np.random.default_rng(1))
    assert random < control < candidate


def test_a_simulated_ab_run_goes_through_the_report_with_exact_join_counts(
        world: World) -> None:
    imp, ev, want = ab_run(world, 200, (1.5, 1.2), np.random.default_rng(2))
    assert set(imp["ranker_variant"]) == {CONTROL, CANDIDATE}
    assert not imp.duplicated(["request_id", "item_id"]).any()  # a page shows a post once
    assert len(imp) == imp["request_id"].nunique() * world.s.page
    got = ab_analyse(imp, ev, 200, 0.05)
    assert (got["join"]["duplicates"], got["join"]["unmatched"]) == (
        want["duplicates"], want["unmatched"])
    assert got["join"]["matched"] == want["events"]
    assert 0 <= got["p"] <= 1 and got["impressions"] == len(imp)
    half = ab_analyse(imp, ev, 100, 0.05)  # a prefix: the first 100 users
    assert half["impressions"] == int((imp["user_id"] < 100).sum())


def test_interleaving_runs_credit_every_click_to_one_team(world: World) -> None:
    a, b = interleaving_run(world, 300, (1.5, 1.2), np.random.default_rng(3))
    assert a.shape == b.shape == (300,)
    assert (a >= 0).all() and (b >= 0).all() and (a + b <= world.s.page).all()
    assert (a + b).sum() > 0


def test_crossing_interpolates_in_log_size() -> None:
    assert _crossing([100, 400], [0.6, 1.0]) == pytest.approx(200)
    assert _crossing([100, 400], [0.9, 1.0]) == 100
    assert _crossing([100, 400], [0.1, 0.5]) is None


def test_user_click_propensity_spreads_users_and_keeps_the_stream_at_zero() -> None:
    truth = generate_with_truth(SMALL, seed=0)[1]
    flat, spread = World(truth, Settings()), World(truth, Settings(user_click_sd=1.5))
    a = ab_run(flat, 400, (1.5, 1.5), np.random.default_rng(4))[0]
    b = ab_run(World(truth, Settings(user_click_sd=0.0)), 400, (1.5, 1.5),
               np.random.default_rng(4))[0]
    assert a.equals(b)  # sd 0 draws nothing extra: the generator-as-is world, same stream
    spread_de = ab_analyse(*ab_run(spread, 600, (1.5, 1.5), np.random.default_rng(4))[:2],
                           600, 0.05)["design_effect"]
    flat_de = ab_analyse(*ab_run(flat, 600, (1.5, 1.5), np.random.default_rng(4))[:2], 600,
                         0.05)["design_effect"]
    # users who click more or less than others: user-level variance the A/B test pays for
    assert min(spread_de) > 1.3 * max(flat_de), (spread_de, flat_de)
