"""The HTTP edge over a replica's services, without Ray: each route parses, calls its
service and maps errors (statuses, error names, the field named, Server-Timing)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from serve.http.asgi import build_http_app
from serve.services.replica import ReplicaServices
from tests.unit.serve.services.conftest import TOKEN

ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(services: ReplicaServices) -> TestClient:
    return TestClient(build_http_app(services), raise_server_exceptions=False)


def _uid(services: ReplicaServices) -> int:
    return int(services.pipeline.catalog.user_ids[0])


def test_feed_answers_with_items_the_callers_request_id_and_stage_timings(
        client: TestClient, services: ReplicaServices) -> None:
    r = client.post("/v1/feed", json={"user_id": _uid(services), "limit": 5},
                    headers={"x-request-id": "abc-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "abc-123" and 0 < len(body["items"]) <= 5
    assert "handler;dur=" in r.headers["server-timing"]


def test_each_http_request_records_its_cost_once_with_parsing_and_the_response(
        client: TestClient, services: ReplicaServices) -> None:
    from monitoring import metrics

    def count() -> tuple[float, float, float]:
        return (metrics.COST_REQUESTS.labels("feed", "primary")._value.get(),
                metrics.COST_REQUESTS.labels("moderate", "primary")._value.get(),
                metrics.COST_CORE_SECONDS.labels("ingress", "", "primary", "feed")
                ._value.get())

    before = count()
    assert client.post("/v1/feed", json={"user_id": _uid(services)}).status_code == 200
    assert client.post("/v1/feed", content=b"{not json").status_code == 400  # costs too
    assert client.post("/v1/moderate", json={"content_id": "c-cost", "text": "a garden"}
                       ).status_code == 200
    after = count()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert after[2] > before[2]


@pytest.mark.parametrize(("payload", "status", "code", "field"), [
    (b"{not json", 400, "invalid_json", None),
    (b'{"user_id": "seven"}', 422, "validation_error", "user_id"),
    (b'{"user_id": 1, "limit": 0}', 422, "validation_error", "limit"),
    (b'{"user_id": 1, "surprise": true}', 422, "validation_error", "surprise"),
])
def test_bad_feed_requests_are_4xx_naming_the_field(client: TestClient, payload: bytes,
                                                   status: int, code: str,
                                                   field: str | None) -> None:
    r = client.post("/v1/feed", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["error"] == code
    if field is not None:
        assert field in [d["field"] for d in r.json()["detail"]]


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    r = client.post("/v1/feed", content=b"x" * (2 << 20))
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"


def test_events_are_accepted_once(client: TestClient, services: ReplicaServices) -> None:
    ev = {"event_id": "e1", "request_id": "r1", "user_id": 1, "item_id": 2,
          "event": "click", "timestamp": datetime.now(UTC).isoformat()}
    first = client.post("/v1/events", json=ev)
    again = client.post("/v1/events", json={"events": [ev]})
    assert first.status_code == again.status_code == 202
    assert (first.json()["accepted"], again.json()["duplicates"]) == (1, 1)
    assert len(services.impressions["events"].rows) == 1
    bad = client.post("/v1/events", json={**ev, "event": "purchase"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "event"


def test_moderation_decides_and_refuses_an_empty_item(client: TestClient) -> None:
    r = client.post("/v1/moderate", json={"content_id": "c9", "text": "nice dog"})
    assert r.status_code == 200 and r.json()["decision"] == "allow"
    empty = client.post("/v1/moderate", json={"content_id": "c9"})
    assert empty.status_code == 422


def test_moderation_off_is_503_naming_the_setting(services: ReplicaServices) -> None:
    services.moderation = None
    r = TestClient(build_http_app(services)).post("/v1/moderate",
                                                  json={"content_id": "c", "text": "t"})
    assert r.status_code == 503 and "moderation.enabled" in r.json()["detail"]


def test_the_review_queue_needs_the_token_and_names_bad_query_fields(
        client: TestClient) -> None:
    assert client.get("/v1/review").status_code == 401
    assert client.get("/v1/review", headers={"authorization": "Bearer no"}).status_code == 403
    ok = client.get("/v1/review", headers=ADMIN)
    assert ok.status_code == 200 and ok.json() == {"items": [], "next_after_id": None}
    bad = client.get("/v1/review?limit=0&status=x", headers=ADMIN)
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["detail"]} == {"limit", "status"}
    assert client.post("/v1/review/abc", headers=ADMIN,
                       json={"decision": "allow", "reviewer": "a"}).status_code == 422


def test_a_reported_item_is_decided_through_the_queue(client: TestClient) -> None:
    held = client.post("/v1/moderate",
                       json={"content_id": "c5", "text": "hello", "reported": True}).json()
    assert held["decision"] == "review"
    r = client.post(f"/v1/review/{held['review_id']}", headers=ADMIN,
                    json={"decision": "block", "reviewer": "ana"})
    assert r.status_code == 200 and r.json()["status"] == "block"


def test_rollout_admin_without_a_controller_is_503(client: TestClient) -> None:
    assert client.get("/v1/admin/rollout").status_code == 401
    r = client.get("/v1/admin/rollout", headers=ADMIN)
    assert r.status_code == 503 and r.json()["error"] == "rollout_disabled"
    bad = client.post("/v1/admin/rollout/nope/explode", headers=ADMIN)
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["detail"]} == {"stage", "action"}


def test_health_readiness_and_the_scrape(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["index"] is True
    scrape = client.get("/metrics")
    assert scrape.status_code == 200 and "funnel_review_queue_up 1.0" in scrape.text


def test_a_feed_past_the_admission_bound_is_429_with_retry_after_and_counted(
        client: TestClient, services: ReplicaServices) -> None:
    from monitoring import metrics

    gate = services.feed.gate
    before = metrics.SHED.labels(route="/v1/feed")._value.get()
    gate.max_inflight, gate.retry_after_s = 1, 2.5
    gate.enter()  # one request already in flight
    try:
        r = client.post("/v1/feed", json={"user_id": _uid(services), "limit": 5})
    finally:
        gate.leave()
        gate.max_inflight = 0
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"] == "overloaded" and "bound of 1" in r.json()["detail"]
    assert metrics.SHED.labels(route="/v1/feed")._value.get() == before + 1
    ok = client.post("/v1/feed", json={"user_id": _uid(services), "limit": 5})
    assert ok.status_code == 200
