"""Two-tower ANN: the user's vector against the HNSW index of item vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve.sources.base import SourceQuery
from serve.types import Candidates

if TYPE_CHECKING:
    from serve.retrieval import TwoTowerRetrieval


class AnnSource:
    name = "ann"
    cold_start = False  # an unknown user's vector carries no signal
    inline = True  # an in-memory HNSW search at a fixed efSearch: bounded, under a millisecond

    def __init__(self, retrieval: TwoTowerRetrieval) -> None:
        self._retrieval = retrieval

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        if query.user_vec is None:
            return Candidates.empty()
        ids, scores = self._retrieval.search(query.user_vec, k)
        return Candidates(ids, scores)
