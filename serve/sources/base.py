"""The candidate-source interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve.types import Candidates


@dataclass(frozen=True)
class SourceQuery:
    """What a source may use: the user, whether the catalog knows them, their two-tower
    vector (None for a cold-start user), the serving clock and the live trending list."""

    user_id: int
    known_user: bool
    user_vec: np.ndarray | None
    now_s: float
    # the trending list with live engagement merged in (the online feature store's
    # `Trending`: ids, scores, catalog rows); None: the bundle's list
    trending: Any = None


class CandidateSource(Protocol):
    """Proposes up to `k` items for a user, best first by the source's own score.

    Sources are synchronous. One whose `inline` is True does bounded work on memory it holds
    (slicing precomputed lists: tens of microseconds) and runs on the request's own thread:
    a thread hop would cost more than the work. Any other source (a search, a remote store)
    runs on the pipeline's thread pool under its timeout, counted from when it starts to run,
    so time spent waiting for a free thread or core is not charged to the source (see
    docs/performance.md)."""

    name: str
    cold_start: bool  # serves users the catalog does not know
    inline: bool

    def generate(self, query: SourceQuery, k: int) -> Candidates: ...
