"""The page must not change when the hot path is rewritten for speed.

A fixed set of feed requests against a fixed catalog, feature transform, retrieval and ranker
gives the pages recorded in `golden/feed_pages.json`: the ranked item ids (exploration slots
included), each item's sources, and a digest of the exact ranker inputs (so a rewrite of the
input assembly that changes a single bit of one feature fails here, even when the page happens
not to move). The golden file was recorded with the pandas-based pipeline, before the hot path
was vectorised; it is rewritten only on purpose, with a reason in the commit:

    FUNNEL_WRITE_GOLDEN=1 pytest tests/unit/serve/test_page_equality.py

Everything here is deterministic and framework-free: a seeded synthetic data set, a hashing
text encoder, seeded item and user vectors, and a ranker that is a fixed linear function of
every input (so any input change reaches the score).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from funnel.contracts.model_io import TASKS
from serve.catalog import Catalog
from serve.config import FeedSettings
from serve.moderation.verdicts import LiveVerdicts, VerdictEvent
from serve.pipeline import FeedPipeline, FeedQuery, RankerModel
from serve.ranker.client import Ranker
from serve.retrieval import TwoTowerRetrieval
from serve.sources import SOURCES, CandidateSource
from tests.fakes import FakeRetrieval, HashingTextEncoder
from training.calibration import Calibration, Identity, Isotonic, Temperature
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate
from training.features import FeatureTransform

GOLDEN = Path(__file__).parent / "golden" / "feed_pages.json"
PROFILE = Profile("page-equality", n_users=150, n_posts=4000, impressions_per_user=30,
                  mean_follows=12)


class LinearRanker:
    """logits = dense @ W + per-hash weights: a fixed function of every input, in float64
    (no BLAS-order dependence across machines), rounded to float32 as Triton returns it."""

    def __init__(self, seed: int, fail: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self._w: np.ndarray | None = None
        self.fail = fail
        self.inputs: list[dict[str, np.ndarray]] = []

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from serve.errors import RankerUnavailable

        if self.fail:
            raise RankerUnavailable("down on purpose")
        self.inputs.append(inputs)
        dense = inputs["dense"].astype(np.float64)
        if self._w is None:
            self._w = self.rng.normal(size=(dense.shape[1], len(TASKS)))
        z = dense @ self._w
        for j, key in enumerate(("user_hash", "item_hash", "topic", "modality", "age_band")):
            z += ((inputs[key].astype(np.int64) * (2 * j + 3)) % 101)[:, None] / 50.0 - 1.0
        return z.astype(np.float32)


def digest(inputs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(inputs):
        a = np.ascontiguousarray(inputs[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, FakeRetrieval]:
    ds = generate(PROFILE, seed=11)
    ds.posts.loc[ds.posts.index[:120], "label_spam"] = True  # some blocked
    ds.posts.loc[ds.posts.index[120:160], "label_hate"] = True  # some held for review
    d: Path = tmp_path_factory.mktemp("catalog")
    write_catalog(d, ds)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder(dim=384))
    # MiniLM's and the towers' widths, so numpy takes the kernels it takes when serving
    return Catalog(d), FakeRetrieval(ft, ds.posts["post_id"].to_numpy(), dim=64, seed=5)


def pipeline(world: tuple[Catalog, FakeRetrieval], ranker: LinearRanker,
             calibration: Calibration | None = None, live: LiveVerdicts | None = None,
             **settings: Any) -> FeedPipeline:
    catalog, retrieval = world
    r = cast(TwoTowerRetrieval, retrieval)
    srcs = {n: SOURCES[n](catalog, r) for n in ("ann", "social", "trending", "fresh")}
    # a deadline no machine misses: this test is about the page, not the clock
    settings.setdefault("sources", {n: s.model_copy(update={"timeout_ms": 10_000.0})
                                    for n, s in FeedSettings().sources.items()})
    return FeedPipeline(catalog=catalog, retrieval=r, ranker=cast(Ranker, ranker),
                        sources=cast(dict[str, CandidateSource], srcs),
                        settings=FeedSettings(**settings), calibration=calibration,
                        live_verdicts=live)


CAL = Calibration(TASKS, (Temperature(1.7), Isotonic(np.array([0.0, 0.3, 0.9, 1.0]),
                                                     np.array([0.05, 0.2, 0.7, 0.8])),
                          Identity(), Temperature(0.6), Identity()))


async def pages(world: tuple[Catalog, FakeRetrieval]) -> dict[str, Any]:
    catalog, _ = world
    users = [int(u) for u in catalog.user_ids[::5]]  # 30 known users
    unknown = [10**12 + k for k in range(4)]
    out: dict[str, Any] = {}

    def page(res: Any) -> dict[str, Any]:
        return {"items": [i.item_id for i in res.items],
                "sources": ["+".join(i.sources) for i in res.items],
                "explore": [k for k, i in enumerate(res.items) if i.explain.get("exploration")],
                "degraded": res.degraded, "filtered": res.filtered,
                "candidates": res.candidates}

    # 1. the default settings, calibrated ranker; limits 10, 20, 50
    ranker = LinearRanker(1)
    p = pipeline(world, ranker, CAL)
    for k, uid in enumerate(users + unknown):
        limit = (10, 20, 50)[k % 3]
        res = await p.run(FeedQuery(user_id=uid, limit=limit, request_id=f"golden-{k}"))
        out[f"default/{uid}/{limit}"] = {**page(res), "inputs": digest(ranker.inputs[-1])}
        # 2. the same candidates under a second ranker version (the canary's page)
        other = RankerModel("canary", "v2", cast(Ranker, LinearRanker(2)), p.features, None)
        assert res.trace is not None
        items, degraded, _ = await p.rerank_with(res.trace, other)
        out[f"canary/{uid}/{limit}"] = {"items": [i.item_id for i in items],
                                        "degraded": degraded}

    # 3. excluded ids, a fixed timestamp, locale by user language, review items allowed,
    #    live verdicts blocking some items, tighter caps and more exploration
    live = LiveVerdicts()
    blocked = [int(x) for x in catalog.post_ids[200:4000:37]]
    live.apply(VerdictEvent(id=k + 1, content_id=str(pid), source="model", decision="block")
               for k, pid in enumerate(blocked))
    ranker = LinearRanker(3)
    p = pipeline(world, ranker, None, live,
                 filters={"review_policy": "allow", "locale": "user_language"},
                 rerank={"author_cap": 1, "topic_cap": 3, "mmr_lambda": 0.6,
                         "explore_slots": 3, "explore_min_rank": 3})
    for k, uid in enumerate(users[:12] + unknown[:2]):
        first = out[f"default/{uid}/{(10, 20, 50)[k % 3]}"]["items"][:5]
        res = await p.run(FeedQuery(user_id=uid, limit=30, request_id=f"golden-x{k}",
                                    exclude_ids=frozenset(first),
                                    locale=("en-GB" if k % 4 == 0 else None),
                                    timestamp_s=catalog.as_of_s - 3600.0 * k))
        out[f"tuned/{uid}"] = {**page(res), "inputs": (digest(ranker.inputs[-1])
                                                       if res.items else None)}

    # 4. the ranker down: retrieval order (known users), merge order (cold start)
    p = pipeline(world, LinearRanker(4, fail=True))
    for k, uid in enumerate(users[:4] + unknown[:2]):
        res = await p.run(FeedQuery(user_id=uid, limit=20, request_id=f"golden-d{k}"))
        out[f"ranker_down/{uid}"] = page(res)
    return out


def test_pages_equal_the_recorded_ones(world: tuple[Catalog, FakeRetrieval]) -> None:
    got = asyncio.run(pages(world))
    if os.environ.get("FUNNEL_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} of {len(want)} pages changed, e.g. {differ[0]}: " \
                       f"got {got[differ[0]]}, recorded {want[differ[0]]}"
    # the set is not vacuous: real pages, every kind of request
    assert sum(len(v["items"]) for v in want.values()) > 1500
    assert any(v.get("explore") for v in want.values())
    assert any(v.get("degraded") == ["ranker"] for v in want.values())
    assert any(v.get("filtered", {}).get("moderation") for v in want.values())
