"""FeedPipeline with a real catalog and feature transform over a small synthetic dataset,
fake retrieval and ranker: how each stage degrades, cold start, blocked items, calibrated
probabilities."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from funnel.contracts.model_io import TASKS
from serve.catalog import Catalog
from serve.config import FeedSettings, SourceSettings
from serve.pipeline import FeedPipeline, FeedQuery
from serve.ranker.client import Ranker
from serve.retrieval import TwoTowerRetrieval
from serve.sources import SOURCES, CandidateSource, SourceQuery
from serve.types import Candidates
from tests.fakes import FakeRanker, FakeRetrieval, FixedLogitsRanker, HashingTextEncoder
from training.calibration import Calibration, Identity, Isotonic, Temperature, sigmoid
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate
from training.features import FeatureTransform

SMALL = Profile("unit", n_users=60, n_posts=400, impressions_per_user=15, mean_follows=5)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Failing:
    name = "social"
    cold_start = False

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        raise RuntimeError("social graph store unreachable")


class Slow:
    name = "fresh"
    cold_start = True

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        time.sleep(0.3)
        return Candidates.empty()


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, FakeRetrieval]:
    ds = generate(SMALL, seed=3)
    # make sure some posts are blocked
    ds.posts.loc[ds.posts.index[:40], "label_spam"] = True
    d: Path = tmp_path_factory.mktemp("catalog")
    write_catalog(d, ds)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    return Catalog(d), FakeRetrieval(ft, ds.posts["post_id"].to_numpy())


def _pipeline(parts: tuple[Catalog, FakeRetrieval], ranker: Ranker,
              impls: dict[str, Any] | None = None, clock: Clock | None = None,
              calibration: Calibration | None = None, **settings: Any) -> FeedPipeline:
    catalog, retrieval = parts
    r = cast(TwoTowerRetrieval, retrieval)
    srcs = impls or {n: SOURCES[n](catalog, r) for n in ("ann", "social", "trending",
                                                            "fresh")}
    # Real sources get a generous deadline unless a test sets one: on a busy machine the
    # default 50 ms would time a healthy source out and mark the feed degraded.
    settings.setdefault("sources", {n: s.model_copy(update={"timeout_ms": 5000.0})
                                    for n, s in FeedSettings().sources.items()})
    return FeedPipeline(catalog=catalog, retrieval=r, ranker=ranker,
                        sources=cast(dict[str, CandidateSource], srcs),
                        settings=FeedSettings(**settings),
                        monotonic=clock or Clock(), calibration=calibration)


def _run(p: FeedPipeline, user_id: int, **kw: Any) -> Any:
    return asyncio.run(p.run(FeedQuery(user_id=user_id, limit=kw.pop("limit", 20),
                                       request_id=kw.pop("rid", "r1"), **kw)))


def test_a_known_user_is_ranked_by_the_ranker(parts: tuple[Catalog, FakeRetrieval]) -> None:
    ranker = FakeRanker()
    uid = int(parts[0].user_ids[0])
    res = _run(_pipeline(parts, ranker), uid)
    assert res.degraded == [] and not res.cold_start
    assert ranker.calls == 1
    assert 0 < len(res.items) <= 20
    assert [i.rank for i in res.items] == list(range(1, len(res.items) + 1))
    assert all("probs" in i.explain for i in res.items if not i.explain.get("exploration"))


def test_ranker_down_degrades_to_retrieval_order_then_recovers(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    ranker, clock = FakeRanker(), Clock()
    p = _pipeline(parts, ranker, clock=clock)
    uid = int(parts[0].user_ids[1])
    ranker.fail = True
    res = _run(p, uid)
    assert res.degraded == ["ranker"]
    assert res.items, "a degraded feed still has items"
    ranked = [i for i in res.items if not i.explain.get("exploration")]
    assert all("probs" not in i.explain for i in ranked)
    # within retry_after_s the ranker is not even tried: the outage costs one timeout
    _run(p, uid)
    assert ranker.calls == 1
    ranker.fail = False
    clock.t += 1.5
    res = _run(p, uid)
    assert res.degraded == [] and ranker.calls == 2


def test_a_failing_and_a_slow_source_degrade_only_themselves(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    catalog, retrieval = parts
    r = cast(TwoTowerRetrieval, retrieval)
    sources = {"ann": SOURCES["ann"](catalog, r), "social": Failing(),
               "trending": SOURCES["trending"](catalog, r), "fresh": Slow()}
    p = _pipeline(parts, FakeRanker(), impls=sources,
                  sources={"ann": SourceSettings(quota=50, timeout_ms=5000),
                           "social": SourceSettings(),
                           "trending": SourceSettings(timeout_ms=5000),
                           "fresh": SourceSettings(timeout_ms=50)})
    res = _run(p, int(catalog.user_ids[2]))
    assert sorted(res.degraded) == ["source:fresh", "source:social"]
    assert res.items
    assert {s for i in res.items for s in i.sources} <= {"ann", "trending"}


def test_an_unknown_user_gets_cold_start_sources_only(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    res = _run(_pipeline(parts, FakeRanker()), 10**12)
    assert res.cold_start
    assert res.items
    assert {s for i in res.items for s in i.sources} <= {"trending", "fresh"}


def test_blocked_and_excluded_items_are_never_served(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    catalog, _ = parts
    every = catalog.items(catalog.post_ids)
    blocked = set(every.ids[every.names("verdict") == "block"].tolist())
    assert len(blocked) >= 40
    p = _pipeline(parts, FakeRanker())
    served: set[int] = set()
    for uid in catalog.user_ids[:20]:
        served |= {i.item_id for i in _run(p, int(uid), limit=200).items}
    assert served and not served & blocked
    uid = int(catalog.user_ids[3])
    first = [i.item_id for i in _run(p, uid).items[:5]]
    again = {i.item_id for i in _run(p, uid, exclude_ids=frozenset(first)).items}
    assert again and not again & set(first)


def test_exploration_is_replayable_from_the_request_id(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    p = _pipeline(parts, FakeRanker())  # generous source timeouts (see _pipeline)
    uid = int(parts[0].user_ids[4])
    ra, rb = _run(p, uid, rid="same"), _run(p, uid, rid="same")
    assert ra.degraded == rb.degraded == []
    a = [i.item_id for i in ra.items]
    b = [i.item_id for i in rb.items]
    assert a == b


LOGITS = [0.0, 1.0, -1.0, -2.0, -3.0]  # click, like, comment, share, hide


def _ranked_probs(p: FeedPipeline, uid: int) -> list[tuple[dict[str, float], float]]:
    res = _run(p, uid)
    assert res.degraded == []
    ranked = [i for i in res.items if not i.explain.get("exploration")]
    assert ranked
    return [(cast(dict[str, float], i.explain["probs"]), cast(float, i.explain["ranker_score"]))
            for i in ranked]


def test_the_bundles_calibration_feeds_the_score_and_explain(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    # click: knots (0, 0.2) - (1, 0.6) map sigmoid(0) = 0.5 to 0.4; like: sigmoid(1 / 2)
    cal = Calibration(TASKS, (Isotonic(np.array([0.0, 1.0]), np.array([0.2, 0.6])),
                              Temperature(2.0), Identity(), Identity(), Identity()))
    want = {"click": 0.4, "like": float(sigmoid(np.array(0.5))),
            **{t: float(sigmoid(np.array(z))) for t, z in zip(TASKS[2:], LOGITS[2:],
                                                               strict=True)}}
    weights = FeedSettings().ranker.weights
    uid = int(parts[0].user_ids[5])
    for probs, score in _ranked_probs(
            _pipeline(parts, FixedLogitsRanker(LOGITS), calibration=cal), uid):
        assert probs == pytest.approx(want, abs=1e-5)
        assert score == pytest.approx(sum(weights.get(t, 0.0) * want[t] for t in TASKS),
                                      abs=1e-5)


def test_a_bundle_without_calibration_serves_the_sigmoid_of_the_logits(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    want = {t: float(sigmoid(np.array(z))) for t, z in zip(TASKS, LOGITS, strict=True)}
    uid = int(parts[0].user_ids[5])
    for probs, _ in _ranked_probs(_pipeline(parts, FixedLogitsRanker(LOGITS)), uid):
        assert probs == pytest.approx(want, abs=1e-5)


class Stepped:
    """A source that is not inline (it runs on the thread pool) and whose work takes
    `run_s` on the test's clock: it moves the clock instead of sleeping."""

    name = "stepped"
    cold_start = True
    inline = False

    def __init__(self, clock: list[float], run_s: float) -> None:
        self.clock, self.run_s = clock, run_s

    def generate(self, query: SourceQuery, k: int) -> Candidates:
        self.clock[0] += self.run_s
        return Candidates(np.asarray([1, 2]), np.asarray([0.5, 0.4]))


@pytest.mark.parametrize(("queue_s", "run_s", "budget_s", "outcome"), [
    # 1.4 s of wall clock against a 1 s budget, but only 0.6 s of its own: served
    (0.8, 0.6, 1.0, "served"),
    (0.0, 1.5, 1.0, "ran past"),  # its own time is over budget, even if it did answer
    (1.2, 0.1, 1.0, "waited"),  # no thread for longer than the budget
])
def test_a_source_budget_counts_its_running_time_not_the_wait_for_a_thread(
        queue_s: float, run_s: float, budget_s: float, outcome: str) -> None:
    import concurrent.futures
    import threading

    from serve.pipeline import run_source

    q = SourceQuery(user_id=1, known_user=True, user_vec=None, now_s=0.0)
    clock = [0.0]
    release = threading.Event()

    def busy() -> None:  # the only thread is taken until the test releases it
        release.wait(10)
        clock[0] += queue_s

    async def go() -> str:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        held = loop.run_in_executor(None, busy)
        call = asyncio.create_task(run_source(Stepped(clock, run_s), q, 10, budget_s,
                                              clock=lambda: clock[0]))
        await asyncio.sleep(0)
        release.set()
        await held
        try:
            got = await call
        except TimeoutError as e:
            return "ran past" if "ran past" in str(e) else "waited"
        assert got.ids.tolist() == [1, 2]
        return "served"

    assert asyncio.run(go()) == outcome
