from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from serve.filters import (
    FILTERS,
    BlockedAuthor,
    Excluded,
    Filter,
    FilterContext,
    Locale,
    Moderation,
    Seen,
    apply_filters,
    build_filters,
)
from tests.fakes import Info, items_of


class _M:
    """An item id, as a filter sees it with its catalog row (or none)."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id


def _m(item_id: int) -> _M:
    return _M(item_id)


def _info(item_id: int, *, author: int = 100, language: str = "en",
          verdict: str = "allow") -> Info:
    return Info(author_id=author, language=language, verdict=verdict)


class _One:
    """A filter asked about one item at a time: `keep(item, info, ctx)` on a one-row column."""

    def __init__(self, f: Filter) -> None:
        self.f = f

    def keep(self, item: _M, info: Info | None, ctx: FilterContext) -> bool:
        out = self.f.keep(items_of([(item.item_id, info)]), ctx)
        assert out.shape == (1,) and out.dtype == bool
        return bool(out[0])


def _apply(items: list[_M], infos: dict[int, Info], ctx: FilterContext,
           filters: list[Filter]) -> tuple[list[int], dict[str, int]]:
    batch = items_of([(m.item_id, infos.get(m.item_id)) for m in items])
    keep, removed = apply_filters(batch, ctx, filters)
    return batch.ids[keep].tolist(), removed


def _ctx(*, exclude: frozenset[int] = frozenset(), seen: frozenset[int] = frozenset(),
         blocked: frozenset[int] = frozenset(), languages: frozenset[str] | None = None,
         review_policy: Literal["hold", "allow"] = "hold") -> FilterContext:
    return FilterContext(exclude_ids=exclude, seen_ids=seen, blocked_authors=blocked,
                         languages=languages, review_policy=review_policy)


def test_excluded_and_seen_drop_by_id_and_need_no_info() -> None:
    ctx = _ctx(exclude=frozenset({1}), seen=frozenset({2}))
    assert not _One(Excluded()).keep(_m(1), None, ctx)
    assert _One(Excluded()).keep(_m(2), None, ctx)
    assert not _One(Seen()).keep(_m(2), None, ctx)
    assert _One(Seen()).keep(_m(1), None, ctx)


def test_blocked_author_drops_blocked_and_unknown_items() -> None:
    ctx = _ctx(blocked=frozenset({7}))
    f = _One(BlockedAuthor())
    assert not f.keep(_m(1), _info(1, author=7), ctx)
    assert f.keep(_m(2), _info(2, author=8), ctx)
    assert not f.keep(_m(3), None, ctx)
    # Nothing blocked: the rule needs no info, so it does not judge unknown items.
    assert f.keep(_m(3), None, _ctx())


def test_locale_keeps_requested_languages_or_anything_when_unset() -> None:
    f = _One(Locale())
    ctx = _ctx(languages=frozenset({"en", "de"}))
    assert f.keep(_m(1), _info(1, language="de"), ctx)
    assert not f.keep(_m(2), _info(2, language="fr"), ctx)
    assert not f.keep(_m(3), None, ctx)
    assert f.keep(_m(2), _info(2, language="fr"), _ctx(languages=None))


@pytest.mark.parametrize("policy", ["hold", "allow"])
def test_moderation_never_keeps_blocked_or_unknown_items(policy: Literal["hold", "allow"]) -> None:
    f = _One(Moderation())
    ctx = _ctx(review_policy=policy)
    assert not f.keep(_m(1), _info(1, verdict="block"), ctx)
    assert not f.keep(_m(2), None, ctx)
    assert f.keep(_m(3), _info(3, verdict="allow"), ctx)


def test_moderation_review_is_held_or_allowed_by_policy() -> None:
    f = _One(Moderation())
    info = _info(1, verdict="review")
    assert not f.keep(_m(1), info, _ctx(review_policy="hold"))
    assert f.keep(_m(1), info, _ctx(review_policy="allow"))


def test_moderation_fails_closed_on_an_unknown_verdict() -> None:
    f = _One(Moderation())
    assert not f.keep(_m(1), _info(1, verdict="maybe"), _ctx(review_policy="allow"))


def test_review_policy_defaults_to_hold_and_rejects_typos() -> None:
    ctx = FilterContext(exclude_ids=frozenset(), seen_ids=frozenset(),
                        blocked_authors=frozenset(), languages=None)
    assert ctx.review_policy == "hold"
    with pytest.raises(ValueError, match="'allwo'"):
        FilterContext(exclude_ids=frozenset(), seen_ids=frozenset(), blocked_authors=frozenset(),
                      languages=None, review_policy="allwo")  # type: ignore[arg-type]


def test_registry_maps_each_name_to_its_class() -> None:
    expected = {"excluded": Excluded, "seen": Seen, "blocked_author": BlockedAuthor,
                "locale": Locale, "moderation": Moderation}
    assert dict(FILTERS) == expected
    for name, cls in FILTERS.items():
        assert cls.name == name


def test_build_filters_keeps_order_and_appends_moderation() -> None:
    assert [f.name for f in build_filters(["seen", "excluded"])] == [
        "seen", "excluded", "moderation"]
    assert [f.name for f in build_filters([])] == ["moderation"]


def test_build_filters_does_not_add_moderation_twice() -> None:
    assert [f.name for f in build_filters(["moderation", "locale"])] == ["moderation", "locale"]


def test_build_filters_rejects_unknown_names_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'spam'.*blocked_author, excluded, locale, "
                                         r"moderation, seen"):
        build_filters(["seen", "spam"])


def test_build_filters_rejects_a_repeated_name() -> None:
    with pytest.raises(ValueError, match="'seen'"):
        build_filters(["seen", "seen"])


def test_apply_filters_keeps_order_and_counts_each_removal_once() -> None:
    items = [_m(i) for i in (1, 2, 3, 4, 5, 6)]
    infos = {
        1: _info(1),
        2: _info(2, verdict="block"),
        3: _info(3, author=7, verdict="block"),  # blocked author and blocked verdict
        4: _info(4),
        # 5 is unknown to the catalog
        6: _info(6, verdict="review"),
    }
    ctx = _ctx(seen=frozenset({4}), blocked=frozenset({7}))
    filters = build_filters(["excluded", "seen", "blocked_author"])
    kept, removed = _apply(items, infos, ctx, filters)
    assert kept == [1]
    # Item 3 is charged to blocked_author only; item 5 (unknown) to blocked_author too, since
    # a non-empty block list cannot vouch for an unknown author.
    assert removed == {"excluded": 0, "seen": 1, "blocked_author": 2, "moderation": 2}


def test_apply_filters_charges_unknown_items_to_moderation_when_nothing_else_needs_info() -> None:
    items = [_m(1), _m(2), _m(3)]
    infos = {1: _info(1), 3: _info(3, verdict="review")}
    kept, removed = _apply(items, infos, _ctx(review_policy="allow"), build_filters(["locale"]))
    assert kept == [1, 3]
    assert removed == {"locale": 0, "moderation": 1}


def test_filter_context_holds_id_collections_as_int64_arrays() -> None:
    ctx = _ctx(exclude=frozenset({3, 1}), seen=frozenset(), blocked=frozenset({7}))
    assert sorted(ctx.exclude_ids.tolist()) == [1, 3]  # type: ignore[union-attr]
    assert ctx.seen_ids.dtype == np.int64 and len(ctx.seen_ids) == 0  # type: ignore[union-attr,arg-type]
    arr = np.array([5, 6], dtype=np.int32)
    c2 = FilterContext(exclude_ids=arr, seen_ids=[], blocked_authors=(), languages=None)
    assert c2.exclude_ids.dtype == np.int64  # type: ignore[union-attr]


def test_a_column_is_judged_like_its_rows_one_by_one() -> None:
    infos = [(1, _info(1)), (2, _info(2, verdict="block")), (3, None),
             (4, _info(4, author=7)), (5, _info(5, language="fr")),
             (6, _info(6, verdict="review"))]
    ctx = _ctx(exclude=frozenset({6}), seen=frozenset({1}), blocked=frozenset({7}),
               languages=frozenset({"en"}), review_policy="allow")
    for f in build_filters(["excluded", "seen", "blocked_author", "locale"]):
        column = f.keep(items_of(infos), ctx).tolist()
        one_by_one = [_One(f).keep(_M(i), info, ctx) for i, info in infos]
        assert column == one_by_one, f.name
