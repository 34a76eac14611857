"""Value objects that flow through the feed pipeline.

Framework-free: no Ray, Triton or FastAPI here, so that candidate merging, filtering and
re-ranking are unit-tested as plain functions. Pydantic is for config and wire payloads only
(`serve.config`, `serve.api`); these are frozen dataclasses. What a request carries in the
hundreds (candidates, their catalog columns) is held as numpy columns, not one object per
item: the hot path works on whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Candidates:
    """What one candidate source proposes: item ids and the source's own score of each,
    best first (inner product for ANN, decayed engagement for trending, ...; comparable only
    within the source). Arrays, so a few hundred candidates cost no Python object each."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float64
    # each id's row in the serving catalog (-1: not in it), when the source knows them (the
    # catalog's own lists do): the pipeline then finds the items without a binary search
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray(self.ids, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64).reshape(-1))
        if len(self.ids) != len(self.scores):
            raise ValueError(f"candidates: {len(self.ids)} ids but {len(self.scores)} scores")
        if self.rows is not None:
            object.__setattr__(self, "rows", np.asarray(self.rows, dtype=np.int64).reshape(-1))
            if len(self.rows) != len(self.ids):
                raise ValueError(f"candidates: {len(self.ids)} ids but {len(self.rows)} rows")

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class Merged:
    """Deduplicated candidates, in merge order: each item's id, which sources proposed it (bit
    k of `source_mask` is `sources[k]`) and its two-tower inner product (`retrieval_score`:
    ANN's score, 0.0 when ANN did not propose it and it was not scored afterwards)."""

    ids: np.ndarray  # int64
    source_mask: np.ndarray  # uint32
    sources: tuple[str, ...]
    retrieval_score: np.ndarray  # float64
    catalog_rows: np.ndarray | None = None  # as Candidates.rows, when every source knew them

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Merged:
        """The rows `rows` selects (a boolean mask or indices), in order."""
        return Merged(self.ids[rows], self.source_mask[rows], self.sources,
                      self.retrieval_score[rows],
                      None if self.catalog_rows is None else self.catalog_rows[rows])

    def sources_of(self, row: int) -> tuple[str, ...]:
        m = int(self.source_mask[row])
        return tuple(s for k, s in enumerate(self.sources) if m >> k & 1)


@dataclass(frozen=True)
class UserRow:
    """What serving knows of one user from the catalog; defaults ("unknown") for a user the
    catalog does not have (`known` False: cold start)."""

    user_id: int
    known: bool
    age_band: str = "unknown"
    country: str = "unknown"
    language: str = "unknown"
    row: int = -1  # the user's row in the catalog's user order; -1: not in the catalog

    def columns(self) -> dict[str, np.ndarray]:
        """One-row columns, the shape `FeatureTransform.user_features` reads."""
        return {"user_id": np.asarray([self.user_id], np.int64),
                "age_band": np.asarray([self.age_band], object),
                "country": np.asarray([self.country], object),
                "language": np.asarray([self.language], object)}


@dataclass(frozen=True, eq=False)
class Items:
    """Catalog columns of some item ids, aligned with `ids` (a struct of arrays, so filters
    and re-ranking run on whole columns). `known` is False for an id the catalog lacks; its
    other columns are then meaningless. Categorical columns are int32 codes into the
    catalog's `categories` (e.g. `categories["topic"][code]` is the topic's name)."""

    ids: np.ndarray  # int64
    known: np.ndarray  # bool
    rows: np.ndarray  # int64: each item's row in the catalog (meaningless where not known)
    author_id: np.ndarray  # int64
    topic: np.ndarray  # int32 codes
    modality: np.ndarray  # int32 codes
    language: np.ndarray  # int32 codes
    verdict: np.ndarray  # int32 codes: "allow" | "review" | "block" (the bundle's labels)
    created_at_s: np.ndarray  # float64, unix seconds
    created_ns: np.ndarray  # int64, unix nanoseconds (as pandas converts created_at_s)
    categories: dict[str, np.ndarray] = field(repr=False)  # column -> names (object array)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Items:
        return Items(self.ids[rows], self.known[rows], self.rows[rows], self.author_id[rows],
                     self.topic[rows],
                     self.modality[rows], self.language[rows], self.verdict[rows],
                     self.created_at_s[rows], self.created_ns[rows], self.categories)

    def names(self, column: str) -> np.ndarray:
        """The column's values as names (object array)."""
        return self.categories[column][getattr(self, column)]

    def codes_of(self, column: str, names: frozenset[str] | set[str]) -> np.ndarray:
        """The codes of `names` in `column` (names the catalog never saw have none)."""
        cats = self.categories[column]
        return np.asarray([k for k, v in enumerate(cats.tolist()) if v in names], np.int32)


@dataclass(frozen=True)
class FeedItem:
    """One line of the response."""

    item_id: int
    rank: int
    score: float
    sources: tuple[str, ...]
    explain: dict[str, object] = field(hash=False, compare=False, default_factory=dict)
