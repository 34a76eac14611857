"""Fresh / cold-start: the newest allowed posts, so new items get impressions at all."""

from __future__ import annotations

from serve.catalog import Catalog
from serve.sources.base import SourceQuery
from serve.types import Candidates


class FreshSource:
    name = "fresh"
    cold_start = True
    inline = True  # slices of lists the catalog built at load time

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        ids, created = self._catalog.fresh
        return Candidates(ids[:k], (created[:k] - query.now_s) / 3600.0,
                          self._catalog.fresh_rows[:k])
