"""Social: the newest posts of the authors the user follows, newest first."""

from __future__ import annotations

import numpy as np

from serve.catalog import Catalog
from serve.sources.base import SourceQuery
from serve.types import Candidates


class SocialSource:
    name = "social"
    cold_start = False
    inline = True  # slices of lists the catalog built at load time

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        authors = self._catalog.followees(query.user_id)
        ids, created = self._catalog.recent_posts_by(authors)
        top = np.argsort(-created, kind="stable")[:k]
        # score: recency in hours before now (higher = newer), comparable within the source
        return Candidates(ids[top], (created[top] - query.now_s) / 3600.0)
