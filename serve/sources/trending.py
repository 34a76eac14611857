"""Trending: posts ranked by time-decayed engagement: the list the catalog computed at load,
or, with the online feature store, that list with the live engagement added (refreshed
about once a second, shared by every request)."""

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
        live = query.trending
        if live is not None:
            return Candidates(live.ids[:k], live.scores[:k], live.rows[:k])
        ids, scores = self._catalog.trending
        return Candidates(ids[:k], scores[:k], self._catalog.trending_rows[:k])
