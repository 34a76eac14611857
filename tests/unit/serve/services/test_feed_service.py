"""FeedService without Ray: a request through the pipeline (and the rollout's variants),
observed in the impression log, shaped into the response."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve.api import FeedRequest
from serve.services.feed import FeedService
from serve.services.replica import ReplicaServices
from tests.unit.serve.rollout.test_runtime import V, runtime
from tests.unit.serve.services.conftest import RecordingLog


def _req(user_id: int, **kw: Any) -> FeedRequest:
    return FeedRequest.model_validate({"user_id": user_id, "limit": 10, **kw})


def test_a_feed_is_served_in_the_bundles_versions_and_logged(
        services: ReplicaServices) -> None:
    calls = []
    svc = services.feed
    svc._on_request = lambda: calls.append(1)
    uid = int(services.pipeline.catalog.user_ids[0])
    body, timings = asyncio.run(svc.run(_req(uid), "rid-1"))
    assert body.request_id == "rid-1" and body.user_id == uid
    assert 0 < len(body.items) <= 10 and body.degraded == []
    assert [i.rank for i in body.items] == list(range(1, len(body.items) + 1))
    assert body.model_versions == services.versions
    assert body.variants == {"retrieval": "primary", "ranker": "primary"}
    assert {"candidates", "rank"} <= set(timings) and calls == [1]
    log = services.impressions["feed"]
    assert isinstance(log, RecordingLog) and len(log.rows) == 1
    cols, n = log.rows[0]
    assert n == len(body.items) and cols["request_id"] == "rid-1"
    assert list(cols["item_id"]) == [i.item_id for i in body.items]


def _count(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


def test_a_feed_without_the_http_edge_records_its_cost_once(
        services: ReplicaServices) -> None:
    """gRPC's path: the service starts the request's ledger itself and records it."""
    from monitoring import metrics

    uid = int(services.pipeline.catalog.user_ids[2])
    before = (_count(metrics.COST_REQUESTS, "feed", "primary"),
              _count(metrics.COST_CORE_SECONDS, "ingress", "", "primary", "feed"))
    asyncio.run(services.feed.run(_req(uid), "cost-1"))
    assert _count(metrics.COST_REQUESTS, "feed", "primary") == before[0] + 1
    assert _count(metrics.COST_CORE_SECONDS, "ingress", "", "primary", "feed") > before[1]


def test_excluded_items_are_never_served(services: ReplicaServices) -> None:
    uid = int(services.pipeline.catalog.user_ids[1])
    first, _ = asyncio.run(services.feed.run(_req(uid), "a"))
    gone = [i.item_id for i in first.items[:3]]
    again, _ = asyncio.run(services.feed.run(_req(uid, exclude_item_ids=gone), "b"))
    assert not set(gone) & {i.item_id for i in again.items}


def test_with_a_rollout_each_response_names_its_variant_and_the_controller_counts_it(
        catalog_parts: Any) -> None:
    rt, state, _ = runtime(catalog_parts, {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": V, "weight": 50},
        {"name": "canary", "bundle_version": V, "weight": 50}]}}})
    log = RecordingLog()
    svc = FeedService(pipeline=rt.pipeline, versions={"bundle": V, "retrieval": V,
                                                      "ranker": V},
                      rollout=rt, impressions=log, replica="r1")
    users = [int(u) for u in catalog_parts[0].user_ids[:24]]

    async def go() -> list[Any]:
        await rt.report_once()
        out = [(await svc.run(_req(u), f"q{u}"))[0] for u in users]
        await rt.drain()
        await rt.report_once()
        return out

    bodies = asyncio.run(go())
    served = [b.variants["ranker"] for b in bodies]
    assert set(served) == {"control", "canary"}
    st = state.status()["stages"]["ranker"]["variants"]
    for name in ("control", "canary"):
        assert st[name]["totals"]["requests"] == served.count(name)
        # each request's attributed CPU reached its variant's tally (the cost guardrail)
        assert st[name]["totals"]["cost_requests"] == served.count(name)
        assert st[name]["totals"]["cost_core_s"] > 0 and st[name]["usd_per_1k"] > 0
    assert all(b.variants["retrieval"] == "primary" for b in bodies)
    assert len(log.rows) == len(users)


def test_a_pipeline_failure_frees_the_requests_rollout_slots(catalog_parts: Any) -> None:
    rt, _, _ = runtime(catalog_parts, {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": V, "weight": 100}]}}})
    svc = FeedService(pipeline=rt.pipeline, versions={"bundle": V, "retrieval": V,
                                                      "ranker": V}, rollout=rt)

    async def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("catalog unreadable")

    rt.pipeline.run = boom  # type: ignore[method-assign]

    async def go() -> None:
        await rt.report_once()
        with pytest.raises(RuntimeError):
            await svc.run(_req(int(catalog_parts[0].user_ids[0])), "x")

    asyncio.run(go())
    assert rt.router._inflight.get("ranker", 0) == 0  # the canary budget is not held
