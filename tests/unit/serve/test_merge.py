from __future__ import annotations

import numpy as np
import pytest

from serve.merge import MAX_SOURCES, merge_candidates
from serve.types import Candidates, Merged


def _c(source: str, *pairs: tuple[int, float]) -> Candidates:
    return Candidates([i for i, _ in pairs], [s for _, s in pairs])


def _ids(merged: Merged) -> list[int]:
    return merged.ids.tolist()


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
    assert out.retrieval_score.tolist() == [0.9, 0.5]


def test_dedupe_keeps_every_source_and_score() -> None:
    per_source = {"ann": _c("ann", (7, 0.8)), "trending": _c("trending", (7, 12.0))}
    out = merge_candidates(per_source, quotas={"ann": 3, "trending": 3}, limit=10)
    assert len(out) == 1
    assert out.sources_of(0) == ("ann", "trending")
    assert out.retrieval_score[0] == pytest.approx(0.8)


def test_retrieval_score_is_zero_without_ann() -> None:
    per_source = {"trending": _c("trending", (7, 12.0)), "follows": _c("follows", (7, 3.0))}
    out = merge_candidates(per_source, quotas={"trending": 1, "follows": 1}, limit=10)
    assert out.retrieval_score[0] == 0.0
    assert out.sources_of(0) == ("trending", "follows")


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
    assert out.sources_of(0) == ("ann", "follows")


def test_shared_item_counts_against_each_proposing_sources_quota() -> None:
    # follows' single slot goes to item 1, which ann also proposed, so item 3 never makes it.
    per_source = {"ann": _c("ann", (1, 0.9), (2, 0.8)), "follows": _c("follows", (1, 5.0),
                                                                        (3, 4.0))}
    out = merge_candidates(per_source, quotas={"ann": 2, "follows": 1}, limit=10)
    assert _ids(out) == [1, 2]


def test_limit_stops_the_interleave() -> None:
    per_source = {"a": _c("a", (1, 3.0), (2, 2.0)), "b": _c("b", (10, 3.0), (11, 2.0))}
    assert _ids(merge_candidates(per_source, quotas={"a": 2, "b": 2}, limit=3)) == [1, 10, 2]
    assert len(merge_candidates(per_source, quotas={"a": 2, "b": 2}, limit=0)) == 0


def test_negative_limit_raises_naming_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        merge_candidates({}, quotas={}, limit=-1)


def test_negative_quota_raises_naming_source_and_value() -> None:
    with pytest.raises(ValueError, match=r"'ann'.*-2"):
        merge_candidates({"ann": _c("ann", (1, 0.9))}, quotas={"ann": -2}, limit=5)


def test_too_many_sources_raise() -> None:
    many = {f"s{k}": _c(f"s{k}", (k, 1.0)) for k in range(MAX_SOURCES + 1)}
    with pytest.raises(ValueError, match=str(MAX_SOURCES)):
        merge_candidates(many, quotas=dict.fromkeys(many, 1), limit=100)


def _reference(per_source: dict[str, Candidates], quotas: dict[str, int],
               limit: int) -> list[tuple[int, tuple[str, ...], float]]:
    """The merge as the docstring states it, one Python object at a time."""
    taken: dict[str, list[tuple[int, float]]] = {}
    for name, c in per_source.items():
        seen: set[int] = set()
        rows = sorted(zip(c.ids.tolist(), c.scores.tolist(), strict=True),
                      key=lambda r: r[1], reverse=True)
        taken[name] = []
        for i, sc in rows:
            if i not in seen and len(taken[name]) < quotas.get(name, 0):
                seen.add(i)
                taken[name].append((i, sc))
    out: list[int] = []
    cursors = dict.fromkeys(taken, 0)
    while len(out) < limit:
        moved = False
        for name, rows in taken.items():
            if len(out) >= limit:
                break
            k = cursors[name]
            while k < len(rows) and rows[k][0] in out:
                k += 1
            if k < len(rows):
                out.append(rows[k][0])
                k += 1
                moved = True
            cursors[name] = k
        if not moved:
            break
    return [(i, tuple(n for n in taken if any(r[0] == i for r in taken[n])),
             next((sc for r, sc in taken.get("ann", []) if r == i), 0.0)) for i in out]


@pytest.mark.parametrize("seed", range(40))
def test_the_array_merge_equals_the_reference_on_random_lists(seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_source: dict[str, Candidates] = {}
    for k, name in enumerate(("social", "ann", "trending")):
        n = int(rng.integers(0, 40))
        # few distinct scores: ties; odd seeds: ids shared within and across sources; even
        # seeds: distinct ids, already best first (the sources' usual case: the fast paths)
        ids = rng.integers(0, 60, size=n) if seed % 2 else \
            rng.permutation(60)[:n] + 1000 * k
        scores = rng.choice([0.1, 0.2, 0.3, 0.5], size=n)
        if not seed % 2:
            scores = np.sort(scores)[::-1]
        # half the seeds carry catalog rows (a function of the id, as a catalog's are)
        per_source[name] = Candidates(ids, scores, ids * 7 + 3 if seed % 4 < 2 else None)
    quotas = {n: int(rng.integers(0, 25)) for n in per_source}
    limit = int(rng.integers(0, 70))
    got = merge_candidates(per_source, quotas=quotas, limit=limit)
    want = _reference(per_source, quotas, limit)
    assert [(int(i), got.sources_of(k), float(got.retrieval_score[k]))
            for k, i in enumerate(got.ids)] == want
    if seed % 4 < 2:
        assert got.catalog_rows is not None
        assert got.catalog_rows.tolist() == [i * 7 + 3 for i, _, _ in want]
    else:
        assert got.catalog_rows is None
