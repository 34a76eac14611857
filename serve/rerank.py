"""Re-ranking: turn ranker scores into the final page.

The ranker scores items one at a time; a page is more than the top-k of those scores. This
module adds a freshness boost, enforces per-author and per-topic caps, diversifies with maximal
marginal relevance (MMR) and reserves a few slots for uniformly random exploration, logging the
propensity so that off-policy evaluation can de-bias the resulting feedback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.types import FeedItem, ItemInfo, Scored


@dataclass(frozen=True)
class RerankParams:
    """Re-ranking knobs.

    `author_cap` / `topic_cap`: most items per author / topic on one page (relaxed only when
    the page could not be filled otherwise). `mmr_lambda`: 1.0 ranks by score alone, lower
    values trade score for dissimilarity to what is already on the page. `freshness_weight`
    and `freshness_half_life_h`: an item `h` hours old gets `weight * 0.5 ** (h / half_life)`
    added to its score. `explore_slots`: how many page positions at rank `explore_min_rank` or
    below are replaced by a uniformly drawn unranked candidate.
    """

    author_cap: int = 2
    topic_cap: int = 4
    mmr_lambda: float = 0.8
    freshness_weight: float = 0.1
    freshness_half_life_h: float = 24.0
    explore_slots: int = 1
    explore_min_rank: int = 5

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, float, bool, str], ...] = (
            ("author_cap", self.author_cap, self.author_cap >= 1, ">= 1"),
            ("topic_cap", self.topic_cap, self.topic_cap >= 1, ">= 1"),
            ("mmr_lambda", self.mmr_lambda, 0.0 <= self.mmr_lambda <= 1.0, "in [0, 1]"),
            ("freshness_weight", self.freshness_weight, self.freshness_weight >= 0, ">= 0"),
            ("freshness_half_life_h", self.freshness_half_life_h,
             self.freshness_half_life_h > 0, "> 0"),
            ("explore_slots", self.explore_slots, self.explore_slots >= 0, ">= 0"),
            ("explore_min_rank", self.explore_min_rank, self.explore_min_rank >= 1, ">= 1"),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value!r}")


def freshness(created_at_s: float, *, now_s: float, params: RerankParams) -> float:
    """The freshness term: `weight * 0.5 ** (age_h / half_life_h)`. Items from the future
    (clock skew) count as brand new rather than getting more than the full boost."""
    age_h = max(0.0, (now_s - created_at_s) / 3600.0)
    return params.freshness_weight * float(0.5 ** (age_h / params.freshness_half_life_h))


def rerank(scored: Sequence[Scored], infos: Mapping[int, ItemInfo],
           embeddings: Mapping[int, np.ndarray], *, limit: int, now_s: float,
           rng: np.random.Generator, params: RerankParams) -> list[FeedItem]:
    """Build a page of at most `limit` items from ranked candidates.

    Algorithm:
      1. Candidates without catalog info are skipped (filters should have dropped them), as
         are repeats of an item id (the first wins). Each gets
         `adjusted = score + freshness`, then adjusted scores are min-max normalised to [0, 1]
         (all 1.0 when they are all equal) so that `mmr_lambda` weighs score against cosine
         similarity on comparable scales.
      2. Greedy MMR: among remaining candidates whose author and topic are under their caps,
         pick the one maximising `lambda * norm_score - (1 - lambda) * max_sim`, where
         `max_sim` is the largest cosine similarity to an item already picked (0 for the first
         pick and for missing embeddings). Ties go to the earlier candidate. When no candidate
         is under the caps, picking continues among the capped ones by the same rule, marked
         `cap_relaxed`, because a short page is worse than a cap breach.
      3. Exploration: for each of `explore_slots`, a distinct position in
         `[explore_min_rank - 1, len(page) - 1]` is drawn uniformly with `rng`, and the item
         there is replaced by one drawn uniformly (without replacement) from the candidates not
         on the page; its explain records the propensity `1 / pool size`. Exploration items may
         breach the caps: they are meant to be unbiased, not curated.

    Explain of a ranked item: `ranker_score`, `freshness`, `mmr_penalty` (the amount
    `(1 - lambda) * max_sim` subtracted in the MMR objective), `probs` when the ranker gave
    any, and `cap_relaxed` when picked past the caps. `score` is the adjusted score.

    Raises:
        ValueError: `limit` < 1, or embeddings of different lengths.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")

    cands: list[Scored] = []
    seen: set[int] = set()
    for s in scored:
        if s.item.item_id in infos and s.item.item_id not in seen:
            seen.add(s.item.item_id)
            cands.append(s)
    n = len(cands)
    if n == 0:
        return []

    fresh = np.array([freshness(infos[s.item.item_id].created_at_s, now_s=now_s, params=params)
                      for s in cands])
    adjusted = np.array([s.score for s in cands], dtype=np.float64) + fresh
    spread = float(adjusted.max() - adjusted.min())
    norm = (adjusted - adjusted.min()) / spread if spread > 0 else np.ones(n)

    emb = _unit_rows([embeddings.get(s.item.item_id) for s in cands])
    authors = np.array([infos[s.item.item_id].author_id for s in cands], dtype=np.int64)
    topic_codes: dict[str, int] = {}
    topics = np.array([topic_codes.setdefault(infos[s.item.item_id].topic, len(topic_codes))
                       for s in cands], dtype=np.int64)

    lam = params.mmr_lambda
    remaining = np.ones(n, dtype=bool)
    capped = np.zeros(n, dtype=bool)
    max_sim = np.zeros(n)  # stays 0 until the first pick: nothing to be similar to yet
    author_count: dict[int, int] = {}
    topic_count: dict[int, int] = {}
    page: list[tuple[int, float, bool]] = []  # (candidate index, mmr penalty, cap relaxed)
    while len(page) < limit and remaining.any():
        eligible = remaining & ~capped
        relaxed = not eligible.any()
        if relaxed:
            eligible = remaining
        penalty = (1.0 - lam) * max_sim
        # Index into the eligible set rather than masking with -inf, so that a non-finite
        # score can never make argmax land on an item already picked. argmax returns the
        # first maximum, so the earlier candidate wins ties.
        idx = np.flatnonzero(eligible)
        i = int(idx[np.argmax((lam * norm - penalty)[idx])])
        page.append((i, float(penalty[i]), relaxed))
        remaining[i] = False

        sims = emb @ emb[i]
        max_sim = sims if len(page) == 1 else np.maximum(max_sim, sims)
        a, t = int(authors[i]), int(topics[i])
        author_count[a] = author_count.get(a, 0) + 1
        topic_count[t] = topic_count.get(t, 0) + 1
        if author_count[a] >= params.author_cap:
            capped |= authors == a
        if topic_count[t] >= params.topic_cap:
            capped |= topics == t

    # (candidate index, explain) per page position; FeedItems are built once ranks are final.
    entries: list[tuple[int, dict[str, object]]] = []
    for i, pen, relaxed in page:
        explain: dict[str, object] = {"ranker_score": float(cands[i].score),
                                      "freshness": float(fresh[i]), "mmr_penalty": pen}
        if cands[i].probs:
            explain["probs"] = dict(cands[i].probs)
        if relaxed:
            explain["cap_relaxed"] = True
        entries.append((i, explain))

    pool = [i for i in range(n) if remaining[i]]
    positions = list(range(params.explore_min_rank - 1, len(entries)))
    for _ in range(params.explore_slots):
        if not pool or not positions:
            break
        pos = positions.pop(int(rng.integers(len(positions))))
        propensity = 1.0 / len(pool)
        j = pool.pop(int(rng.integers(len(pool))))
        entries[pos] = (j, {"exploration": True, "propensity": propensity})

    return [FeedItem(item_id=cands[i].item.item_id, rank=rank, score=float(adjusted[i]),
                     sources=cands[i].item.sources, explain=explain)
            for rank, (i, explain) in enumerate(entries, start=1)]


def _unit_rows(vectors: Sequence[np.ndarray | None]) -> np.ndarray:
    """Stack embeddings as unit rows. Missing or zero vectors become zero rows, so their cosine
    similarity to anything is 0, as specified for missing embeddings."""
    dims = {np.asarray(v).size for v in vectors if v is not None}
    if len(dims) > 1:
        raise ValueError(f"embeddings must all have one length, got lengths {sorted(dims)}")
    dim = dims.pop() if dims else 0
    out = np.zeros((len(vectors), dim))
    present = [k for k, v in enumerate(vectors) if v is not None]
    if present:
        out[present] = np.stack([np.asarray(vectors[k], dtype=np.float64).ravel()
                                 for k in present])
    # Embeddings should already be unit vectors; normalising again is cheap and keeps a stale
    # or unnormalised bundle from skewing the similarity penalty.
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    ok = (norms > 0) & np.isfinite(norms)
    return np.where(ok, out / np.where(ok, norms, 1.0), 0.0)
