"""Re-ranking: turn ranker scores into the final page.

The ranker scores items one at a time; a page is more than the top-k of those scores. This
module adds a freshness boost, enforces per-author and per-topic caps, diversifies with maximal
marginal relevance (MMR) and reserves a few slots for uniformly random exploration, logging the
propensity so that off-policy evaluation can de-bias the resulting feedback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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


def freshness(created_at_s: np.ndarray, *, now_s: float, params: RerankParams) -> np.ndarray:
    """The freshness term per item: `weight * 0.5 ** (age_h / half_life_h)`. Items from the
    future (clock skew) count as brand new rather than getting more than the full boost."""
    age_h = np.maximum(0.0, (now_s - np.asarray(created_at_s, dtype=np.float64)) / 3600.0)
    return params.freshness_weight * np.power(0.5, age_h / params.freshness_half_life_h)


@dataclass(frozen=True, eq=False)
class RerankInput:
    """The ranked candidates, one row each, in ranking order (ties go to the earlier row):
    the final score, creation time, author, topic (any int code: equal codes are one topic)
    and two-tower embedding (a zero row when missing). Item ids must be distinct: the caller
    merges and dedupes before ranking."""

    scores: np.ndarray  # float64 [n]
    created_at_s: np.ndarray  # float64 [n]
    authors: np.ndarray  # int64 [n]
    topics: np.ndarray  # int [n]
    embeddings: np.ndarray  # [n, dim]

    def __post_init__(self) -> None:
        n = len(self.scores)
        bad = {k: len(v) for k, v in (("created_at_s", self.created_at_s),
                                      ("authors", self.authors), ("topics", self.topics),
                                      ("embeddings", self.embeddings)) if len(v) != n}
        if bad:
            raise ValueError(f"rerank input: {n} scores but lengths {bad}")


@dataclass(frozen=True)
class Pick:
    """One page position: the candidate's row in the input, its adjusted score and what
    explains its place."""

    row: int
    score: float
    explain: dict[str, object]


def rerank(c: RerankInput, *, limit: int, now_s: float,
           rng: np.random.Generator | Callable[[], np.random.Generator],
           params: RerankParams) -> list[Pick]:
    """Build a page of at most `limit` items from ranked candidates.

    Algorithm:
      1. Each candidate gets `adjusted = score + freshness`, then adjusted scores are min-max
         normalised to [0, 1] (all 1.0 when they are all equal) so that `mmr_lambda` weighs
         score against cosine similarity on comparable scales.
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
    `(1 - lambda) * max_sim` subtracted in the MMR objective), and `cap_relaxed` when picked
    past the caps. A pick's `score` is the adjusted score.

    Raises:
        ValueError: `limit` < 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n = len(c.scores)
    if n == 0:
        return []

    fresh = freshness(c.created_at_s, now_s=now_s, params=params)
    adjusted = np.asarray(c.scores, dtype=np.float64) + fresh
    spread = float(adjusted.max() - adjusted.min())
    norm = (adjusted - adjusted.min()) / spread if spread > 0 else np.ones(n)

    emb = _unit_rows(c.embeddings)
    authors = np.asarray(c.authors, dtype=np.int64)
    topics = np.asarray(c.topics, dtype=np.int64)

    lam = params.mmr_lambda
    base = lam * norm
    one_minus = 1.0 - lam
    # The pool's base scores, -inf outside it, so that `objective = base - penalty` is already
    # masked and argmax needs no copy: `in_rem` masks picked items (the relaxed pool),
    # `in_elig` masks picked and capped ones. Pool members' objectives are the same floats
    # as `base - penalty`.
    in_rem = base.copy()
    in_elig = base.copy()
    remaining = np.ones(n, dtype=bool)
    eligible = np.ones(n, dtype=bool)  # remaining and under both caps
    n_remaining = n_eligible = n
    max_sim = None  # until the first pick: nothing to be similar to yet (penalty 0)
    penalty = np.zeros(n)  # (1 - lambda) * max_sim
    objective = np.empty(n)
    author_l, topic_l = authors.tolist(), topics.tolist()
    author_count: dict[int, int] = {}
    topic_count: dict[int, int] = {}
    page: list[tuple[int, float, bool]] = []  # (candidate index, mmr penalty, cap relaxed)
    while len(page) < limit and n_remaining:
        relaxed = n_eligible == 0
        pool = remaining if relaxed else eligible
        np.subtract(in_rem if relaxed else in_elig, penalty, out=objective)
        # argmax returns the first maximum, so the earlier candidate wins ties. Should every
        # objective in the pool be -inf (or a NaN sit outside it), the argmax may land
        # outside the pool: then index into the pool itself, so a non-finite score never
        # picks an item twice.
        i = int(objective.argmax())
        if not pool[i]:
            idx = np.flatnonzero(pool)
            i = int(idx[np.argmax((base - penalty)[idx])])
        page.append((i, float(penalty[i]), relaxed))
        remaining[i] = False
        in_rem[i] = in_elig[i] = -np.inf
        n_remaining -= 1
        if eligible[i]:
            eligible[i] = False
            n_eligible -= 1

        sims = emb @ emb[i]
        if max_sim is None:
            max_sim = sims
        else:
            np.maximum(max_sim, sims, out=max_sim)
        np.multiply(one_minus, max_sim, out=penalty)
        a, t = author_l[i], topic_l[i]
        author_count[a] = author_count.get(a, 0) + 1
        topic_count[t] = topic_count.get(t, 0) + 1
        capped = None
        if author_count[a] >= params.author_cap:
            capped = authors == a
        if topic_count[t] >= params.topic_cap:
            capped = topics == t if capped is None else capped | (topics == t)
        if capped is not None:
            eligible &= ~capped
            in_elig[capped] = -np.inf
            n_eligible = int(np.count_nonzero(eligible))

    picks: list[Pick] = []
    rows = [i for i, _, _ in page]
    # the page's floats in one conversion each (tolist gives the same Python floats as float())
    score_l = np.asarray(c.scores)[rows].tolist()
    fresh_l, adjusted_l = fresh[rows].tolist(), adjusted[rows].tolist()
    for k, (i, pen, relaxed) in enumerate(page):
        explain: dict[str, object] = {"ranker_score": score_l[k], "freshness": fresh_l[k],
                                      "mmr_penalty": pen}
        if relaxed:
            explain["cap_relaxed"] = True
        picks.append(Pick(i, adjusted_l[k], explain))

    unpicked: list[int] = np.flatnonzero(remaining).tolist()
    positions = list(range(params.explore_min_rank - 1, len(picks)))
    if params.explore_slots and unpicked and positions and callable(rng):
        rng = rng()  # made only when a slot is drawn (a request's seeded generator)
    for _ in range(params.explore_slots):
        if not unpicked or not positions:
            break
        assert isinstance(rng, np.random.Generator)
        pos = positions.pop(int(rng.integers(len(positions))))
        propensity = 1.0 / len(unpicked)
        j = unpicked.pop(int(rng.integers(len(unpicked))))
        picks[pos] = Pick(j, float(adjusted[j]), {"exploration": True,
                                                   "propensity": propensity})
    return picks


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Embeddings as float64 unit rows. Zero rows (missing embeddings) stay zero, so their
    cosine similarity to anything is 0, as specified for missing embeddings."""
    out = np.asarray(vectors, dtype=np.float64)
    if out.ndim != 2:
        out = out.reshape(len(out), -1)
    # Embeddings should already be unit vectors; normalising again is cheap and keeps a stale
    # or unnormalised bundle from skewing the similarity penalty.
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    ok = (norms > 0) & np.isfinite(norms)
    return np.where(ok, out / np.where(ok, norms, 1.0), 0.0)
