"""The open-loop load generator and sweep, against fake services with known latency.

They run on an event loop with virtual time (looptime): sleeps take no real time, CPU work
takes no virtual time, so every latency and rate below is exact on any machine, busy or not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks import feed
from tests.fakes import on_virtual_time


def test_open_loop_keeps_the_offered_rate_and_measures_latency() -> None:
    async def service(user_id: int) -> tuple[bool, dict[str, float]]:
        await asyncio.sleep(0.02)
        return True, {"total": 20.0 + user_id % 2}

    r = on_virtual_time(feed.open_loop(service, np.arange(10), rate=50, duration_s=1.0))
    assert r["requests"] == 50
    # open loop: the 20 ms service time does not throttle it (the last request goes out at
    # 0.98 s and answers at 1.0 s)
    assert r["achieved_rps"] == 50.0
    assert r["p50_ms"] == pytest.approx(20.0, abs=0.01)
    assert r["p99_ms"] == pytest.approx(20.0, abs=0.01)
    assert r["error_rate"] == 0.0
    assert r["server_stages_p50_ms"] == {"total": 20.5}


def test_open_loop_keeps_latencies_in_send_order_with_send_times() -> None:
    async def service(user_id: int) -> tuple[bool, dict[str, float]]:
        await asyncio.sleep(0.06 if user_id == 0 else 0.005)  # the first answers last
        return True, {}

    r = on_virtual_time(feed.open_loop(service, np.arange(10), rate=20, duration_s=0.5,
                                       keep_latencies=True))
    lat, sent = r["latencies_ms"], r["sent_s"]
    assert len(lat) == len(sent) == 10
    # by send order, not answer order
    assert lat == pytest.approx([60.0] + [5.0] * 9, abs=0.01)
    assert sent == pytest.approx([i * 0.05 for i in range(10)], abs=1e-6)


def test_sweep_stops_at_the_first_load_over_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "SWEEP", (5, 10, 20, 40, 80))
    in_flight = 0

    async def service(user_id: int) -> tuple[bool, dict[str, float]]:
        # latency grows with concurrency: 50 ms per request in flight, so at 40 req/s (one
        # every 25 ms) requests pile up and p99 passes 150 ms; at 20 req/s they do not
        nonlocal in_flight
        in_flight += 1
        await asyncio.sleep(0.05 * in_flight)
        in_flight -= 1
        return True, {}

    said: list[str] = []
    r = on_virtual_time(feed.sweep(service, np.array([1, 2]), duration_s=1.0,
                                   say=said.append, name="fake"))
    assert r["max_rps_p99_150ms"] == 20.0
    points = {p["offered_rps"]: p["p99_ms"] for p in r["points"]}
    assert list(points) == [5, 10, 20, 40]  # stops at the first load over budget: no 80
    assert points[5] == pytest.approx(50.0, abs=0.01) and points[40] > 150
    assert r["p50_ms"] == r["points"][0]["p50_ms"]
    assert any("(over)" in s for s in said)


def test_an_explicit_load_list_replaces_the_sweep() -> None:
    async def service(user_id: int) -> tuple[bool, dict[str, float]]:
        return True, {}

    r = on_virtual_time(feed.sweep(service, np.array([1]), duration_s=1.0,
                                   say=lambda s: None, name="fake", loads=(3, 7)))
    assert [p["offered_rps"] for p in r["points"]] == [3, 7]
    assert r["max_rps_p99_150ms"] == 7.0


def test_server_timing_header_parses_to_stage_milliseconds() -> None:
    assert feed.parse_server_timing("candidates;dur=4.2, rank;dur=9, total;dur=20.5") == {
        "candidates": 4.2, "rank": 9.0, "total": 20.5}
    assert feed.parse_server_timing("") == {}
    assert feed.parse_server_timing("cache;desc=hit, db;dur=x, app;dur=1") == {"app": 1.0}
