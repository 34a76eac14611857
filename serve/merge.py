"""Candidate merging: turn per-source candidate lists into one deduplicated, interleaved list.

Each retrieval source (ANN, trending, follows, ...) scores candidates on its own scale, so
scores are never compared across sources. Instead every source gets an explicit quota and the
sources are interleaved round-robin, so a source that returns many candidates cannot crowd the
others out before ranking sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serve.types import Candidate, Merged

# The source whose score is the two-tower inner product the ranker uses as a feature.
ANN_SOURCE = "ann"


def merge_candidates(per_source: Mapping[str, Sequence[Candidate]], *, quotas: Mapping[str, int],
                     limit: int) -> list[Merged]:
    """Merge candidate lists from several sources into at most `limit` deduplicated items.

    Algorithm:
      1. Each source's candidates are sorted by that source's score, descending (stable, so
         equal scores keep the source's own order), and the first `quotas[source]` distinct
         item ids are taken. A source missing from `quotas` takes nothing. Quotas are applied
         per source before deduplication, so an item proposed by two sources uses one slot of
         each source's quota.
      2. Items taken by several sources become one `Merged` whose `sources` lists them in the
         iteration order of `per_source` and whose `source_scores` holds every source's score.
         `retrieval_score` is the "ann" source's score, or 0.0 when ANN did not propose it.
      3. Output is a round-robin over the sources (in the iteration order of `per_source`):
         each turn, a source emits its best item not already emitted. Stops at `limit` items.

    The mapping key names the source; `Candidate.source` is not consulted.

    Raises:
        ValueError: `limit` is negative, or a quota is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    for source, quota in quotas.items():
        if quota < 0:
            raise ValueError(f"quota for source {source!r} must be >= 0, got {quota}")

    taken = {source: _take(cands, quotas.get(source, 0)) for source, cands in per_source.items()}

    sources_of: dict[int, list[str]] = {}
    scores_of: dict[int, dict[str, float]] = {}
    for source, cands in taken.items():
        for c in cands:
            sources_of.setdefault(c.item_id, []).append(source)
            scores_of.setdefault(c.item_id, {})[source] = c.score

    # Round-robin with one cursor per source; a cursor skips items another source already
    # emitted, so a shared item never costs a source its turn.
    cursors = dict.fromkeys(taken, 0)
    emitted: set[int] = set()
    out: list[Merged] = []
    while len(out) < limit:
        progressed = False
        for source, cands in taken.items():
            if len(out) >= limit:
                break
            i = cursors[source]
            while i < len(cands) and cands[i].item_id in emitted:
                i += 1
            if i < len(cands):
                item_id = cands[i].item_id
                scores = scores_of[item_id]
                out.append(Merged(item_id=item_id, sources=tuple(sources_of[item_id]),
                                  source_scores=dict(scores),
                                  retrieval_score=scores.get(ANN_SOURCE, 0.0)))
                emitted.add(item_id)
                i += 1
                progressed = True
            cursors[source] = i
        if not progressed:
            break
    return out


def _take(cands: Sequence[Candidate], quota: int) -> list[Candidate]:
    """The source's best `quota` distinct items, best first; a repeated item keeps its best
    score (the first one seen after the stable sort)."""
    if quota == 0:
        return []
    seen: set[int] = set()
    out: list[Candidate] = []
    for c in sorted(cands, key=lambda c: c.score, reverse=True):
        if c.item_id in seen:
            continue
        seen.add(c.item_id)
        out.append(c)
        if len(out) == quota:
            break
    return out
