"""The online feature store with the real replica services (the tiny bundle, the in-process
ranker, the HTTP app) and a real Redis: freshness after events, and faults under traffic
(Redis stopped for 10 s, then restarted empty)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from monitoring import metrics
from serve.config import parse_app_args
from serve.http.asgi import build_http_app
from serve.services.replica import ReplicaServices, build_services
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
REDIS_URL = os.environ.get("FUNNEL_TEST_REDIS_URL")


@pytest.fixture(autouse=True)
def _process_threads_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica caps torch's and BLAS's thread pools for its process (serve.loader);
    here that process is the test run's, and later tests compare float results computed
    with the default pools (tests/unit/serve/test_page_equality.py)."""
    monkeypatch.setattr("serve.loader.limit_threads", lambda n: None)


def replica(bundle: Path, tmp: Path, redis_url: str, prefix: str, **features: Any
            ) -> ReplicaServices:
    args = parse_app_args({
        "bundle": str(bundle),
        "feed": {"ranker": {"backend": "local"},
                 "sources": {n: {"timeout_ms": 5000} for n in
                             ("ann", "social", "trending", "fresh")}},
        "moderation": {"enabled": False},
        "review": {"database_url": f"sqlite:///{tmp / 'review.db'}",
                   "spool_path": str(tmp / "review-spool.sqlite3")},
        "impressions": {"url": str(tmp / "log"), "spool_dir": str(tmp / "spool"),
                        "flush_interval_s": 0.5},
        "features": {"url": redis_url, "prefix": prefix, "timeout_ms": 200,
                     "retry_after_s": 0.5, "trending_refresh_s": 0.2, **features},
    })
    return build_services(args, replica="t")


def event(uid: int, item: int, kind: str = "click", at: datetime | None = None
          ) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "request_id": "r", "user_id": uid,
            "item_id": item, "event": kind,
            "timestamp": (at or datetime.now(UTC)).isoformat()}


def logged_event_ids(root: Path) -> set[str]:
    out: set[str] = set()
    for f in (root / "events").rglob("*.parquet"):
        if not f.name.startswith("_"):
            out |= set(pq.read_table(f, columns=["event_id"]).column("event_id").to_pylist())
    return out


def _cleanup(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.skip("FUNNEL_TEST_REDIS_URL is not set (CI sets it): Redis not tested")
    return REDIS_URL


def test_clicks_change_the_user_vector_and_are_excluded_at_once(
        tiny_bundle: Path, tmp_path: Path, redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    s = replica(tiny_bundle, tmp_path, redis_url, prefix, mark_served_seen=False)
    try:
        client = TestClient(build_http_app(s))
        p = s.pipeline
        uid = int(p.catalog.user_ids[0])
        user = p.catalog.user(uid)
        aligned = p._view(p.retrieval.features).users
        frozen = p.retrieval.user_vector(user, aligned)
        first = client.post("/v1/feed", json={"user_id": uid, "limit": 10})
        assert first.status_code == 200 and first.json()["degraded"] == []
        assert "features;dur=" in first.headers["server-timing"]
        clicked = [it["item_id"] for it in first.json()["items"][:3]]
        t0 = datetime.now(UTC)  # three clicks within one second, in the page's order
        r = client.post("/v1/events", json={"events": [
            event(uid, i, at=t0 + timedelta(milliseconds=k)) for k, i in enumerate(clicked)]})
        assert r.status_code == 202 and r.json()["accepted"] == 3
        # no wait: a 202 means the events were applied (or the store is down)
        after = client.post("/v1/feed", json={"user_id": uid, "limit": 10})
        assert after.status_code == 200 and after.json()["degraded"] == []
        assert not set(clicked) & {it["item_id"] for it in after.json()["items"]}
        fresh = p.online.read(uid)
        assert fresh.history.tolist() == clicked  # oldest first: the page's order
        live = p.retrieval.user_vector(user, aligned, fresh.history)
        assert not np.allclose(live, frozen, atol=1e-4)
        assert s.pipeline.online.read(uid).seen.tolist() != []
    finally:
        s.close()
        _cleanup(redis_url, prefix)


@pytest.fixture
def own_redis() -> Iterator[dict[str, Any]]:
    """A Redis of this test's own on a free port, which it stops and restarts empty."""
    if not REDIS_URL:
        pytest.skip("FUNNEL_TEST_REDIS_URL is not set (CI sets it): Redis not tested")
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (.ci/run installs Debian's redis-server)"
    port = free_port()
    state: dict[str, Any] = {"url": f"redis://127.0.0.1:{port}/0"}

    def start() -> None:
        state["proc"] = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=port, socket_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop() -> None:
        state["proc"].kill()
        state["proc"].wait(10)

    state["start"], state["stop"] = start, stop
    start()
    yield state
    stop()


def test_redis_stopped_then_restarted_empty_under_traffic(
        tiny_bundle: Path, tmp_path: Path, own_redis: dict[str, Any]) -> None:
    s = replica(tiny_bundle, tmp_path, own_redis["url"], "funnel:f")
    client = TestClient(build_http_app(s))
    users = [int(u) for u in s.pipeline.catalog.user_ids[:5]]
    items = [int(i) for i in s.pipeline.catalog.post_ids[:200]]
    statuses: dict[int, int] = {}
    degraded = {"features": 0}
    acked: set[str] = set()
    outage_click: dict[str, int] = {}
    def rebuilt() -> float:
        return sum(metrics.FEATURE_REBUILT.labels("empty", o)._value.get()
                   for o in ("applied", "already"))

    rebuilt_before = rebuilt()

    def traffic(seconds: float, tag: str) -> None:
        end, k = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            k += 1
            uid, item = users[k % len(users)], items[k % len(items)]
            f = client.post("/v1/feed", json={"user_id": uid, "limit": 5})
            statuses[f.status_code] = statuses.get(f.status_code, 0) + 1
            if f.status_code == 200 and "features" in f.json()["degraded"]:
                degraded["features"] += 1
            ev = event(uid, item)
            r = client.post("/v1/events", json=ev)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                acked.add(ev["event_id"])
                if tag == "outage" and not outage_click:
                    outage_click.update(user=uid, item=item)

    try:
        traffic(2.0, "before")
        assert degraded["features"] == 0
        own_redis["stop"]()
        traffic(10.0, "outage")
        own_redis["start"]()  # empty: nothing was saved
        acked_before_restart = len(acked)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            traffic(1.0, "after")
            if outage_click["item"] in s.pipeline.online.read(outage_click["user"]
                                                              ).history.tolist():
                break
        else:
            raise AssertionError("the store was not refilled from the log within 60 s")
    finally:
        s.close()
    assert not [c for c in statuses if c >= 500], statuses
    assert degraded["features"] > 0  # the outage was flagged, not hidden
    missing = acked - logged_event_ids(tmp_path / "log")
    assert not missing, f"{len(missing)} acknowledged event(s) not in the log"
    # counted: every event acknowledged before the restart was replayed into the empty store
    assert rebuilt() - rebuilt_before >= acked_before_restart
