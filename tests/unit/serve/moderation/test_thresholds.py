"""Thresholds from measured scores (serve.moderation.thresholds): pure logic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from serve.moderation.policy import parse_policy
from serve.moderation.thresholds import (
    measure,
    precision_threshold,
    propose,
    recall_threshold,
    wilson,
)


def test_recall_threshold_is_the_highest_reaching_the_target() -> None:
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    scores = np.array([.95, .9, .85, .8, .7, .6, .5, .4, .3, .2, .99, .1])
    t = recall_threshold(labels, scores, 0.9)
    assert t == pytest.approx(0.3)  # 9 of 10 positives at or above 0.3
    assert measure(labels, scores, t).recall == pytest.approx(0.9)
    assert measure(labels, scores, t + 1e-6).recall < 0.9  # any higher misses the target
    assert recall_threshold(labels, scores, 1.0) == pytest.approx(0.2)


def test_precision_threshold_is_the_lowest_reaching_the_target_over_enough_items() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    labels = rng.random(2000) < scores ** 3  # precision rises with the score
    t = precision_threshold(labels, scores, 0.8)
    assert t is not None
    assert measure(labels, scores, t).precision >= 0.8
    below = np.sort(scores[scores < t])[-1]
    assert measure(labels, scores, below).precision < 0.8
    # a perfect score on too few items is no evidence: not reached
    few = np.array([1, 0, 0, 0, 0])
    assert precision_threshold(few, np.array([.9, .1, .2, .3, .4]), 0.9) is None
    assert precision_threshold(few, np.array([.9, .1, .2, .3, .4]), 0.9, min_flagged=1) == .9


def test_precision_threshold_counts_ties_together() -> None:
    labels = np.array([1] * 30 + [0] * 30)
    scores = np.array([0.9] * 25 + [0.5] * 5 + [0.5] * 30)  # 0.5 flags all the tied negatives
    assert precision_threshold(labels, scores, 0.9) == pytest.approx(0.9)


def test_wilson_interval() -> None:
    lo, hi = wilson(270, 300)
    assert lo < 0.9 < hi and hi - lo == pytest.approx(0.068, abs=0.005)
    assert wilson(0, 0) == (0.0, 1.0)


def _heldout(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for split in ("val", "test"):
        y_h = rng.random(n) < 0.1
        y_a = y_h | (rng.random(n) < 0.5)
        frames.append(pd.DataFrame({
            "split": split, "label_hate": y_h, "label_abuse": y_a,
            "score_hate": np.clip(y_h * 0.5 + rng.random(n) * 0.6, 0, 1),
            "score_abuse": np.clip(y_a * 0.4 + rng.random(n) * 0.7, 0, 1)}))
    return pd.concat(frames, ignore_index=True)


def test_proposal_is_a_valid_policy_with_the_figures_in_comments() -> None:
    base = parse_policy({"version": "base.1", "labels": {
        "hate": {"review_at": .25, "block_at": .85}, "abuse": {"review_at": .99,
                                                               "block_at": .995},
        "nudity": {"review_at": .2, "block_at": .8}}}, labels=())
    p = propose(_heldout(4000, 1), ("hate", "abuse"), base=base, severe=("hate",),
                bundle_version="v1")
    text = p.to_yaml()
    policy = parse_policy(yaml.safe_load(text), labels=("hate", "abuse"))
    hate = p.labels[0]
    assert hate.review_rule == "recall" and hate.review_val.recall >= 0.9
    assert policy.thresholds["hate"].review_at == pytest.approx(hate.review_at, abs=1e-4)
    # measured on test, which the threshold never saw: the target within its interval
    assert hate.recall_within_error(0.9)
    abuse = p.labels[1]
    assert abuse.review_rule == "capped" and abuse.review_at == abuse.block_at
    assert policy.thresholds["nudity"].review_at == 0.2  # not scored: kept from the base
    assert "# hate: recall val" in text and "of " in text and "positives" in text
    assert policy.version == "v1.thresholds"


def test_targets_out_of_range_are_refused() -> None:
    base = parse_policy({"version": "b", "labels": {"hate": {"review_at": .2,
                                                             "block_at": .8}}}, labels=())
    with pytest.raises(ValueError, match="target_recall"):
        propose(_heldout(100, 0), ("hate",), base=base, target_recall=1.5)
