"""Trending: posts ranked by time-decayed engagement (computed when the catalog loads)."""

from __future__ import annotations

from serve.catalog import Catalog
from serve.sources.base import SourceQuery
from serve.types import Candidate


class TrendingSource:
    name = "trending"
    cold_start = True

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def generate(self, query: SourceQuery, k: int) -> list[Candidate]:
        ids, scores = self._catalog.trending
        return [Candidate(int(i), self.name, float(s))
                for i, s in zip(ids[:k], scores[:k], strict=True)]
