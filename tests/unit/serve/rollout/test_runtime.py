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

from funnel.contracts.rollout import parse_rollout
from serve.bundles import BundleVersions
from serve.catalog import Catalog
from serve.config import FeedSettings, RolloutSettings
from serve.pipeline import FeedPipeline, FeedQuery
from serve.retrieval import TwoTowerRetrieval
from serve.rollout.runtime import RolloutRuntime
from serve.rollout.state import RolloutState
from serve.rollout.variants import Variants
from serve.sources import SOURCES, CandidateSource
from tests.fakes import (
    FakeHandle,
    FakeRanker,
    FakeRetrieval,
    HashingTextEncoder,
    on_virtual_time,
)
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
    """What serve.rollout.controller.RolloutController does with a report, minus Ray and
    Triton."""

    def __init__(self, state: RolloutState) -> None:
        self.state = state

    def report(self, replica: str, rows: list[dict[str, Any]], serving: bool = True
               ) -> dict[str, Any]:
        self.state.report(replica, rows, serving)
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
    variants = Variants(p, primary_version=V, bundles=BundleVersions(Path("/nonexistent")),
                        make_ranker=lambda name, bundle: ranker, rng=random.Random(1))
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
        # a server's loop turns between requests (the pipeline itself need not yield: its
        # sources are inline), and queued comparisons run there
        for _ in range(20):
            await asyncio.sleep(0)
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
    from serve.rollout.scheduling import IdleGate, ShadowRunner

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

    events, waited = on_virtual_time(scenario())
    assert events == ["request done", "shadow"]
    assert waited == pytest.approx(0.1, abs=1e-3)


def test_a_shadow_model_call_waits_again_after_its_job_started() -> None:
    """A job started in an idle moment; a request arrives while the job waits on something
    slow (a fault's delay): its model call waits for the request, not only the job's
    start. Outside a shadow job nothing waits."""
    from serve.offpath import yield_to_requests
    from serve.rollout.scheduling import IdleGate, ShadowRunner

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


class ReversedRanker:
    """The fake ranker's logits negated: the opposite order, so two lists differ."""

    def __init__(self, base: FakeRanker) -> None:
        self.base = base

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return -(await self.base.logits(inputs))


def interleaving_config(rate: float, fault: dict[str, float] | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"name": "cand", "bundle_version": V, "weight": 0,
                            "fault": fault or {"delay_ms": 0}}
    return {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 100}, cand],
        "interleaving": {"variant": "cand", "sample_rate": rate}}}}


async def serve_interleaved(rt: RolloutRuntime, users: list[int], prefix: str = "i"
                            ) -> list[tuple[Any, Any]]:
    """(the primary's result, the page served) per user."""
    await rt.report_once()
    out = []
    for u in users:
        models, assigned = rt.models_for(u)
        res = await rt.pipeline.run(FeedQuery(user_id=u, limit=10, request_id=f"{prefix}{u}"),
                                    models)
        rt.after_feed(assigned, res)
        out.append((res, await rt.interleave(assigned["ranker"], res)))
    return out


def test_interleaved_pages_take_one_item_of_each_team_per_round(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    rt, _, _ = runtime(parts, interleaving_config(1.0))
    variants = rt.variants
    primary_ranker = variants.ranker(None)
    plain = variants.ranker

    def reversed_candidate(a: Any) -> Any:
        m = plain(a)
        if a is None or a.variant != "cand":
            return m
        from dataclasses import replace
        return replace(m, ranker=ReversedRanker(primary_ranker.ranker))

    variants.ranker = reversed_candidate  # type: ignore[method-assign]
    users = [int(u) for u in parts[0].user_ids[:6]]
    served = asyncio.run(serve_interleaved(rt, users))
    for res, page in served:
        teams = [i.explain["interleaving"]["team"] for i in page.items]
        assert len(page.items) == len(res.items) == 10
        assert [i.rank for i in page.items] == list(range(1, 11))
        assert len({i.item_id for i in page.items}) == 10
        for k in range(0, 10, 2):  # every round of two: one pick per team
            assert sorted(teams[k:k + 2]) == ["candidate", "control"]
        assert {i.explain["interleaving"]["control"] for i in page.items} == {"control"}
        assert {i.explain["interleaving"]["candidate"] for i in page.items} == {"cand"}
        control_ids = [i.item_id for i in res.items]
        # the control team's items come from the control's list, in its order
        mine = [i.item_id for i in page.items if i.explain["interleaving"]["team"] ==
                "control"]
        assert mine == [x for x in control_ids if x in set(mine)]
        assert "interleaving" in page.timings_ms and not page.degraded
    assert any(set(i.item_id for i in p.items) != set(i.item_id for i in r.items)
               for r, p in served)  # the candidate's items reached pages
    again = asyncio.run(serve_interleaved(rt, users))  # same request ids, same pages
    assert [[(i.item_id, i.explain["interleaving"]["team"]) for i in p.items]
            for _, p in again] == [[(i.item_id, i.explain["interleaving"]["team"])
                                     for i in p.items] for _, p in served]


def test_interleaving_samples_requests_and_a_failing_candidate_serves_the_primary(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    from monitoring import metrics

    users = [int(u) for u in parts[0].user_ids[:40]]
    rt, _, _ = runtime(parts, interleaving_config(0.5))
    served = asyncio.run(serve_interleaved(rt, users))
    mixed = [p for _, p in served if any("interleaving" in i.explain for i in p.items)]
    assert 8 <= len(mixed) <= 32
    assert all(p is r for r, p in served if p not in mixed)  # the rest: untouched

    failed = metrics.INTERLEAVED.labels("cand", "candidate_failed")
    before = failed._value.get()
    rt, _, _ = runtime(parts, interleaving_config(1.0, {"error_rate": 1.0}))
    served = asyncio.run(serve_interleaved(rt, users[:5], prefix="f"))
    for res, page in served:
        assert [i.item_id for i in page.items] == [i.item_id for i in res.items]
        assert not any("interleaving" in i.explain for i in page.items)
        assert page.degraded == ["interleaving"]
    assert failed._value.get() - before == 5


def test_a_shadow_that_ranks_differently_is_measured_as_different(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    """The comparison ranks the same candidates by each model's final scores: a shadow whose
    scores reverse the primary's order agrees little with it (an identical one agrees fully,
    in the test above)."""
    rt, state, _ = runtime(parts, {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 100}],
        "shadows": [{"name": "rev", "bundle_version": V, "sample_rate": 1,
                     "fault": {"delay_ms": 0}}]}}})
    plain = rt.variants.ranker
    primary = plain(None)

    def reversed_shadow(a: Any) -> Any:
        from dataclasses import replace
        m = plain(a)
        return m if a is None or a.variant != "rev" else replace(
            m, ranker=ReversedRanker(primary.ranker))

    rt.variants.ranker = reversed_shadow  # type: ignore[method-assign]
    users = [int(u) for u in parts[0].user_ids[:8]]
    served = asyncio.run(serve(rt, users))
    assert all(not r.degraded for _, r in served)
    w = state.status()["stages"]["ranker"]["variants"]["rev"]["window"]
    assert w["comparisons"] == len(users)
    assert w["overlap_at_k"][10] < 0.5 and w["rank_correlation"] < 0.5


class PickledHandle(FakeHandle):
    """A ShadowScorer handle: what crosses it is pickled and unpickled on the way, as Ray's
    process boundary does; `calls` counts the hand-offs."""

    def __init__(self, obj: object, *, fail: bool = False) -> None:
        super().__init__(obj)
        self.calls = 0
        self.items = 0
        self.fail = fail

    def __getattr__(self, name: str) -> object:
        import pickle

        inner = super().__getattr__(name)
        handle = self

        class _Method:
            @staticmethod
            async def remote(*args: object) -> object:
                handle.calls += 1
                handle.items += len(args[0])  # type: ignore[arg-type]
                if handle.fail:
                    raise ConnectionError("scorer replica gone")
                return await inner.remote(*pickle.loads(pickle.dumps(args)))  # type: ignore[attr-defined]

        return _Method()


def scorer_pair(parts: tuple[Catalog, FakeRetrieval], config: dict[str, Any], *,
                fail: bool = False, handoff_limit: int = 64, batch_size: int = 32,
                batch_interval_s: float = 0.01
                ) -> tuple[RolloutRuntime, RolloutRuntime, RolloutState, PickledHandle]:
    """An ingress runtime that hands its comparisons to a ShadowScorer runtime (its own
    pipeline and variants, reporting to the same controller as a non-serving replica)."""
    ingress, state, _ = runtime(parts, config)
    scorer, _, _ = runtime(parts, config)
    scorer.serving_replica = False
    scorer._controller = ingress._controller
    scorer.replica_id = "scorer"
    def compare_many(cs: list[Any]) -> int:
        return sum(scorer.accept(c) for c in cs)

    handle = PickledHandle(type("ShadowScorer", (), {"compare_many": staticmethod(compare_many)})(),
                           fail=fail)
    from serve.rollout.comparisons import RemoteComparisons

    ingress.remote = RemoteComparisons(handle, max_pending=handoff_limit,
                                       on_drop=ingress.tally.dropped, batch_size=batch_size,
                                       batch_interval_s=batch_interval_s,
                                       gate=ingress.gate)
    return ingress, scorer, state, handle


SHADOWED = {"stages": {"ranker": {
    "variants": [{"name": "control", "bundle_version": V, "weight": 100}],
    "shadows": [{"name": "same", "bundle_version": V, "sample_rate": 1}]},
    "retrieval": {"variants": [{"name": "control", "bundle_version": V, "weight": 100}],
                  "shadows": [{"name": "idx", "bundle_version": V, "sample_rate": 1}]}}}


def test_with_a_shadow_scorer_the_comparisons_run_there_not_in_the_ingress(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    # batches of 4, and no timer flush within the test: the calls are exactly predictable
    ingress, scorer, state, handle = scorer_pair(parts, SHADOWED, batch_size=4,
                                                 batch_interval_s=60)
    users = [int(u) for u in parts[0].user_ids[:8]]

    async def go() -> list[tuple[dict[str, str], Any]]:
        await scorer.report_once()
        served = await serve(ingress, users)
        await scorer.drain()
        await scorer.report_once()
        return served

    served = asyncio.run(go())
    assert all(not r.degraded for _, r in served)
    known = sum(1 for _, r in served if r.trace is not None and r.trace.known)
    assert handle.items == len(users) + known  # one ranker + one retrieval comparison each
    assert handle.calls == -(-handle.items // 4)  # in batches of 4; drain sent the rest
    assert not ingress.runners  # nothing ran in the ingress
    assert {k: r.done for k, r in scorer.runners.items()} == {
        ("ranker", "same"): len(users), ("retrieval", "idx"): known}
    # a batch arrives at once: the scorer's queues hold one (the ingress's hold 4)
    assert all(r._size == 32 for r in scorer.runners.values())
    st = state.status()["stages"]
    assert st["ranker"]["variants"]["same"]["window"]["comparisons"] == len(users)
    assert st["ranker"]["variants"]["same"]["window"]["overlap_at_k"][10] == pytest.approx(1.0)
    assert st["retrieval"]["variants"]["idx"]["window"]["comparisons"] == known
    assert st["ranker"]["variants"]["control"]["window"]["requests"] == len(users)
    assert state.active_replicas() == 1  # the scorer takes no share of a canary's budget


def test_an_unreachable_scorer_or_a_full_hand_off_drops_and_counts(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    users = [int(u) for u in parts[0].user_ids[:6]]
    ranker_only = {"stages": {"ranker": SHADOWED["stages"]["ranker"]}}
    ingress, _, state, handle = scorer_pair(parts, ranker_only, fail=True)
    served = asyncio.run(serve(ingress, users))
    assert all(not r.degraded for _, r in served)  # the client never sees it
    assert handle.items == len(users)
    totals = state.status()["stages"]["ranker"]["variants"]["same"]["totals"]
    assert totals["dropped"] == len(users) and totals["comparisons"] == 0

    ingress, _, state, handle = scorer_pair(parts, ranker_only, handoff_limit=1)

    async def burst() -> None:  # hand-offs of one event-loop turn: all but the first drop
        await ingress.report_once()
        done = []
        for u in users:
            models, assigned = ingress.models_for(u)
            done.append((assigned, await ingress.pipeline.run(
                FeedQuery(user_id=u, limit=5, request_id=f"h{u}"), models)))
        for assigned, res in done:
            ingress.after_feed(assigned, res)
        await ingress.drain()
        await ingress.report_once()

    asyncio.run(burst())
    totals = state.status()["stages"]["ranker"]["variants"]["same"]["totals"]
    assert handle.calls == 1 and totals["dropped"] == len(users) - 1


def test_a_canary_retired_while_its_request_ran_costs_the_client_nothing(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    """A new table retires the canary's version while one of its requests is in flight: the
    request's comparison is dropped and counted (it was a 500 once), nothing is reloaded."""
    rt, state, _ = runtime(parts, {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": V, "weight": 50},
        {"name": "candidate", "bundle_version": V, "weight": 50,
         "fault": {"delay_ms": 0}}]}}})

    async def go() -> None:
        await rt.report_once()
        for u in parts[0].user_ids:
            models, assigned = rt.models_for(int(u))
            a = assigned["ranker"]
            assert a is not None
            if a.primary:
                rt.abandon(assigned)
                continue
            res = await rt.pipeline.run(FeedQuery(user_id=int(u), limit=5,
                                                  request_id=f"r{u}"), models)
            rt.variants.retain({})  # the table moved on while the request ran
            rt.after_feed(assigned, res)  # must not raise
            assert not rt.variants.has("ranker", a.key)
            break
        await rt.drain()
        await rt.report_once()

    asyncio.run(go())
    totals = state.status()["stages"]["ranker"]["variants"]["candidate"]["totals"]
    assert totals["requests"] == 1 and totals["dropped"] == 1
    assert totals.get("comparisons", 0) == 0


def test_a_scorer_behind_the_ingress_fetches_the_newer_table_before_comparing(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    """The scorer has not reported yet when the first comparisons arrive: their revision is
    newer than its table, so it fetches the table (loading the shadow) and compares."""
    cfg = {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 100}],
        "shadows": [{"name": "faulty", "bundle_version": V, "sample_rate": 1,
                     "fault": {"delay_ms": 0}}]}}}
    ingress, scorer, state, _ = scorer_pair(parts, cfg, batch_size=2, batch_interval_s=60)
    users = [int(u) for u in parts[0].user_ids[:4]]
    assert scorer.router.revision < 0 and not scorer.variants.has("ranker", (V, (
        ("delay_ms", 0.0),)))

    async def go() -> None:
        await serve(ingress, users)
        await scorer.drain()
        await scorer.report_once()

    asyncio.run(go())
    assert scorer.router.revision == ingress.router.revision >= 0
    w = state.status()["stages"]["ranker"]["variants"]["faulty"]
    assert w["window"]["comparisons"] == len(users) and w["totals"].get("dropped", 0) == 0


def test_a_moderation_canary_with_one_more_label_is_compared_on_the_shared_labels(
        parts: tuple[Catalog, FakeRetrieval]) -> None:
    """The canary head emits self_harm too: it serves its share with it, and the comparison
    with the primary (and a shadow that lacks `hate`) ranks only the labels both emit."""
    rt, state, _ = runtime(parts, {"stages": {"moderation": {
        "variants": [{"name": "control", "bundle_version": V, "weight": 50},
                     {"name": "canary", "bundle_version": "v2", "weight": 50}],
        "shadows": [{"name": "fewer", "bundle_version": "v3", "sample_rate": 1}]}}})
    primary = ("abuse", "hate", "spam")
    heads = {V: {"abuse": 0.9, "hate": 0.5, "spam": 0.1},
             "v2": {"abuse": 0.9, "hate": 0.5, "spam": 0.1, "self_harm": 0.99},
             "v3": {"abuse": 0.1, "spam": 0.9}}
    asked: list[str] = []

    async def score_text(text: str, version: str) -> dict[str, float]:
        asked.append(version)
        return heads[version]

    async def run() -> list[str]:
        await rt.report_once()
        served = []
        for i in range(40):
            a = rt.router.assign("moderation", f"c{i}")
            assert a is not None
            rt.router.begin(a)
            served.append(a.variant)
            rt.after_moderation(a, text="t", scores=heads[a.bundle_version], degraded=(),
                                latency_ms=1.0, text_labels=primary, score_text=score_text)
            for _ in range(20):
                await asyncio.sleep(0)
        await rt.drain()
        await rt.report_once()
        return served

    served = asyncio.run(run())
    assert {"control", "canary"} <= set(served)
    st = state.status()["stages"]["moderation"]["variants"]
    canary = st["canary"]["totals"]
    assert canary["comparisons"] == served.count("canary") and canary["errors"] == 0
    # same scores on the shared labels: the extra label does not make it look different
    assert st["canary"]["window"]["rank_correlation"] == pytest.approx(1.0)
    assert st["canary"]["window"]["score_delta"] == pytest.approx(0.0)
    fewer = st["fewer"]["totals"]
    assert fewer["comparisons"] == served.count("control") and fewer["errors"] == 0
    # abuse and spam, in the opposite order: hate (the primary's only) is left out
    from serve.rollout.comparing import rbo

    shared = rbo(["abuse", "spam"], ["spam", "abuse"])
    assert shared != pytest.approx(rbo(["abuse", "hate", "spam"], ["spam", "abuse"]))
    assert st["fewer"]["window"]["rank_correlation"] == pytest.approx(shared)
    assert set(asked) == {V, "v3"}
