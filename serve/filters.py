"""Candidate filters: drop merged candidates that must not reach the page.

Each filter is one small class behind the `Filter` protocol; `FILTERS` is the explicit registry
that config names resolve against, and `build_filters` always adds moderation so no config can
turn it off. `apply_filters` runs them in order and counts what each one removed, for metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from serve.moderation.verdicts import LiveVerdicts
from serve.types import Items

REVIEW_POLICIES: tuple[str, ...] = ("hold", "allow")


def _ids(values: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False).reshape(-1)
    return np.fromiter(values, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class FilterContext:
    """Per-request facts the filters check items against.

    `exclude_ids`, `seen_ids` and `blocked_authors` take any collection of ints and are held
    as int64 arrays. `languages` is None when any language is allowed. `review_policy`
    decides what happens to items whose moderation verdict is "review": "hold" keeps them off
    the page until a human has looked, "allow" serves them meanwhile. `live_verdicts`, when
    given, holds verdicts decided after the bundle was built (live scores, reviewer
    decisions).
    """

    exclude_ids: Iterable[int] | np.ndarray
    seen_ids: Iterable[int] | np.ndarray
    blocked_authors: Iterable[int] | np.ndarray
    languages: frozenset[str] | None
    review_policy: Literal["hold", "allow"] = "hold"
    live_verdicts: LiveVerdicts | None = None

    def __post_init__(self) -> None:
        # Literal is not enforced at run time; a typo here would silently mean "hold" or worse.
        if self.review_policy not in REVIEW_POLICIES:
            raise ValueError(f"review_policy must be one of {', '.join(REVIEW_POLICIES)}, "
                             f"got {self.review_policy!r}")
        for name in ("exclude_ids", "seen_ids", "blocked_authors"):
            object.__setattr__(self, name, _ids(getattr(self, name)))


class Filter(Protocol):
    """Decides which candidates stay, for a whole column of them at once. An item the catalog
    does not know has `items.known` False; a filter whose rule needs catalog columns drops
    such items (it cannot vouch for them)."""

    name: str

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        """A boolean per item: True to keep it."""
        ...


class Excluded:
    """Drops items the caller explicitly excluded (e.g. already on screen)."""

    name = "excluded"

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        if not len(ctx.exclude_ids):  # type: ignore[arg-type]
            return np.ones(len(items), dtype=bool)
        return ~np.isin(items.ids, ctx.exclude_ids)  # type: ignore[arg-type]


class Seen:
    """Drops items the user has already been shown."""

    name = "seen"

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        if not len(ctx.seen_ids):  # type: ignore[arg-type]
            return np.ones(len(items), dtype=bool)
        return ~np.isin(items.ids, ctx.seen_ids)  # type: ignore[arg-type]


class BlockedAuthor:
    """Drops items whose author the user blocked. With an empty block list the rule needs no
    catalog info, so unknown items pass; otherwise an unknown item's author might be blocked,
    so it is dropped."""

    name = "blocked_author"

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        blocked = ctx.blocked_authors
        if not len(blocked):  # type: ignore[arg-type]
            return np.ones(len(items), dtype=bool)
        return items.known & ~np.isin(items.author_id, blocked)  # type: ignore[arg-type]


class Locale:
    """Keeps items in one of the request's languages; with `languages` None everything passes
    (and unknown items too, since the rule then needs no info)."""

    name = "locale"

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        if ctx.languages is None:
            return np.ones(len(items), dtype=bool)
        return items.known & np.isin(items.language, items.codes_of("language", ctx.languages))


class Moderation:
    """Enforces the moderation verdict: "block" is never served, "review" only when the review
    policy is "allow", and an item unknown to the catalog is never served, since nothing vouches
    for it. Always runs (see `build_filters`)."""

    name = "moderation"

    def keep(self, items: Items, ctx: FilterContext) -> np.ndarray:
        verdict = items.names("verdict")
        if ctx.live_verdicts is not None and len(ctx.live_verdicts):
            verdict = ctx.live_verdicts.effective_many(items.ids, verdict)
        ok = verdict == "allow"
        if ctx.review_policy == "allow":
            ok |= verdict == "review"
        # "block" and any verdict this code does not know: fail closed.
        return items.known & ok


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


def apply_filters(items: Items, ctx: FilterContext, filters: Sequence[Filter]
                  ) -> tuple[np.ndarray, dict[str, int]]:
    """Run `filters` in order over `items`.

    Returns a boolean mask of the kept items and, for every filter (0 included), how many
    items it removed. An item is charged to the first filter that drops it only, so the
    counts add up to the number of removed items.
    """
    alive = np.ones(len(items), dtype=bool)
    removed: dict[str, int] = {}
    for f in filters:
        keep = f.keep(items, ctx)
        removed[f.name] = int(np.count_nonzero(alive & ~keep))
        alive &= keep
    return alive, removed
