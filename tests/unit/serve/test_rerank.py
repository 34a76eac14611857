from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from serve.rerank import RerankInput, RerankParams, rerank
from serve.types import FeedItem
from tests.fakes import Info

HOUR_S = 3600.0
# Score order only: no freshness, no diversity, no exploration, caps out of the way.
PLAIN = RerankParams(author_cap=10, topic_cap=10, mmr_lambda=1.0, freshness_weight=0.0,
                     explore_slots=0)


def _s(item_id: int, score: float) -> tuple[int, float]:
    return item_id, score


def _info(item_id: int, *, author: int | None = None, topic: str | None = None,
          created_at_s: float = 0.0) -> Info:
    # Distinct author and topic per item unless a test wants them shared.
    return Info(author_id=item_id if author is None else author,
                topic=f"t{item_id}" if topic is None else topic, created_at_s=created_at_s)


def _run(scored: Sequence[tuple[int, float]], infos: Mapping[int, Info] | None = None,
         embeddings: Mapping[int, np.ndarray] | None = None, *, limit: int = 10,
         now_s: float = 0.0, seed: int = 0, params: RerankParams = PLAIN) -> list[FeedItem]:
    """The page for (item id, score) candidates, as FeedItems (the pipeline's own wrapping:
    sources and probabilities are its business, not re-ranking's)."""
    ids = [i for i, _ in scored]
    rows = [(infos or {}).get(i) or _info(i) for i in ids]
    topics: dict[str, int] = {}
    emb = embeddings or {}
    dims = {len(v) for v in emb.values()} or {2}
    dim = dims.pop()
    vecs = np.stack([np.asarray(emb.get(i, np.zeros(dim)), np.float64) for i in ids]) \
        if ids else np.zeros((0, dim))
    c = RerankInput(scores=np.asarray([sc for _, sc in scored], np.float64),
                    created_at_s=np.asarray([r.created_at_s for r in rows], np.float64),
                    authors=np.asarray([r.author_id for r in rows], np.int64),
                    topics=np.asarray([topics.setdefault(r.topic, len(topics)) for r in rows],
                                      np.int64),
                    embeddings=vecs)
    picks = rerank(c, limit=limit, now_s=now_s, rng=np.random.default_rng(seed),
                   params=params)
    return [FeedItem(ids[p.row], rank, p.score, ("ann", "trending"), p.explain)
            for rank, p in enumerate(picks, start=1)]


def _ids(page: list[FeedItem]) -> list[int]:
    return [f.item_id for f in page]


def test_plain_ranking_is_by_score_with_ranks_sources_and_explain() -> None:
    page = _run([_s(1, 0.2), _s(2, 0.9), _s(3, 0.5)], limit=2)
    assert _ids(page) == [2, 3]
    assert [f.rank for f in page] == [1, 2]
    assert page[0].score == pytest.approx(0.9)
    assert page[0].explain == {"ranker_score": pytest.approx(0.9), "freshness": 0.0,
                               "mmr_penalty": 0.0}


def test_columns_of_different_lengths_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="authors"):
        RerankInput(scores=np.zeros(3), created_at_s=np.zeros(3), authors=np.zeros(2),
                    topics=np.zeros(3), embeddings=np.zeros((3, 2)))


def test_equal_scores_keep_original_order() -> None:
    page = _run([_s(5, 0.4), _s(3, 0.4), _s(9, 0.4)])
    assert _ids(page) == [5, 3, 9]


def test_equal_scores_normalise_cleanly_so_diversity_still_decides() -> None:
    # All-equal scores must not divide by a zero spread: item 3 duplicates item 5, so the
    # orthogonal item 9 goes second.
    emb = {5: np.array([1.0, 0.0]), 3: np.array([1.0, 0.0]), 9: np.array([0.0, 1.0])}
    params = RerankParams(mmr_lambda=0.5, freshness_weight=0.0, explore_slots=0)
    page = _run([_s(5, 0.4), _s(3, 0.4), _s(9, 0.4)], embeddings=emb, params=params)
    assert _ids(page) == [5, 9, 3]


def test_author_cap_limits_items_per_author() -> None:
    scored = [_s(1, 0.9), _s(2, 0.8), _s(3, 0.7), _s(4, 0.1)]
    infos = {i: _info(i, author=7) for i in (1, 2, 3)} | {4: _info(4, author=8)}
    params = RerankParams(author_cap=2, mmr_lambda=1.0, freshness_weight=0.0, explore_slots=0)
    page = _run(scored, infos, limit=3, params=params)
    assert _ids(page) == [1, 2, 4]
    assert not any("cap_relaxed" in f.explain for f in page)


def test_topic_cap_limits_items_per_topic() -> None:
    scored = [_s(1, 0.9), _s(2, 0.8), _s(3, 0.1)]
    infos = {1: _info(1, topic="cats"), 2: _info(2, topic="cats"), 3: _info(3, topic="dogs")}
    params = RerankParams(topic_cap=1, mmr_lambda=1.0, freshness_weight=0.0, explore_slots=0)
    assert _ids(_run(scored, infos, limit=2, params=params)) == [1, 3]


def test_caps_are_relaxed_rather_than_leaving_the_page_short() -> None:
    scored = [_s(1, 0.9), _s(2, 0.8), _s(3, 0.1), _s(4, 0.05)]
    infos = {i: _info(i, author=7) for i in (1, 2, 4)} | {3: _info(3, author=8)}
    params = RerankParams(author_cap=1, mmr_lambda=1.0, freshness_weight=0.0, explore_slots=0)
    page = _run(scored, infos, limit=4, params=params)
    # Uncapped item 3 goes first; then only author 7 is left, picked by score and flagged.
    assert _ids(page) == [1, 3, 2, 4]
    assert [f.explain.get("cap_relaxed", False) for f in page] == [False, False, True, True]


def test_mmr_prefers_a_dissimilar_item_over_a_near_duplicate() -> None:
    scored = [_s(1, 1.0), _s(2, 0.95), _s(3, 0.9), _s(4, 0.0)]
    emb = {1: np.array([1.0, 0.0]), 2: np.array([0.99, math.sqrt(1 - 0.99**2)]),
           3: np.array([0.0, 1.0]), 4: np.array([-1.0, 0.0])}
    diverse = RerankParams(mmr_lambda=0.8, freshness_weight=0.0, explore_slots=0)
    page = _run(scored, embeddings=emb, params=diverse)
    assert _ids(page) == [1, 3, 2, 4]
    assert page[1].explain["mmr_penalty"] == pytest.approx(0.0)
    assert page[2].explain["mmr_penalty"] == pytest.approx(0.2 * 0.99)
    # Control: with lambda = 1 the near-duplicate wins on score.
    assert _ids(_run(scored, embeddings=emb)) == [1, 2, 3, 4]


def test_mmr_normalises_embeddings_and_treats_missing_ones_as_dissimilar() -> None:
    scored = [_s(1, 1.0), _s(2, 0.95), _s(3, 0.9), _s(4, 0.0)]
    emb = {1: np.array([3.0, 0.0]), 2: np.array([2.0, 0.0]), 3: np.array([0.0, 5.0])}
    params = RerankParams(mmr_lambda=0.5, freshness_weight=0.0, explore_slots=0)
    page = _run(scored, embeddings=emb, params=params)
    # Item 2 duplicates item 1 (cosine 1, not the raw dot product 6); item 4 has no embedding.
    assert _ids(page) == [1, 3, 4, 2]
    assert page[2].explain["mmr_penalty"] == pytest.approx(0.0)
    assert page[3].explain["mmr_penalty"] == pytest.approx(0.5)


def test_freshness_boosts_a_newer_item() -> None:
    now_s = 48 * HOUR_S
    infos = {1: _info(1, created_at_s=0.0), 2: _info(2, created_at_s=now_s)}
    params = RerankParams(mmr_lambda=1.0, freshness_weight=0.1, freshness_half_life_h=24.0,
                          explore_slots=0)
    page = _run([_s(1, 0.5), _s(2, 0.5)], infos, now_s=now_s, params=params)
    assert _ids(page) == [2, 1]
    assert page[0].score == pytest.approx(0.6)
    assert page[1].score == pytest.approx(0.5 + 0.1 * 0.25)
    assert page[1].explain["freshness"] == pytest.approx(0.025)
    assert page[1].explain["ranker_score"] == pytest.approx(0.5)


def test_an_item_from_the_future_gets_no_more_than_the_full_boost() -> None:
    infos = {1: _info(1, created_at_s=10 * HOUR_S)}
    params = RerankParams(freshness_weight=0.1, explore_slots=0)
    page = _run([_s(1, 0.5)], infos, now_s=0.0, params=params)
    assert page[0].explain["freshness"] == pytest.approx(0.1)


def _explore_case(seed: int, params: RerankParams, n: int = 8,
                  limit: int = 6) -> list[FeedItem]:
    scored = [_s(i, float(n - i)) for i in range(1, n + 1)]  # ranked order 1, 2, ..., n
    return _run(scored, limit=limit, seed=seed, params=params)


def test_exploration_replaces_one_low_slot_deterministically_with_a_propensity() -> None:
    params = RerankParams(mmr_lambda=1.0, freshness_weight=0.0, explore_slots=1,
                          explore_min_rank=5)
    page = _explore_case(seed=3, params=params)
    assert _ids(page) == _ids(_explore_case(seed=3, params=params))

    # The same draws, made by hand: a position among ranks 5..6, then one of items 7, 8.
    rng = np.random.default_rng(3)
    pos = 4 + int(rng.integers(2))
    explored = [7, 8][int(rng.integers(2))]
    expected = [1, 2, 3, 4, 5, 6]
    expected[pos] = explored
    assert _ids(page) == expected
    assert page[pos].explain == {"exploration": True, "propensity": pytest.approx(0.5)}
    assert page[pos].rank == pos + 1
    assert all("exploration" not in f.explain for k, f in enumerate(page) if k != pos)


def test_several_exploration_slots_use_distinct_positions_and_items() -> None:
    params = RerankParams(mmr_lambda=1.0, freshness_weight=0.0, explore_slots=3,
                          explore_min_rank=4)
    for seed in range(10):
        page = _explore_case(seed=seed, params=params, n=10, limit=6)
        assert _ids(page)[:3] == [1, 2, 3]
        explored: list[dict[str, Any]] = [f.explain for f in page[3:]]
        assert all(e.get("exploration") for e in explored)
        assert sorted(e["propensity"] for e in explored) == pytest.approx([1 / 4, 1 / 3, 1 / 2])
        assert set(_ids(page)[3:]) <= {7, 8, 9, 10}
        assert len(set(_ids(page))) == 6


@pytest.mark.parametrize(("n", "limit"), [(8, 3), (4, 6)])
def test_exploration_is_skipped_without_low_positions_or_unused_candidates(n: int,
                                                                           limit: int) -> None:
    # (8, 3): ranks 5.. do not exist on a 3-item page; (4, 6): every candidate is on the page.
    params = RerankParams(mmr_lambda=1.0, freshness_weight=0.0, explore_slots=1,
                          explore_min_rank=5)
    page = _explore_case(seed=0, params=params, n=n, limit=limit)
    assert _ids(page) == list(range(1, min(n, limit) + 1))


def test_limit_below_one_raises() -> None:
    with pytest.raises(ValueError, match=r"limit.*0"):
        _run([_s(1, 0.5)], limit=0)


@pytest.mark.parametrize(("field", "value"), [
    ("author_cap", 0), ("topic_cap", 0), ("mmr_lambda", 1.5), ("mmr_lambda", -0.1),
    ("freshness_weight", -0.1), ("freshness_half_life_h", 0.0), ("explore_slots", -1),
    ("explore_min_rank", 0),
])
def test_bad_params_raise_naming_field_and_value(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=rf"{field}.*{re.escape(str(value))}"):
        RerankParams(**kwargs)
