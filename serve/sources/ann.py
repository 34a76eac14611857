"""Two-tower ANN: the user's vector against the HNSW index of item vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve.sources.base import SourceQuery
from serve.types import Candidates

if TYPE_CHECKING:
    from serve.catalog import Catalog
    from serve.retrieval import TwoTowerRetrieval


class AnnSource:
    name = "ann"
    cold_start = False  # an unknown user's vector carries no signal
    inline = True  # an in-memory HNSW search at a fixed efSearch: bounded, under a millisecond

    def __init__(self, retrieval: TwoTowerRetrieval, catalog: Catalog | None = None) -> None:
        self._retrieval = retrieval
        # the catalog row of each indexed item, once: the pipeline then finds ANN's
        # candidates in the catalog by indexing
        self._catalog_rows = (None if catalog is None
                              else catalog.rows_of(retrieval.item_ids))

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        if query.user_vec is None:
            return Candidates.empty()
        positions, scores = self._retrieval.search_positions(query.user_vec, k)
        return Candidates(self._retrieval.item_ids[positions], scores,
                          None if self._catalog_rows is None
                          else self._catalog_rows[positions])
