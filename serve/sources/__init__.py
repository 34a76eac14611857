"""Candidate sources: one strategy per module behind `CandidateSource`; `SOURCES` is the
explicit registry the feed config names them from."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from serve.catalog import Catalog
from serve.sources.ann import AnnSource
from serve.sources.base import CandidateSource, SourceQuery
from serve.sources.fresh import FreshSource
from serve.sources.social import SocialSource
from serve.sources.trending import TrendingSource

if TYPE_CHECKING:
    from serve.retrieval import TwoTowerRetrieval

SourceFactory = Callable[[Catalog, "TwoTowerRetrieval"], CandidateSource]

SOURCES: dict[str, SourceFactory] = {
    "ann": lambda catalog, retrieval: AnnSource(retrieval, catalog),
    "social": lambda catalog, retrieval: SocialSource(catalog),
    "trending": lambda catalog, retrieval: TrendingSource(catalog),
    "fresh": lambda catalog, retrieval: FreshSource(catalog),
}

__all__ = ["SOURCES", "AnnSource", "CandidateSource", "FreshSource", "SocialSource",
           "SourceFactory", "SourceQuery", "TrendingSource"]
