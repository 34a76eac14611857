"""ReviewService and the admin check without Ray: the list query checked field by field,
pages, and a decision the feed serves at once."""

from __future__ import annotations

import asyncio

import pytest

from serve.services.admin import AdminAuth
from serve.services.review import ListQuery, ReviewService, parse_list_query
from tests.fakes import MemoryReviewStore


def test_the_list_query_defaults_and_its_bad_fields_are_each_named() -> None:
    q, problems = parse_list_query({}, max_limit=100)
    assert q == ListQuery("pending", 50, 0) and problems == []
    q, problems = parse_list_query({"status": "maybe", "limit": "0", "after_id": "-1"},
                                   max_limit=100)
    assert q is None
    assert [p["field"] for p in problems] == ["status", "limit", "after_id"]
    _, problems = parse_list_query({"limit": "101"}, max_limit=100)
    assert problems[0]["message"] == "an integer in 1..100"
    _, problems = parse_list_query({"after_id": "²"}, max_limit=100)
    assert problems[0]["field"] == "after_id"


def _queue(n: int) -> MemoryReviewStore:
    store = MemoryReviewStore()
    for i in range(n):
        store.record_model_decision(
            content_id=f"c{i}", decision="review", model="m", policy_version="p",
            request_id=f"r{i}", text="t", has_image=False, author_id=None,
            scores={"abuse": 0.6}, flagged_labels=["abuse"], reasons=["abuse"],
            model_versions={})
    return store


def test_pages_end_with_no_next_id_and_a_decision_refreshes_the_feeds_verdicts() -> None:
    store, refreshed = _queue(5), []

    async def refresh() -> None:
        refreshed.append(1)

    svc = ReviewService(store, refresh_verdicts=refresh)
    items, nxt = asyncio.run(svc.list(ListQuery("pending", 3, 0)))
    assert len(items) == 3 and nxt == items[-1].id
    rest, last = asyncio.run(svc.list(ListQuery("pending", 3, nxt)))
    assert len(rest) == 2 and last is None
    item = asyncio.run(svc.decide(items[0].id, decision="block", reviewer="ana", note=None))
    assert item.status == "block" and refreshed == [1]
    blocked, _ = asyncio.run(svc.list(ListQuery("block", 10, 0)))
    assert [i.id for i in blocked] == [items[0].id]


@pytest.mark.parametrize(("token", "header", "status"), [
    ("", "Bearer x", 403), ("tok", "", 401), ("tok", "Basic tok", 401),
    ("tok", "Bearer nope", 403), ("tok", "Bearer tok", None), ("tok", "bearer tok ", None)])
def test_admin_routes_need_the_servers_bearer_token(token: str, header: str,
                                                   status: int | None) -> None:
    refusal = AdminAuth(token, "FUNNEL_ADMIN_TOKEN").check(header)
    assert (refusal.status if refusal else None) == status
    if refusal is not None and status == 403 and not token:
        assert "FUNNEL_ADMIN_TOKEN" in refusal.detail
