"""A replica's services over real logic and in-process fakes: the real FeedPipeline (fake
retrieval and ranker), the real ModerationService (fake scorer), the in-memory review store.
No Ray, no Triton, no network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve.catalog import Catalog
from serve.config import FeedSettings, parse_app_args
from serve.moderation.policy import parse_policy
from serve.moderation.service import ModerationService
from serve.oip import OipDataPlane
from serve.pipeline import FeedPipeline
from serve.services.admin import AdminAuth
from serve.services.background import BackgroundTasks, Verdicts
from serve.services.events import EventService
from serve.services.feed import FeedService
from serve.services.health import HealthService
from serve.services.moderation import ModerateService
from serve.services.replica import ReplicaServices
from serve.services.review import ReviewService
from serve.sources import SOURCES
from tests.fakes import (
    FakeContentScorer,
    FakeRanker,
    FakeRetrieval,
    HashingTextEncoder,
    MemoryReviewStore,
)
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate
from training.features import FeatureTransform

SMALL = Profile("unit", n_users=60, n_posts=400, impressions_per_user=15, mean_follows=5)
LABELS = ("abuse", "nudity")
POLICY = parse_policy({"version": "t1", "labels": {
    "abuse": {"review_at": 0.5, "block_at": 0.9},
    "nudity": {"review_at": 0.2, "block_at": 0.8}}}, labels=LABELS)
TOKEN = "s3cret-admin-token"


@dataclass
class RecordingLog:
    """An impression-log writer that keeps what it is given."""

    rows: list[tuple[dict[str, Any], int]] = field(default_factory=list)

    def append(self, cols: dict[str, Any], n: int, *, durable: bool = False) -> bool:
        self.rows.append((cols, n))
        return True

    def close(self) -> None:
        return None


@pytest.fixture(scope="package")
def catalog_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, FakeRetrieval]:
    ds = generate(SMALL, seed=5)
    d: Path = tmp_path_factory.mktemp("catalog")
    write_catalog(d, ds)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    return Catalog(d), FakeRetrieval(ft, ds.posts["post_id"].to_numpy())


def feed_pipeline(parts: tuple[Catalog, FakeRetrieval], ranker: Any = None) -> FeedPipeline:
    catalog, retrieval = parts
    r: Any = retrieval
    # generous deadlines: on a busy machine the default 50 ms would time a healthy source out
    settings = FeedSettings(sources={n: s.model_copy(update={"timeout_ms": 5000.0})
                                     for n, s in FeedSettings().sources.items()})
    return FeedPipeline(catalog=catalog, retrieval=r, ranker=ranker or FakeRanker(),
                        sources={n: SOURCES[n](catalog, r) for n in settings.sources},
                        settings=settings)


@pytest.fixture
def services(catalog_parts: tuple[Catalog, FakeRetrieval]) -> ReplicaServices:
    """Every service of one replica, moderation on, no rollout; logs recorded."""
    args = parse_app_args({"bundle": "unused"})
    pipeline = feed_pipeline(catalog_parts)
    versions = {"bundle": "b1", "retrieval": "b1", "ranker": "b1"}
    store = MemoryReviewStore()
    verdicts = Verdicts(store)
    pipeline.live_verdicts = verdicts.live
    background = BackgroundTasks(verdicts=verdicts, poll_s=3600.0)
    logs = {k: RecordingLog() for k in ("feed", "events", "moderation")}
    core = ModerationService(scorer=FakeContentScorer(text={"abuse": 0.1}, image={"nudity": 0.0}),
                             policy=POLICY, store=store,
                             model_versions={"moderation_text": "b1"}, timeout_s=1.0)

    async def score_text(text: str, version: str) -> dict[str, float]:
        return dict.fromkeys(LABELS, 0.0)

    async def refresh() -> None:
        await verdicts.refresh()

    return ReplicaServices(
        args=args, replica="r0", versions=versions, pipeline=pipeline,
        feed=FeedService(pipeline=pipeline, versions=versions, impressions=logs["feed"],
                         replica="r0"),
        events=EventService(impressions=logs["events"], replica="r0"),
        review=ReviewService(store, refresh_verdicts=refresh),
        health=HealthService(pipeline=pipeline, store=store),
        admin=AdminAuth(TOKEN, "FUNNEL_ADMIN_TOKEN"),
        oip=OipDataPlane([], server_version="test"), background=background,
        moderation=ModerateService(core=core, text_labels=LABELS, scorer_for=lambda v: None,
                                   score_text=score_text, refresh_verdicts=refresh,
                                   impressions=logs["moderation"], replica="r0"),
        impressions=dict(logs))
