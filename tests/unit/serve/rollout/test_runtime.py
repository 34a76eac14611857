"""The replica side of the rollout with the controller's pure state behind a fake handle:
variants serve their users, shadows and canary comparisons run off the critical path and
are counted, and the canary's error budget holds. No Ray."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from serve.catalog import Catalog
from serve.config import FeedSettings, RolloutSettings
from serve.pipeline import FeedPipeline, FeedQuery
from serve.retrieval import TwoTowerRetrieval
from serve.rollout.config import parse_rollout
from serve.rollout.controller import RolloutState
from serve.rollout.runtime import RolloutRuntime
from serve.rollout.variants import Variants
from serve.sources import SOURCES, CandidateSource
from tests.fakes import FakeHandle, FakeRanker, FakeRetrieval, HashingTextEncoder
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate
from training.features import FeatureTransform

SMALL = Profile("unit", n_users=60, n_posts=400, impressions_per_user=15, mean_follows=5)
V = "v1"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, FakeRetrieval]:
    ds = generate(SMALL, seed=3)
    d: Path = tmp_path_factory.mktemp("catalog")
    write_catalog(d, ds)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    return Catalog(d), FakeRetrieval(ft, ds.posts["post_id"].to_numpy())


class Controller:
    """What serve.rollout.deployment.RolloutController does with a report, minus Ray and
    Triton."""

    def __init__(self, state: RolloutState) -> None:
        self.state = state

    def report(self, replica: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        self.state.report(replica, rows)
        self.state.evaluate()
        return self.state.routing()


def runtime(parts: tuple[Catalog, FakeRetrieval], config: dict[str, Any]
            ) -> tuple[RolloutRuntime, RolloutState, FakeRanker]:
    catalog, retrieval = parts
    r = cast(TwoTowerRetrieval, retrieval)
    ranker = FakeRanker()
    sources = {n: v.model_copy(update={"timeout_ms": 10_000.0})
               for n, v in FeedSettings().sources.items()}
    p = FeedPipeline(catalog=catalog, retrieval=r, ranker=ranker,
                     sources=cast(dict[str, CandidateSource],
                                  {n: SOURCES[n](catalog, r) for n in sources}),
                     settings=FeedSettings(sources=sources))
    state = RolloutState()
    state.apply(parse_rollout(config))
    variants = Variants(p, primary_version=V, root=Path("/nonexistent"),
                        make_ranker=lambda name: ranker, rng=random.Random(1))
    rt = RolloutRuntime(pipeline=p, variants=variants, controller=FakeHandle(Controller(state)),
                        replica_id="r1", settings=RolloutSettings(shadow_queue_size=4),
                        rng=random.Random(2))
    return rt, state, ranker


async def serve(rt: RolloutRuntime, users: list[int]) -> list[tuple[dict[str, str], Any]]:
    await rt.report_once()
    out = []
    for u in users:
        models, assigned = rt.models_for(u)
        res = await rt.pipeline.run(FeedQuery(user_id=u, limit=10, request_id=f"q{u}"),
                                    models)
        rt.after_feed(assigned, res)
        out.append(({s: a.variant for s, a in assigned.items() if a}, res))
    await rt.drain()
    await rt.report_once()
    return out


def test_shadows_are_compared_and_never_change_the_page(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    rt, state, _ = runtime(parts, {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 100}],
        "shadows": [{"name": "same", "bundle_version": V, "sample_rate": 1},
                    {"name": "broken", "bundle_version": V, "sample_rate": 1,
                     "fault": {"error_rate": 1.0}}]}}})
    users = [int(u) for u in parts[0].user_ids[:8]]
    served = asyncio.run(serve(rt, users))
    assert all(v == {"ranker": "control"} and not r.degraded for v, r in served)
    st = state.status()["stages"]["ranker"]["variants"]
    assert st["same"]["window"]["comparisons"] == len(users)
    assert st["same"]["window"]["overlap_at_k"][10] == pytest.approx(1.0)
    assert st["same"]["window"]["rank_correlation"] == pytest.approx(1.0)
    assert st["broken"]["totals"]["errors"] == st["broken"]["totals"]["requests"] == 8
    assert st["control"]["window"]["requests"] == len(users)


def test_a_full_shadow_queue_drops_and_counts(parts: tuple[Catalog, FakeRetrieval]) -> None:
    rt, state, _ = runtime(parts, {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 100}],
        "shadows": [{"name": "same", "bundle_version": V, "sample_rate": 1,
                     "fault": {"delay_ms": 1500}}]}}})

    async def burst() -> None:
        await rt.report_once()
        for u in parts[0].user_ids[:10]:  # 2 slow workers + a queue of 4: the rest drop
            models, assigned = rt.models_for(int(u))
            res = await rt.pipeline.run(FeedQuery(user_id=int(u), limit=5,
                                                  request_id=f"b{u}"), models)
            rt.after_feed(assigned, res)
        await rt.drain()
        await rt.report_once()

    asyncio.run(burst())
    w = state.status()["stages"]["ranker"]["variants"]["same"]["totals"]
    assert w["dropped"] >= 4 and w["comparisons"] + w["dropped"] == 10


def test_a_failing_canary_stays_within_its_budget_and_is_rolled_back(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    rt, state, ranker = runtime(parts, {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 50},
                     {"name": "canary", "bundle_version": V, "weight": 50,
                      "fault": {"error_rate": 1.0}}],
        "promotion": {"steps": [{"weight": 50, "min_requests": 1000}, {"weight": 100}],
                      "error_budget": 3}}}})
    users = list(range(10**9, 10**9 + 60))  # cold-start users: cheap, still ranked
    served = asyncio.run(serve(rt, users))
    failed = [v for v, r in served if v["ranker"] == "canary" and "ranker" in r.degraded]
    assert len(failed) == 3  # the budget, not one more, even before any report
    assert all(not r.degraded for v, r in served if v["ranker"] == "control")
    assert state.stages["ranker"].status == "rolled_back"
    assert ranker.calls > 0  # the primary kept ranking with the same Triton client


def test_shadow_jobs_wait_for_the_replica_to_be_idle() -> None:
    from serve.rollout.runtime import IdleGate, ShadowRunner

    async def scenario() -> tuple[list[str], float]:
        gate = IdleGate(max_wait_s=5.0)
        runner = ShadowRunner(size=4, concurrency=1, gate=gate)
        events: list[str] = []

        async def job() -> None:
            events.append("shadow")

        gate.started()  # a client request in flight
        assert runner.submit(job, lambda: None)
        await asyncio.sleep(0.05)
        events.append("request done")
        gate.finished()
        await runner.drain()
        # saturation: never idle, yet a job still runs after max_wait_s
        gate2 = IdleGate(max_wait_s=0.1)
        gate2.started()
        t0 = asyncio.get_running_loop().time()
        await gate2.wait()
        return events, asyncio.get_running_loop().time() - t0

    events, waited = asyncio.run(scenario())
    assert events == ["request done", "shadow"]
    assert 0.09 <= waited < 1.0


def test_a_shadow_model_call_waits_again_after_its_job_started() -> None:
    """A job started in an idle moment; a request arrives while the job waits on something
    slow (a fault's delay): its model call waits for the request, not only the job's
    start. Outside a shadow job nothing waits."""
    from serve.offpath import yield_to_requests
    from serve.rollout.runtime import IdleGate, ShadowRunner

    async def scenario() -> list[str]:
        gate = IdleGate(max_wait_s=5.0)
        runner = ShadowRunner(size=4, concurrency=1, gate=gate)
        events: list[str] = []
        slow = asyncio.Event()

        async def job() -> None:
            events.append("job started")
            await slow.wait()  # e.g. a slow variant's delay
            await yield_to_requests()
            events.append("model call")

        assert runner.submit(job, lambda: None)
        await asyncio.sleep(0.01)
        gate.started()  # a client request arrives meanwhile
        slow.set()
        await yield_to_requests()  # the request's own calls do not wait
        await asyncio.sleep(0.05)
        events.append("request done")
        gate.finished()
        await runner.drain()
        return events

    assert asyncio.run(scenario()) == ["job started", "request done", "model call"]
