"""Candidate merging: turn per-source candidate lists into one deduplicated, interleaved list.

Each retrieval source (ANN, trending, follows, ...) scores candidates on its own scale, so
scores are never compared across sources. Instead every source gets an explicit quota and the
sources are interleaved round-robin, so a source that returns many candidates cannot crowd the
others out before ranking sees them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serve.types import Candidates, Merged

# The source whose score is the two-tower inner product the ranker uses as a feature.
ANN_SOURCE = "ann"
MAX_SOURCES = 32  # one bit each in Merged.source_mask


def merge_candidates(per_source: Mapping[str, Candidates], *, quotas: Mapping[str, int],
                     limit: int) -> Merged:
    """Merge candidate lists from several sources into at most `limit` deduplicated items.

    Algorithm:
      1. Each source's candidates are sorted by that source's score, descending (stable, so
         equal scores keep the source's own order), and the first `quotas[source]` distinct
         item ids are taken. A source missing from `quotas` takes nothing. Quotas are applied
         per source before deduplication, so an item proposed by two sources uses one slot of
         each source's quota.
      2. An item taken by several sources is one row whose sources are all of them, in the
         iteration order of `per_source`. `retrieval_score` is the "ann" source's score (its
         best for the item), or 0.0 when ANN did not take it.
      3. Output is a round-robin over the sources (in the iteration order of `per_source`):
         each turn, a source emits its best item not already emitted. Stops at `limit` items.

    The mapping key names the source. Steps 1 and 2 run on arrays; step 3 walks plain ints.

    Raises:
        ValueError: `limit` is negative, a quota is negative, or there are more than
            MAX_SOURCES sources.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    for source, quota in quotas.items():
        if quota < 0:
            raise ValueError(f"quota for source {source!r} must be >= 0, got {quota}")
    names = tuple(per_source)
    if len(names) > MAX_SOURCES:
        raise ValueError(f"{len(names)} candidate sources; at most {MAX_SOURCES} can merge")

    took = [_take(per_source[n], quotas.get(n, 0)) for n in names]
    taken = [(ids, scores) for ids, scores, _ in took]
    with_rows = all(r is not None for _, _, r in took)

    everything = np.concatenate([ids for ids, _ in taken]) if taken else np.zeros(0, np.int64)
    all_rows = (np.concatenate([r for _, _, r in took if r is not None])
                if took and with_rows else None)
    catalog_rows = None
    if len(np.unique(everything)) == len(everything):
        # No item is shared: the round-robin is the sources' lists interleaved by turn,
        # i.e. sorted by (position in its list, source order), cut at `limit`.
        turn = np.concatenate([np.arange(len(ids)) for ids, _ in taken]) if taken \
            else everything
        order = np.concatenate([np.full(len(ids), k) for k, (ids, _) in enumerate(taken)]) \
            if taken else everything
        picked = np.lexsort((order, turn))[:limit]
        merged = everything[picked]
        if all_rows is not None:
            catalog_rows = all_rows[picked]
    else:
        merged = np.asarray(_round_robin([ids.tolist() for ids, _ in taken], limit),
                            dtype=np.int64)
        if all_rows is not None:  # an id's rows agree across sources: take any of them
            order = np.argsort(everything, kind="stable")
            catalog_rows = all_rows[order[np.searchsorted(everything[order], merged)]]
    mask = np.zeros(len(merged), dtype=np.uint32)
    rscore = np.zeros(len(merged), dtype=np.float64)
    for k, (ids, scores) in enumerate(taken):
        if not len(ids):
            continue
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(ids[order], merged).clip(0, len(ids) - 1)
        hit = ids[order][pos] == merged
        mask |= hit.astype(np.uint32) << np.uint32(k)
        if names[k] == ANN_SOURCE:
            rscore = np.where(hit, scores[order][pos], 0.0)
    return Merged(merged, mask, names, rscore, catalog_rows)


def _round_robin(lists: list[list[int]], limit: int) -> list[int]:
    """Step 3 when sources share items: one cursor per source; a cursor skips items another
    source already emitted, so a shared item never costs a source its turn. Each source's
    cursor is an iterator, so skipping runs in the interpreter's loop, not in Python code
    per index."""
    emitted: set[int] = set()
    out: list[int] = []
    cursors = [iter(ids) for ids in lists]
    active = list(range(len(lists)))
    while active and len(out) < limit:
        still: list[int] = []
        for k in active:
            if len(out) >= limit:
                break
            for item in cursors[k]:
                if item not in emitted:
                    emitted.add(item)
                    out.append(item)
                    still.append(k)
                    break
        active = still  # an exhausted source has no more turns
    return out


def _take(c: Candidates, quota: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The source's best `quota` distinct items, their scores and catalog rows (None when
    the source gave none), best first; a repeated item keeps its best score (the first one
    after the stable sort). Sources mostly hand over distinct ids already best first; that
    case costs a check, not a sort."""
    ids, scores, rows = c.ids, c.scores, c.rows
    if quota == 0 or not len(c):
        return ids[:0], scores[:0], None if rows is None else rows[:0]
    if not (scores[1:] <= scores[:-1]).all():  # not best first (or a NaN): stable sort
        order = np.argsort(-scores, kind="stable")
        ids, scores = ids[order], scores[order]
        rows = None if rows is None else rows[order]
    ordered = np.sort(ids)
    if (ordered[1:] != ordered[:-1]).all():
        return ids[:quota], scores[:quota], None if rows is None else rows[:quota]
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)[:quota]
    return ids[keep], scores[keep], None if rows is None else rows[keep]
