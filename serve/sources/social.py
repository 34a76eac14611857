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
        rows = self._catalog.recent_rows_by(self._catalog.followees(query.user_id))
        created = self._catalog.created_at_s(rows)
        top = np.argsort(-created, kind="stable")[:k]
        # score: recency in hours before now (higher = newer), comparable within the source
        return Candidates(self._catalog.post_ids[rows[top]],
                          (created[top] - query.now_s) / 3600.0, rows[top])
