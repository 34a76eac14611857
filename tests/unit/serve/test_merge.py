from __future__ import annotations

import pytest

from serve.merge import merge_candidates
from serve.types import Candidate, Merged


def _c(source: str, *pairs: tuple[int, float]) -> list[Candidate]:
    return [Candidate(item_id=i, source=source, score=s) for i, s in pairs]


def _ids(merged: list[Merged]) -> list[int]:
    return [m.item_id for m in merged]


def test_quota_takes_each_sources_best_items_by_its_own_score() -> None:
    per_source = {"ann": _c("ann", (1, 0.1), (2, 0.9), (3, 0.5))}
    out = merge_candidates(per_source, quotas={"ann": 2}, limit=10)
    assert _ids(out) == [2, 3]


def test_source_missing_from_quotas_contributes_nothing() -> None:
    per_source = {"ann": _c("ann", (1, 0.9)), "trending": _c("trending", (2, 5.0))}
    out = merge_candidates(per_source, quotas={"ann": 5}, limit=10)
    assert _ids(out) == [1]


def test_zero_quota_contributes_nothing() -> None:
    per_source = {"ann": _c("ann", (1, 0.9)), "trending": _c("trending", (2, 5.0))}
    out = merge_candidates(per_source, quotas={"ann": 5, "trending": 0}, limit=10)
    assert _ids(out) == [1]


def test_repeated_item_within_one_source_counts_once_with_its_best_score() -> None:
    per_source = {"ann": _c("ann", (1, 0.3), (1, 0.9), (2, 0.5), (3, 0.1))}
    out = merge_candidates(per_source, quotas={"ann": 2}, limit=10)
    assert _ids(out) == [1, 2]
    assert out[0].source_scores == {"ann": 0.9}


def test_dedupe_keeps_every_source_and_score() -> None:
    per_source = {"ann": _c("ann", (7, 0.8)), "trending": _c("trending", (7, 12.0))}
    out = merge_candidates(per_source, quotas={"ann": 3, "trending": 3}, limit=10)
    assert len(out) == 1
    assert out[0].sources == ("ann", "trending")
    assert out[0].source_scores == {"ann": pytest.approx(0.8), "trending": pytest.approx(12.0)}
    assert out[0].retrieval_score == pytest.approx(0.8)


def test_retrieval_score_is_zero_without_ann() -> None:
    per_source = {"trending": _c("trending", (7, 12.0)), "follows": _c("follows", (7, 3.0))}
    out = merge_candidates(per_source, quotas={"trending": 1, "follows": 1}, limit=10)
    assert out[0].retrieval_score == 0.0
    assert out[0].sources == ("trending", "follows")


def test_round_robin_interleaves_sources_in_mapping_order() -> None:
    per_source = {
        "trending": _c("trending", (10, 3.0), (11, 2.0)),
        "ann": _c("ann", (1, 0.9), (2, 0.8), (3, 0.7)),
    }
    out = merge_candidates(per_source, quotas={"ann": 3, "trending": 3}, limit=10)
    assert _ids(out) == [10, 1, 11, 2, 3]


def test_round_robin_skips_items_already_emitted_without_losing_the_turn() -> None:
    per_source = {"ann": _c("ann", (1, 0.9), (2, 0.8)), "follows": _c("follows", (1, 5.0),
                                                                        (3, 4.0))}
    out = merge_candidates(per_source, quotas={"ann": 2, "follows": 2}, limit=10)
    assert _ids(out) == [1, 3, 2]
    assert out[0].sources == ("ann", "follows")


def test_shared_item_counts_against_each_proposing_sources_quota() -> None:
    # follows' single slot goes to item 1, which ann also proposed, so item 3 never makes it.
    per_source = {"ann": _c("ann", (1, 0.9), (2, 0.8)), "follows": _c("follows", (1, 5.0),
                                                                        (3, 4.0))}
    out = merge_candidates(per_source, quotas={"ann": 2, "follows": 1}, limit=10)
    assert _ids(out) == [1, 2]


def test_limit_stops_the_interleave() -> None:
    per_source = {"a": _c("a", (1, 3.0), (2, 2.0)), "b": _c("b", (10, 3.0), (11, 2.0))}
    assert _ids(merge_candidates(per_source, quotas={"a": 2, "b": 2}, limit=3)) == [1, 10, 2]
    assert merge_candidates(per_source, quotas={"a": 2, "b": 2}, limit=0) == []


def test_negative_limit_raises_naming_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        merge_candidates({}, quotas={}, limit=-1)


def test_negative_quota_raises_naming_source_and_value() -> None:
    with pytest.raises(ValueError, match=r"'ann'.*-2"):
        merge_candidates({"ann": _c("ann", (1, 0.9))}, quotas={"ann": -2}, limit=5)
