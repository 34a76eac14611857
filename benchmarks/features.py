"""Feature-store benchmark: what the online feature store adds to a feed, and how soon an
event is visible.

1. Fetch: the in-process feed pipeline (the `in_process` config of `funnel bench feed`: no
   Ray, no HTTP, the ranker in-process) on the same serving bundle, open-loop at a fixed
   load, in interleaved rounds: without the store, with it, without, with... The store is
   filled first for every benchmark user (a click history of `history_len`, seen posts,
   reported authors; live trending over `trending_items` posts). Reported: the `features`
   stage's p50/p99 (the round trip, parsing, the trending merge) and, pairwise per round,
   the server-side total's p99 with minus without.
2. Lag: events through the real events path (`EventService`: the spool, fsync'd, then the
   store), one at a time at a fixed rate; lag = the event's time to the moment a read of
   the store shows it.

    funnel bench features --profile large --redis-url redis://127.0.0.1:6379/14 \\
        --out benchmarks/results/features.json
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

Say = Callable[[str], None]


def _pct(v: list[float] | np.ndarray, q: float) -> float:
    return round(float(np.percentile(np.asarray(v, dtype=np.float64), q)), 3)


def fill(store: Any, users: np.ndarray, items: np.ndarray, *, seen: int, trending_items: int,
         seed: int = 0, say: Say = print) -> dict[str, int]:
    """Each user: `history_len` clicks, `seen` served posts, 3 reports; live engagement on
    `trending_items` posts. Returns what was written."""
    from serve.features.store import EventRow

    rng = np.random.default_rng(seed)
    now = time.time()
    lay = store.layout
    rows = []
    for u in users:
        clicks = rng.choice(items, lay.history_len, replace=False)
        for j, it in enumerate(clicks):
            rows.append(EventRow(f"b{u}-{j}", int(u), int(it), "click", now - 3600 + j))
        for j, it in enumerate(rng.choice(items, 3, replace=False)):
            rows.append(EventRow(f"r{u}-{j}", int(u), int(it), "report", now - 60,
                                 int(it) % 10_000))
    hot = rng.choice(items, trending_items, replace=False)
    for j, it in enumerate(hot):
        rows.append(EventRow(f"t{j}", 0, int(it), "share", now - rng.uniform(0, 6 * 3600)))
    for k in range(0, len(rows), 2000):
        store.apply_events(rows[k:k + 2000])
    for u in users:
        store.mark_seen(int(u), rng.choice(items, seen, replace=False), now - 30)
    say(f"filled the store: {len(users):,} users, {len(rows):,} events, {seen} seen each")
    return {"users": len(users), "events": len(rows), "seen_per_user": seen}


def run(*, base_bundle: str, profile: str, redis_url: str, work_dir: Path, rate: float,
        duration_s: float, rounds: int, limit: int, lag_events: int, seen: int,
        trending_items: int, say: Say = print) -> dict[str, Any]:
    from benchmarks.feed import open_loop
    from benchmarks.serving_bundle import build_serving_bundle
    from benchmarks.triton_batching import DEFAULT_CONFIG
    from serve.config import load_serve_config, parse_app_args
    from serve.features.layout import Layout
    from serve.features.store import OnlineFeatures
    from serve.loader import load_pipeline, local_ranker
    from serve.pipeline import FeedQuery

    doc, _ = load_serve_config(DEFAULT_CONFIG)
    sb = build_serving_bundle(base_bundle, profile, work_dir, say=say)
    raw = dict(doc["applications"][0]["args"])
    raw["bundle"] = str(sb.path.resolve())
    args = parse_app_args(raw)
    pipeline, _v = load_pipeline(args, ranker=local_ranker(args))
    cat = pipeline.catalog
    rng = np.random.default_rng(0)
    users = rng.choice(cat.user_ids, size=min(1000, len(cat.user_ids)), replace=False)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    f = args.features.model_copy(update={"prefix": prefix})
    layout = Layout.from_settings(f, history=pipeline.features.user_history,
                                  half_life_h=args.feed.trending_half_life_h)
    store = OnlineFeatures(redis_url, layout, timeout_s=f.timeout_ms / 1000.0,
                           retry_after_s=f.retry_after_s,
                           trending_refresh_s=f.trending_refresh_s,
                           catalog_trending=lambda: cat.trending, rows_of=cat.rows_of,
                           allowed=cat.allowed)
    store.start_trending_refresh()  # as a replica does
    result: dict[str, Any] = {}
    try:
        result["filled"] = fill(store, users, cat.post_ids, seen=seen,
                                trending_items=trending_items, say=say)
        memory = store.memory()
        k = 0

        async def call(user_id: int) -> tuple[bool, dict[str, float]]:
            nonlocal k
            k += 1
            r = await pipeline.run(FeedQuery(user_id=user_id, limit=limit,
                                             request_id=f"bf-{k}"))
            return bool(r.items) and not r.degraded, r.timings_ms

        async def rounds_() -> list[dict[str, Any]]:
            for i in range(200):  # warm-up, both ways
                pipeline.online = store if i % 2 else None
                await call(int(users[i % len(users)]))
            out = []
            for r in range(rounds):
                for name in ("without", "with"):
                    pipeline.online = store if name == "with" else None
                    res = await open_loop(call, users, rate=rate, duration_s=duration_s,
                                          keep_latencies=True)
                    out.append({"round": r, "config": name, **res})
                    say(f"round {r + 1}/{rounds} {name:>7} store: p50 {res['p50_ms']:.2f} "
                        f"ms, p99 {res['p99_ms']:.2f} ms, errors {res['error_rate']:.1%}")
            pipeline.online = None
            return out

        # the server-side stage timings: re-run with a collector around the pipeline
        stage_samples: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        inner = pipeline.run

        async def timed_run(q: Any, models: Any = None) -> Any:
            r = await inner(q, models)
            stage_samples["with" if pipeline.online is not None else "without"].append(
                dict(r.timings_ms))
            return r

        pipeline.run = timed_run  # type: ignore[method-assign]
        points = asyncio.run(rounds_())
        pipeline.run = inner  # type: ignore[method-assign]
        with_t = stage_samples["with"]
        feats = [s["features"] for s in with_t if "features" in s]
        totals = {n: [s["total"] for s in v] for n, v in stage_samples.items()}
        paired = []
        for r in range(rounds):
            a = next(p for p in points if p["round"] == r and p["config"] == "without")
            b = next(p for p in points if p["round"] == r and p["config"] == "with")
            paired.append(round(b["p99_ms"] - a["p99_ms"], 3))
        result["fetch"] = {
            "rate_rps": rate, "duration_s_per_round": duration_s, "rounds": rounds,
            "features_stage_p50_ms": _pct(feats, 50), "features_stage_p99_ms": _pct(feats, 99),
            "server_total_p50_ms": {n: _pct(v, 50) for n, v in totals.items()},
            "server_total_p99_ms": {n: _pct(v, 99) for n, v in totals.items()},
            "client_p99_ms_with_minus_without_by_round": paired,
            "points": [{k2: v for k2, v in p.items()
                        if k2 not in ("latencies_ms", "sent_s", "handler_ms")}
                       for p in points]}
        result["memory"] = memory
        result["lag"] = asyncio.run(_lag(store, users, cat, n=lag_events, say=say))
    finally:
        store.close()
        keys = list(store.redis.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            store.redis.delete(*keys[i:i + 5000])
    fetch = result["fetch"]
    return {
        "command": "funnel bench features " + f"--profile {profile} --rate {rate:g} "
                   f"--duration-s {duration_s:g} --rounds {rounds}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(),
                    "python": platform.python_version()},
        "redis_version": store.redis.info("server").get("redis_version"),
        "profile": profile, "bundle": sb.version,
        "fetch_p99_ms_added": fetch["features_stage_p99_ms"],
        "lag_p99_ms": result["lag"]["p99_ms"],
        **result}


async def _lag(store: Any, users: np.ndarray, cat: Any, *, n: int, say: Say
               ) -> dict[str, Any]:
    """Events through `EventService` (a real spool, fsync'd; then the store) one every 50
    ms; the lag of each is from its timestamp to a read that shows it."""
    from monitoring.impressions import EVENTS_SCHEMA, ImpressionLog
    from serve.api import EventIn
    from serve.services.events import EventService

    lags, applied_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        log = ImpressionLog(str(Path(tmp) / "log"), kind="events", schema=EVENTS_SCHEMA,
                            replica="bench", spool_dir=str(Path(tmp) / "spool"))
        svc = EventService(impressions=log, replica="bench", online=store,
                           author_of=cat.authors_of)
        rng = np.random.default_rng(1)
        for i in range(n):
            uid, item = int(users[i % len(users)]), int(rng.choice(cat.post_ids))
            t0 = time.time()
            ev = EventIn(event_id=f"lag-{uuid.uuid4().hex}", request_id="lag", user_id=uid,
                         item_id=item, event="click",
                         timestamp=datetime.fromtimestamp(t0, UTC))
            await svc.ingest([ev])
            t1 = time.time()
            while item not in store.read(uid).history.tolist():
                await asyncio.sleep(0.001)
            lags.append((time.time() - t0) * 1000)
            applied_ms.append((t1 - t0) * 1000)
            await asyncio.sleep(0.05)
        log.close()
    say(f"event to visible: p50 {_pct(lags, 50):.2f} ms, p99 {_pct(lags, 99):.2f} ms "
        f"({n} events)")
    return {"events": n, "p50_ms": _pct(lags, 50), "p99_ms": _pct(lags, 99),
            "max_ms": _pct(lags, 100), "ingest_p99_ms": _pct(applied_ms, 99)}
