"""Candidate filters: drop merged candidates that must not reach the page.

Each filter is one small class behind the `Filter` protocol; `FILTERS` is the explicit registry
that config names resolve against, and `build_filters` always adds moderation so no config can
turn it off. `apply_filters` runs them in order and counts what each one removed, for metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from serve.moderation.verdicts import LiveVerdicts
from serve.types import ItemInfo, Merged

REVIEW_POLICIES: tuple[str, ...] = ("hold", "allow")


@dataclass(frozen=True)
class FilterContext:
    """Per-request facts the filters check items against.

    `languages` is None when any language is allowed. `review_policy` decides what happens to
    items whose moderation verdict is "review": "hold" keeps them off the page until a human
    has looked, "allow" serves them meanwhile. `live_verdicts`, when given, holds verdicts
    decided after the bundle was built (live scores, reviewer decisions).
    """

    exclude_ids: frozenset[int]
    seen_ids: frozenset[int]
    blocked_authors: frozenset[int]
    languages: frozenset[str] | None
    review_policy: Literal["hold", "allow"] = "hold"
    live_verdicts: LiveVerdicts | None = None

    def __post_init__(self) -> None:
        # Literal is not enforced at run time; a typo here would silently mean "hold" or worse.
        if self.review_policy not in REVIEW_POLICIES:
            raise ValueError(f"review_policy must be one of {', '.join(REVIEW_POLICIES)}, "
                             f"got {self.review_policy!r}")


class Filter(Protocol):
    """Decides whether one candidate stays. `info` is None when the catalog does not know the
    item; a filter whose rule needs `info` drops such items (it cannot vouch for them)."""

    name: str

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        """True to keep `item`."""
        ...


class Excluded:
    """Drops items the caller explicitly excluded (e.g. already on screen)."""

    name = "excluded"

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        return item.item_id not in ctx.exclude_ids


class Seen:
    """Drops items the user has already been shown."""

    name = "seen"

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        return item.item_id not in ctx.seen_ids


class BlockedAuthor:
    """Drops items whose author the user blocked. With an empty block list the rule needs no
    catalog info, so unknown items pass; otherwise an unknown item's author might be blocked,
    so it is dropped."""

    name = "blocked_author"

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        if not ctx.blocked_authors:
            return True
        return info is not None and info.author_id not in ctx.blocked_authors


class Locale:
    """Keeps items in one of the request's languages; with `languages` None everything passes
    (and unknown items too, since the rule then needs no info)."""

    name = "locale"

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        if ctx.languages is None:
            return True
        return info is not None and info.language in ctx.languages


class Moderation:
    """Enforces the moderation verdict: "block" is never served, "review" only when the review
    policy is "allow", and an item unknown to the catalog is never served, since nothing vouches
    for it. Always runs (see `build_filters`)."""

    name = "moderation"

    def keep(self, item: Merged, info: ItemInfo | None, ctx: FilterContext) -> bool:
        if info is None:
            return False
        verdict = (ctx.live_verdicts.effective(item.item_id, info.verdict)
                   if ctx.live_verdicts is not None else info.verdict)
        if verdict == "allow":
            return True
        if verdict == "review":
            return ctx.review_policy == "allow"
        # "block" and any verdict this code does not know: fail closed.
        return False


FILTERS: dict[str, type[Filter]] = {
    Excluded.name: Excluded,
    Seen.name: Seen,
    BlockedAuthor.name: BlockedAuthor,
    Locale.name: Locale,
    Moderation.name: Moderation,
}


def build_filters(names: Sequence[str]) -> list[Filter]:
    """Instantiate the named filters in the given order, then append moderation if it was not
    named, so that no configuration can serve unmoderated items.

    Raises:
        ValueError: a name is not in `FILTERS`, or is listed twice (removal counts are keyed
            by name, so a repeat would be ambiguous).
    """
    out: list[Filter] = []
    for name in names:
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}; allowed: {', '.join(sorted(FILTERS))}")
        if any(f.name == name for f in out):
            raise ValueError(f"filter {name!r} is listed twice in {list(names)}")
        out.append(FILTERS[name]())
    if not any(f.name == Moderation.name for f in out):
        out.append(Moderation())
    return out


def apply_filters(items: Sequence[Merged], infos: Mapping[int, ItemInfo], ctx: FilterContext,
                  filters: Sequence[Filter]) -> tuple[list[Merged], dict[str, int]]:
    """Run `filters` in order over `items`.

    Returns the kept items in their original order and, for every filter (0 included), how
    many items it removed. An item is charged to the first filter that drops it only, so the
    counts add up to the number of removed items.
    """
    removed = {f.name: 0 for f in filters}
    kept: list[Merged] = []
    for item in items:
        info = infos.get(item.item_id)
        for f in filters:
            if not f.keep(item, info, ctx):
                removed[f.name] += 1
                break
        else:
            kept.append(item)
    return kept, removed
