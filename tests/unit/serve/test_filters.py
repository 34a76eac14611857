from __future__ import annotations

from typing import Literal

import pytest

from serve.filters import (
    FILTERS,
    BlockedAuthor,
    Excluded,
    FilterContext,
    Locale,
    Moderation,
    Seen,
    apply_filters,
    build_filters,
)
from serve.types import ItemInfo, Merged


def _m(item_id: int) -> Merged:
    return Merged(item_id=item_id, sources=("ann",), source_scores={"ann": 0.5},
                  retrieval_score=0.5)


def _info(item_id: int, *, author: int = 100, language: str = "en",
          verdict: str = "allow") -> ItemInfo:
    return ItemInfo(item_id=item_id, author_id=author, topic="news", language=language,
                    created_at_s=0.0, verdict=verdict)


def _ctx(*, exclude: frozenset[int] = frozenset(), seen: frozenset[int] = frozenset(),
         blocked: frozenset[int] = frozenset(), languages: frozenset[str] | None = None,
         review_policy: Literal["hold", "allow"] = "hold") -> FilterContext:
    return FilterContext(exclude_ids=exclude, seen_ids=seen, blocked_authors=blocked,
                         languages=languages, review_policy=review_policy)


def test_excluded_and_seen_drop_by_id_and_need_no_info() -> None:
    ctx = _ctx(exclude=frozenset({1}), seen=frozenset({2}))
    assert not Excluded().keep(_m(1), None, ctx)
    assert Excluded().keep(_m(2), None, ctx)
    assert not Seen().keep(_m(2), None, ctx)
    assert Seen().keep(_m(1), None, ctx)


def test_blocked_author_drops_blocked_and_unknown_items() -> None:
    ctx = _ctx(blocked=frozenset({7}))
    f = BlockedAuthor()
    assert not f.keep(_m(1), _info(1, author=7), ctx)
    assert f.keep(_m(2), _info(2, author=8), ctx)
    assert not f.keep(_m(3), None, ctx)
    # Nothing blocked: the rule needs no info, so it does not judge unknown items.
    assert f.keep(_m(3), None, _ctx())


def test_locale_keeps_requested_languages_or_anything_when_unset() -> None:
    f = Locale()
    ctx = _ctx(languages=frozenset({"en", "de"}))
    assert f.keep(_m(1), _info(1, language="de"), ctx)
    assert not f.keep(_m(2), _info(2, language="fr"), ctx)
    assert not f.keep(_m(3), None, ctx)
    assert f.keep(_m(2), _info(2, language="fr"), _ctx(languages=None))


@pytest.mark.parametrize("policy", ["hold", "allow"])
def test_moderation_never_keeps_blocked_or_unknown_items(policy: Literal["hold", "allow"]) -> None:
    f = Moderation()
    ctx = _ctx(review_policy=policy)
    assert not f.keep(_m(1), _info(1, verdict="block"), ctx)
    assert not f.keep(_m(2), None, ctx)
    assert f.keep(_m(3), _info(3, verdict="allow"), ctx)


def test_moderation_review_is_held_or_allowed_by_policy() -> None:
    f = Moderation()
    info = _info(1, verdict="review")
    assert not f.keep(_m(1), info, _ctx(review_policy="hold"))
    assert f.keep(_m(1), info, _ctx(review_policy="allow"))


def test_moderation_fails_closed_on_an_unknown_verdict() -> None:
    assert not Moderation().keep(_m(1), _info(1, verdict="maybe"), _ctx(review_policy="allow"))


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
    kept, removed = apply_filters(items, infos, ctx, filters)
    assert [m.item_id for m in kept] == [1]
    # Item 3 is charged to blocked_author only; item 5 (unknown) to blocked_author too, since
    # a non-empty block list cannot vouch for an unknown author.
    assert removed == {"excluded": 0, "seen": 1, "blocked_author": 2, "moderation": 2}


def test_apply_filters_charges_unknown_items_to_moderation_when_nothing_else_needs_info() -> None:
    items = [_m(1), _m(2), _m(3)]
    infos = {1: _info(1), 3: _info(3, verdict="review")}
    kept, removed = apply_filters(items, infos, _ctx(review_policy="allow"),
                                  build_filters(["locale"]))
    assert [m.item_id for m in kept] == [1, 3]
    assert removed == {"locale": 0, "moderation": 1}
