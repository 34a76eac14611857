"""The online feature store against a real Redis: idempotent event writes, bounds, the
one-round-trip read, trending, failure handling, and the replay from the impression log."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from monitoring.drift_window import open_log
from monitoring.impressions import EVENTS_SCHEMA, FEED_SCHEMA, ImpressionLog
from serve.errors import FeatureStoreUnavailable
from serve.features.layout import Layout
from serve.features.rebuild import replay
from serve.features.store import EventRow, OnlineFeatures

NOW = time.time()


def store(url: str, prefix: str, **kw: object) -> OnlineFeatures:
    layout = Layout(prefix=prefix, history_len=5, seen_cap=8, reported_cap=3)
    return OnlineFeatures(url, layout, timeout_s=0.5, **kw)  # type: ignore[arg-type]


def ev(i: int, user: int, item: int, event: str = "click", age_s: float = 10.0,
       author: int | None = None) -> EventRow:
    return EventRow(f"e{i}", user, item, event, time.time() - age_s, author)


def test_an_event_counts_once_and_lands_in_each_set(redis_url: str, prefix: str) -> None:
    s = store(redis_url, prefix)
    rows = [ev(1, 7, 100), ev(2, 7, 101, "like"), ev(3, 7, 102, "report", author=55)]
    assert s.apply_events(rows) == (3, 0)
    assert s.apply_events(rows) == (0, 3)  # a replay or a retry adds nothing
    f = s.read(7)
    assert f.history.tolist() == [100]  # only clicks are history
    assert sorted(f.seen.tolist()) == [100, 101, 102]  # any event means seen
    assert f.reported.tolist() == [55]
    counts = s.redis.hgetall(s.layout.item(100))
    assert len(counts) == 1 and float(next(iter(counts.values()))) > 0


def test_sets_are_bounded_and_expire(redis_url: str, prefix: str) -> None:
    s = store(redis_url, prefix)
    rows = [ev(i, 1, 200 + i, age_s=100 - i) for i in range(20)]
    s.apply_events(rows)
    f = s.read(1)
    assert f.history.tolist() == [215, 216, 217, 218, 219]  # the newest 5, oldest first
    assert len(f.seen) == 8
    for key in (s.layout.history(1), s.layout.seen(1)):
        assert 0 < s.redis.ttl(key) <= s.layout.history_ttl_s
    old = EventRow("old", 2, 300, "click", NOW - 8 * 86_400)  # past seen_days
    s.apply_events([old])
    assert s.read(2).seen.tolist() == []


def test_clicks_within_one_second_keep_their_order(redis_url: str, prefix: str) -> None:
    s = store(redis_url, prefix)
    t = float(int(NOW)) + 0.25
    rows = [EventRow(f"o{k}", 3, item, "click", t + k * 1e-4)
            for k, item in enumerate([905, 173, 300])]
    s.apply_events(rows)
    assert s.read(3).history.tolist() == [905, 173, 300]  # by time, not by id


def test_trending_merges_live_engagement_over_the_bundle_list(redis_url: str,
                                                              prefix: str) -> None:
    catalog = (np.array([1, 2, 3]), np.array([3.0, 2.0, 1.0]))
    s = store(redis_url, prefix, catalog_trending=lambda: catalog,
              rows_of=lambda ids: np.asarray(ids) * 10, allowed=lambda ids: ids != 666)
    s.apply_events([ev(i, 9, 3, "share", age_s=1) for i in range(3)]
                   + [ev(10 + i, 9, 666, "share", age_s=1) for i in range(5)])
    assert s.read(9).trending is None  # until the refresh has run
    s.refresh_trending()
    t = s.read(9).trending
    assert t is not None
    assert t.ids[0] == 3 and 666 not in t.ids.tolist()  # 3 shares lift item 3; 666 is blocked
    assert t.rows.tolist() == (t.ids * 10).tolist()
    # three shares of weight 4, decayed by a second or so of a 6-hour half-life
    assert t.scores[0] == pytest.approx(1.0 + 3 * 4.0, rel=1e-3)


def test_served_items_are_seen(redis_url: str, prefix: str) -> None:
    s = store(redis_url, prefix)
    s.mark_seen(4, [1, 2, 3], NOW)
    s.mark_seen(4, [3, 4], NOW + 1)
    assert sorted(s.read(4).seen.tolist()) == [1, 2, 3, 4]


def test_a_dead_redis_fails_fast_then_pauses(prefix: str) -> None:
    s = OnlineFeatures("redis://127.0.0.1:1/0", Layout(prefix=prefix), timeout_s=0.2,
                       retry_after_s=60)
    t0 = time.perf_counter()
    with pytest.raises(FeatureStoreUnavailable):
        s.read(1)
    with pytest.raises(FeatureStoreUnavailable, match="retrying after"):
        s.read(1)  # paused: not even tried
    assert time.perf_counter() - t0 < 2.0
    assert s.outage_since is not None


def test_redis_back_calls_the_replay_with_the_outage_start(redis_url: str,
                                                           prefix: str) -> None:
    clock = [100.0]
    s = store(redis_url, prefix, clock=lambda: clock[0], retry_after_s=0)
    real = s._read

    def refused(**kw: object) -> None:
        raise ConnectionError("refused")

    s._read = refused  # type: ignore[assignment]
    backs: list[float] = []
    s.on_back(backs.append)
    with pytest.raises(FeatureStoreUnavailable):
        s.read(1)
    clock[0] = 130.0
    s._read = real
    s.read(1)
    assert backs == [100.0] and s.outage_since is None


def test_replay_from_the_log_applies_what_redis_missed_once(redis_url: str, prefix: str,
                                                            tmp_path: Path) -> None:
    url = str(tmp_path / "log")
    events = ImpressionLog(url, kind="events", schema=EVENTS_SCHEMA, replica="r")
    feed = ImpressionLog(url, kind="feed", schema=FEED_SCHEMA, replica="r")
    now_us = int(NOW * 1e6)
    events.append({"event_id": ["a", "b", "c"], "request_id": "q", "user_id": [5, 5, 6],
                   "item_id": [10, 11, 12], "event": ["click", "report", "like"],
                   "value": None, "ts": [now_us - 3_000_000, now_us - 2_000_000,
                                         now_us - 1_000_000],
                   "received_ts": now_us, "replica": "r"}, 3)
    feed.append({"request_id": "q", "ts": now_us, "user_id": 6, "item_id": [20, 21],
                 "position": [1, 2]}, 2)
    events.close()
    feed.close()
    s = store(redis_url, prefix)
    s.apply_events([EventRow("a", 5, 10, "click", NOW - 3)])  # applied before the outage
    fs, root = open_log(url)
    start = datetime.now(UTC) - timedelta(hours=1)
    res = replay(s, fs, root, start=start, end=datetime.now(UTC) + timedelta(minutes=5),
                 reason="outage", author_of=lambda ids: np.asarray(ids) + 1000)
    assert (res.events, res.applied, res.already, res.served_users) == (3, 2, 1, 1)
    assert s.read(5).reported.tolist() == [1011]
    assert sorted(s.read(6).seen.tolist()) == [12, 20, 21]
    again = replay(s, fs, root, start=start, end=datetime.now(UTC) + timedelta(minutes=5),
                   reason="command")
    assert (again.applied, again.already) == (0, 3)


def test_memory_of_a_full_user(redis_url: str, prefix: str) -> None:
    """The figure docs/features.md quotes: one user at the default bounds."""
    s = OnlineFeatures(redis_url, Layout(prefix=prefix), timeout_s=1.0)
    lay = s.layout
    rows = [EventRow(f"m{i}", 1, 10_000_000 + i, "click", NOW - 3600 + i + 0.123456)
            for i in range(lay.seen_cap)]
    rows += [EventRow(f"r{i}", 1, 20_000_000 + i, "report", NOW - 10, 30_000_000 + i)
             for i in range(lay.reported_cap)]
    for k in range(0, len(rows), 500):
        s.apply_events(rows[k:k + 500])
    sizes = {k: s.redis.memory_usage(key) for k, key in
             (("h", lay.history(1)), ("s", lay.seen(1)), ("r", lay.reported(1)))}
    assert s.redis.zcard(lay.history(1)) == lay.history_len
    assert s.redis.zcard(lay.seen(1)) == lay.seen_cap
    assert all(v > 0 for v in sizes.values())
    print(f"\nbytes of a full user: {sizes} total {sum(sizes.values())}")
