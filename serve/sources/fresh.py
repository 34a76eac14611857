"""Fresh / cold-start: the newest allowed posts, so new items get impressions at all."""

from __future__ import annotations

from serve.catalog import Catalog
from serve.sources.base import SourceQuery
from serve.types import Candidate


class FreshSource:
    name = "fresh"
    cold_start = True

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def generate(self, query: SourceQuery, k: int) -> list[Candidate]:
        ids, created = self._catalog.fresh
        return [Candidate(int(i), self.name, float((c - query.now_s) / 3600.0))
                for i, c in zip(ids[:k], created[:k], strict=True)]
