"""Ranker variants from other bundle versions: each serves its own bundle's calibration, and
a version without one serves uncalibrated probabilities (logged once). No Ray."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from funnel.contracts.bundle import REQUIRED_FILES, write_manifest
from funnel.contracts.model_io import TASKS
from serve.bundles import BundleVersions
from serve.catalog import Catalog
from serve.config import FeedSettings
from serve.pipeline import FeedPipeline, FeedQuery, Models
from serve.retrieval import TwoTowerRetrieval
from serve.rollout.router import Assignment
from serve.rollout.variants import Variants
from serve.sources import SOURCES, CandidateSource
from tests.fakes import FakeRetrieval, FixedLogitsRanker, HashingTextEncoder
from training.calibration import CALIBRATION_FILE, Calibration, Temperature, sigmoid
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate
from training.features import FeatureTransform

SMALL = Profile("unit", n_users=60, n_posts=400, impressions_per_user=15, mean_follows=5)
LOGITS = [1.0, 1.0, -1.0, -2.0, -3.0]


def _temperature(t: float) -> Calibration:
    return Calibration(TASKS, tuple(Temperature(t) for _ in TASKS))


def _bundle(root: Path, version: str, ft: FeatureTransform,
            calibration: Calibration | None) -> None:
    """A bundle whose features and calibration are real; its other files are stubs, which
    a ranker variant does not read (Triton serves the ranker)."""
    d = root / version
    ft.save(d / "features")
    for rel in REQUIRED_FILES:
        if not (d / rel).exists():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(b"stub")
    if calibration is not None:
        calibration.save(d / CALIBRATION_FILE)
    write_manifest(d, {"version": version})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeedPipeline, Variants]:
    ds = generate(SMALL, seed=3)
    d: Path = tmp_path_factory.mktemp("catalog")
    write_catalog(d, ds)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    catalog = Catalog(d)
    r = cast(TwoTowerRetrieval, FakeRetrieval(ft, ds.posts["post_id"].to_numpy()))
    root = tmp_path_factory.mktemp("artifacts")
    _bundle(root, "v2", ft, _temperature(4.0))
    _bundle(root, "v3", ft, None)
    sources = {n: v.model_copy(update={"timeout_ms": 10_000.0})
               for n, v in FeedSettings().sources.items()}
    p = FeedPipeline(catalog=catalog, retrieval=r, ranker=FixedLogitsRanker(LOGITS),
                     sources=cast(dict[str, CandidateSource],
                                  {n: SOURCES[n](catalog, r) for n in sources}),
                     settings=FeedSettings(sources=sources), calibration=_temperature(2.0))
    variants = Variants(p, primary_version="v1", bundles=BundleVersions(root),
                        make_ranker=lambda name, bundle: FixedLogitsRanker(LOGITS),
                        rng=random.Random(1))
    return p, variants


def _assign(version: str, fault: tuple[tuple[str, float], ...] | None = None) -> Assignment:
    return Assignment("ranker", f"var-{version}", version, fault, primary=False, compare=False)


def _like_probs(p: FeedPipeline, models: Models) -> set[float]:
    res = asyncio.run(p.run(FeedQuery(user_id=int(p.catalog.user_ids[0]), limit=10,
                                      request_id="v"), models))
    assert res.degraded == []
    return {cast(dict[str, float], i.explain["probs"])["like"] for i in res.items
            if not i.explain.get("exploration")}


def test_each_ranker_variant_applies_its_own_bundles_calibration(
        setup: tuple[FeedPipeline, Variants], caplog: pytest.LogCaptureFixture) -> None:
    p, variants = setup
    slow = (("delay_ms", 1.0),)
    with caplog.at_level(logging.WARNING, logger="funnel.serve"):
        for version, fault in (("v1", slow), ("v2", None), ("v2", slow), ("v3", None),
                               ("v3", slow)):
            variants.load_ranker(version, fault)
    no_cal = [r for r in caplog.records if CALIBRATION_FILE in r.getMessage()]
    assert len(no_cal) == 1 and "v3" in no_cal[0].getMessage()  # once per version

    def like(t: float) -> float:
        return round(float(sigmoid(np.array(LOGITS[1] / t))), 5)

    for version, want in (("v1", like(2.0)), ("v2", like(4.0)), ("v3", like(1.0))):
        for fault in (None, slow):
            model = variants.ranker(_assign(version, fault))
            assert model.name == f"var-{version}" and model.version == version
            served = _like_probs(p, Models(retrieval=p.retrieval, ranker=model))
            assert len(served) == 1, (version, fault)
            assert served.pop() == pytest.approx(want, abs=1e-5), (version, fault)
