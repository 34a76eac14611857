"""Does live history help? MovieLens-100K's test period replayed through the events path.

The bundle is trained on MovieLens-100K with a global time split
(training/configs/movielens-time.yaml): its user tower's history input holds each user's
clicks (ratings) before the test period. The test period's ratings are then replayed in
time order, each as a `click` through `EventService` (the spool, then the feature store).
Before each rating is replayed, the two-tower model ranks every movie for that user twice:

- frozen: the bundle's history (what serving had before the feature store);
- live: the bundle's history plus the test-period ratings replayed so far, read back from
  the feature store (what serving does now).

Recall@10 is the share of ratings whose movie is in the top 10. Both rankings leave out the
same movies (those the user rated before: in the bundle's seen set, or earlier in the test
period), so the two differ only by the user vector. Scores are exact inner products over the
1,682 movies (the index's stored vectors). The 95 % interval of the difference resamples
users (a user's ratings are not independent), 2,000 times.

Event times are the replay's wall clock, in the ratings' order (1998's timestamps are older
than the store's seen window and TTLs).

    funnel train --dataset movielens-100k --config training/configs/movielens-time.yaml
    funnel bench features-quality --bundle artifacts/latest --redis-url redis://127.0.0.1:6379/14
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

Say = Callable[[str], None]
CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "movielens-time.yaml"


def cluster_bootstrap(diff: np.ndarray, groups: np.ndarray, *, n: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean of `diff`, resampling whole groups."""
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=diff, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(uniq), size=(n, len(uniq)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def run(*, bundle: str, redis_url: str, config: Path = CONFIG, k: int = 10,
        max_events: int | None = None, say: Say = print) -> dict[str, Any]:
    from funnel.contracts.bundle import verify_bundle
    from monitoring.impressions import EVENTS_SCHEMA, ImpressionLog
    from serve.api import EventIn
    from serve.catalog import Catalog
    from serve.features.layout import Layout
    from serve.features.store import OnlineFeatures
    from serve.retrieval import TwoTowerRetrieval
    from serve.services.events import EventService
    from training.config import load_config
    from training.data.movielens import load_movielens_100k
    from training.features import FeatureTransform
    from training.pipeline import make_split

    b = verify_bundle(bundle)
    ds = load_movielens_100k()
    split = make_split(ds, load_config(config))
    imp = ds.impressions
    test = imp[split.test].sort_values("timestamp", kind="stable")
    if max_events is not None:
        test = test.iloc[:max_events]
    ft = FeatureTransform.load(b.file("features/transform.json").parent)
    catalog = Catalog(b.file("catalog/catalog.json").parent)
    retrieval = TwoTowerRetrieval(b, ft)
    aligned = ft.align_users(catalog.user_ids, catalog.user_columns)
    items = catalog.post_ids
    vectors = retrieval.item_vectors(items)
    before = imp[~split.test]
    rated: dict[int, set[int]] = {}
    for u, i in zip(before["user_id"].to_numpy(), before["post_id"].to_numpy(), strict=True):
        rated.setdefault(int(u), set()).add(int(i))
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    hist = ft.user_history
    store = OnlineFeatures(redis_url, Layout(prefix=prefix, history_len=int(hist.shape[1])),
                           timeout_s=1.0)
    say(f"replaying {len(test):,} test-period ratings of {test['user_id'].nunique():,} users "
        f"through the events path")
    users, hit_frozen, hit_live, differs = [], [], [], 0
    t0 = time.time()

    def top(v: np.ndarray, exclude: set[int]) -> np.ndarray:
        scores = vectors @ v
        if exclude:
            scores[np.searchsorted(items, np.fromiter(exclude, np.int64))] = -np.inf
        return items[np.argpartition(-scores, k)[:k]]

    async def replay() -> None:
        nonlocal differs
        with tempfile.TemporaryDirectory() as tmp:
            log = ImpressionLog(str(Path(tmp) / "log"), kind="events", schema=EVENTS_SCHEMA,
                                replica="bench", spool_dir=str(Path(tmp) / "spool"))
            svc = EventService(impressions=log, replica="bench", online=store,
                               author_of=catalog.authors_of)
            for n, (u, i) in enumerate(zip(test["user_id"].to_numpy(np.int64),
                                           test["post_id"].to_numpy(np.int64), strict=True)):
                u, i = int(u), int(i)
                user = catalog.user(u)
                seen = rated.setdefault(u, set())
                frozen = retrieval.user_vector(user, aligned)
                fresh = store.read(u)
                live = retrieval.user_vector(user, aligned, fresh.history)
                differs += int(len(fresh.history) > 0)
                hit_frozen.append(i in top(frozen, seen))
                hit_live.append(i in top(live, seen))
                users.append(u)
                await svc.ingest([EventIn(
                    event_id=f"ml-{n}", request_id="replay", user_id=u, item_id=i,
                    event="click", timestamp=datetime.fromtimestamp(time.time(), UTC))])
                seen.add(i)
                if n % 5000 == 4999:
                    say(f"  {n + 1:,} replayed: Recall@{k} frozen "
                        f"{np.mean(hit_frozen):.4f}, live {np.mean(hit_live):.4f}")
            log.close()

    try:
        asyncio.run(replay())
    finally:
        keys = list(store.redis.scan_iter(match=f"{prefix}:*", count=5000))
        for j in range(0, len(keys), 5000):
            store.redis.delete(*keys[j:j + 5000])
    hf, hl = np.asarray(hit_frozen, float), np.asarray(hit_live, float)
    lo, hi = cluster_bootstrap(hl - hf, np.asarray(users))
    out = {
        "dataset": "movielens-100k", "split": "time: last 20 % test, 10 % validation",
        "bundle": b.version, "k": k, "events": len(hf), "users": len(set(users)),
        "events_with_live_history": differs,
        "recall_at_10_frozen": round(float(hf.mean()), 4),
        "recall_at_10_live": round(float(hl.mean()), 4),
        "difference": round(float((hl - hf).mean()), 4),
        "difference_ci95_by_user": [round(lo, 4), round(hi, 4)],
        "seconds": round(time.time() - t0, 1),
    }
    say(f"Recall@{k}: frozen {out['recall_at_10_frozen']:.4f}, live "
        f"{out['recall_at_10_live']:.4f} (difference {out['difference']:+.4f}, 95 % "
        f"[{lo:+.4f}, {hi:+.4f}])")
    return out
