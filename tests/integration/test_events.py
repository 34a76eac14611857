"""`POST /v1/events` on the real stack: events land in the impression log once, bad ones
are 4xx naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.integration.conftest import Stack
from tests.integration.test_monitoring import scrape, wait_for


def read_events(stack: Stack, prefix: str) -> list[dict[str, object]]:
    import pyarrow.dataset as ds

    root = stack.impressions / "events"
    if not root.is_dir():
        return []
    t = ds.dataset(root, format="parquet", partitioning="hive").to_table(
        columns=["event_id", "request_id", "item_id", "event", "value"])
    return [r for r in t.to_pylist() if str(r["request_id"]).startswith(prefix)]


def test_events_are_logged_once_and_bad_ones_named(stack: Stack) -> None:
    now = datetime.now(UTC)
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        feed = c.post("/v1/feed", json={"user_id": 3, "limit": 5},
                      headers={"x-request-id": "evt-feed-1"}).json()
        item = feed["items"][0]["item_id"]
        one = {"request_id": "evt-feed-1", "user_id": 3, "item_id": item, "event": "click",
               "timestamp": now.isoformat()}
        r = c.post("/v1/events", json=one)
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
        r = c.post("/v1/events", json=one)  # a retry: the same event
        assert r.status_code == 202 and r.json() == {**r.json(), "accepted": 0,
                                                     "duplicates": 1}
        batch = {"events": [{**one, "event": "dwell", "value": 12.5},
                            {**one, "event": "like", "event_id": "evt-like-1"},
                            {**one, "event": "like", "event_id": "evt-like-1"}]}
        r = c.post("/v1/events", json=batch)
        assert r.status_code == 202 and (r.json()["accepted"], r.json()["duplicates"]) == (
            2, 1), r.text

        bad = c.post("/v1/events", json={**one, "event": "purchase"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "event"
        ahead = (now + timedelta(hours=2)).isoformat()
        bad = c.post("/v1/events", json={"events": [one, {**one, "timestamp": ahead}]})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["field"] == "events[1].timestamp"
        bad = c.post("/v1/events", json={"events": [one] * 501})
        assert bad.status_code in (413, 422)
        bad = c.post("/v1/events", content=b"x" * (2 << 20),
                     headers={"content-type": "application/json"})
        assert bad.status_code == 413
    rows = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
        read_events(stack, "evt-feed-1")))
    assert rows is not None, "events did not reach the impression log"
    assert sorted(str(r["event"]) for r in rows) == ["click", "dwell", "like"]
    assert len({r["event_id"] for r in rows}) == 3
    got = scrape(stack.url)
    assert got[("funnel_events_total", (("event", "click"), ("outcome", "duplicate")))] >= 1
