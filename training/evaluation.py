"""Offline metrics and the baselines every model is compared with in the same run.

Retrieval is scored by full ranking: every catalogue item is scored for every evaluated
user, items the user interacted with in training are excluded, and Recall@K / NDCG@K are
computed against the user's held-out items. Baselines (TopPop, ItemKNN) are scored the same
way from the same training interactions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

ScoreFn = Callable[[np.ndarray], np.ndarray]  # user rows -> scores [len(rows), n_items]


def full_ranking_metrics(score_fn: ScoreFn, *, train_items: list[np.ndarray],
                         test_items: list[np.ndarray], ks: tuple[int, ...],
                         batch: int = 512) -> dict[str, float]:
    """Recall@K and NDCG@K over users that have test items.

    `train_items[u]` / `test_items[u]` are item indices of evaluation user u; `score_fn`
    gets an array of user positions and returns their scores over the whole catalogue.
    """
    users = np.asarray([u for u, t in enumerate(test_items) if len(t)])
    kmax = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    recall: dict[int, list[float]] = {k: [] for k in ks}
    ndcg: dict[int, list[float]] = {k: [] for k in ks}
    for start in range(0, len(users), batch):
        rows = users[start:start + batch]
        scores = score_fn(rows).astype(np.float64, copy=True)
        for j, u in enumerate(rows):
            if len(train_items[u]):
                scores[j, train_items[u]] = -np.inf
        top = np.argpartition(-scores, kmax, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
        for j, u in enumerate(rows):
            truth = set(test_items[u].tolist())
            hits = np.fromiter((t in truth for t in top[j]), dtype=bool, count=kmax)
            for k in ks:
                recall[k].append(hits[:k].sum() / len(truth))
                ideal = discounts[:min(len(truth), k)].sum()
                ndcg[k].append((hits[:k] * discounts[:k]).sum() / ideal)
    out: dict[str, float] = {"users_evaluated": float(len(users))}
    for k in ks:
        out[f"recall_at_{k}"] = float(np.mean(recall[k])) if recall[k] else 0.0
        out[f"ndcg_at_{k}"] = float(np.mean(ndcg[k])) if ndcg[k] else 0.0
    return out


def popularity_scores(train_item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """TopPop: training interaction count per item."""
    return np.bincount(train_item_idx, minlength=n_items).astype(np.float64)


def itemknn_score_fn(train_user_idx: np.ndarray, train_item_idx: np.ndarray, n_users: int,
                   n_items: int, *, k_neighbors: int = 100, shrink: float = 10.0) -> ScoreFn:
    """ItemKNN: cosine item-item similarity (shrunk, top-k pruned); a user's score for an
    item is the sum of its similarities to the user's training items."""
    from scipy import sparse

    m = sparse.csr_matrix((np.ones(len(train_user_idx)), (train_user_idx, train_item_idx)),
                          shape=(n_users, n_items))
    m.data[:] = 1.0
    co = (m.T @ m).toarray()
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-9)
    np.fill_diagonal(sim, 0.0)
    if k_neighbors < n_items:
        cut = np.partition(sim, -k_neighbors, axis=0)[-k_neighbors]
        sim[sim < cut[None, :]] = 0.0
    user_items = m

    def score(rows: np.ndarray) -> np.ndarray:
        return np.asarray(user_items[rows] @ sim)

    return score


def grouped_ndcg(groups: np.ndarray, scores: np.ndarray, gains: np.ndarray, *, k: int
                 ) -> float:
    """Mean NDCG@k over groups (requests) that have at least one positive gain."""
    df = pd.DataFrame({"g": groups, "s": scores, "y": gains})
    df = df.sort_values(["g", "s"], ascending=[True, False], kind="stable")
    df["rank"] = df.groupby("g").cumcount()
    df["disc"] = np.where(df["rank"] < k, 1.0 / np.log2(df["rank"] + 2.0), 0.0)
    dcg = (df["y"] * df["disc"]).groupby(df["g"]).sum()
    ideal_sorted = df.sort_values(["g", "y"], ascending=[True, False], kind="stable")
    ideal_sorted["rank"] = ideal_sorted.groupby("g").cumcount()
    idisc = np.where(ideal_sorted["rank"] < k, 1.0 / np.log2(ideal_sorted["rank"] + 2.0), 0.0)
    idcg = (ideal_sorted["y"] * idisc).groupby(ideal_sorted["g"]).sum()
    valid = idcg > 0
    return float((dcg[valid] / idcg[valid]).mean()) if valid.any() else 0.0


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC, or None when the labels hold a single class (undefined)."""
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def safe_pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        return None
    return float(average_precision_score(labels, scores))
