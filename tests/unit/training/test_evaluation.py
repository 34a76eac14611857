from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import (
    full_ranking_metrics,
    grouped_ndcg,
    itemknn_score_fn,
    popularity_scores,
    safe_auc,
)


def test_full_ranking_excludes_training_items_and_scores_hits() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.2, 0.9]])
    m = full_ranking_metrics(lambda rows: scores[rows], train_items=[np.array([0]),
                                                                     np.array([], int)],
                             test_items=[np.array([1]), np.array([0])], ks=(1, 2))
    # user 0: item 0 excluded, item 1 ranked first -> hit@1; user 1: item 0 ranked last.
    assert m["recall_at_1"] == pytest.approx(0.5)
    assert m["ndcg_at_1"] == pytest.approx(0.5)
    assert m["recall_at_2"] == pytest.approx(0.5)
    assert m["users_evaluated"] == 2


def test_grouped_ndcg_perfect_and_reversed() -> None:
    groups = np.array([0, 0, 0])
    gains = np.array([0.0, 0.0, 1.0])
    assert grouped_ndcg(groups, np.array([0.1, 0.2, 0.9]), gains, k=3) == pytest.approx(1.0)
    assert grouped_ndcg(groups, np.array([0.9, 0.2, 0.1]), gains, k=3) == pytest.approx(0.5)


def test_popularity_and_itemknn() -> None:
    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 0])
    assert popularity_scores(items, 3).tolist() == [3.0, 2.0, 0.0]
    score = itemknn_score_fn(users, items, 3, 3, k_neighbors=2, shrink=0.0)
    s = score(np.array([2]))[0]
    assert s[1] > 0 and s[2] == 0  # item 1 co-occurs with item 0; item 2 never seen


def test_auc_undefined_for_single_class() -> None:
    assert safe_auc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    assert safe_auc(np.array([0, 1]), np.array([0.1, 0.2])) == pytest.approx(1.0)
