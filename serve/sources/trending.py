"""Trending: posts ranked by time-decayed engagement (computed when the catalog loads)."""

from __future__ import annotations

from serve.catalog import Catalog
from serve.sources.base import SourceQuery
from serve.types import Candidates


class TrendingSource:
    name = "trending"
    cold_start = True
    inline = True  # slices of lists the catalog built at load time

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        ids, scores = self._catalog.trending
        return Candidates(ids[:k], scores[:k], self._catalog.trending_rows[:k])
