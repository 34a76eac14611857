"""Value objects that flow through the feed pipeline.

Framework-free: no Ray, Triton or FastAPI here, so that candidate merging, filtering and
re-ranking are unit-tested as plain functions. Pydantic is for config and wire payloads only
(`serve.config`, `serve.api`); these are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """One item proposed by one candidate source. `score` is that source's own score
    (inner product for ANN, decayed engagement for trending, ...), comparable only within the
    source."""

    item_id: int
    source: str
    score: float


@dataclass(frozen=True)
class Merged:
    """A deduplicated candidate: every source that proposed it and each one's score.
    `retrieval_score` is the two-tower inner product (0.0 when ANN did not propose it and it
    was not scored afterwards)."""

    item_id: int
    sources: tuple[str, ...]
    source_scores: dict[str, float] = field(hash=False, compare=False)
    retrieval_score: float = 0.0


@dataclass(frozen=True)
class ItemInfo:
    """What filters and re-ranking need to know about an item, from the serving catalog."""

    item_id: int
    author_id: int
    topic: str
    language: str
    created_at_s: float  # unix seconds
    verdict: str  # "allow" | "review" | "block" (moderation, from the bundle's labels)


@dataclass(frozen=True)
class Scored:
    """A candidate after ranking: its final score, its per-task probabilities (empty when the
    ranker was unavailable and retrieval order was used)."""

    item: Merged
    score: float
    probs: dict[str, float] = field(hash=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class FeedItem:
    """One line of the response."""

    item_id: int
    rank: int
    score: float
    sources: tuple[str, ...]
    explain: dict[str, object] = field(hash=False, compare=False, default_factory=dict)
