"""The serving catalog: the snapshot of items, users and the graph that serving needs.

The models alone cannot serve a feed: candidate sources need the follow graph (social), the
recent engagement (trending), creation times (fresh), and filters need who saw what, who
reported which author, and the moderation verdict of every item. `write_catalog` writes that
snapshot into the bundle as parquet, checksummed with the rest; `serve.catalog` reads it.

In a cluster these tables would come from an online store kept fresh by the event stream;
the bundle snapshot is what a local `funnel serve` and the benchmarks run on, and the shape
the online store has to provide.

Tables (all ids int64, times unix seconds as float64):
- `posts.parquet`: post_id, author_id, topic, modality, language, created_at_s, verdict
  (`block` when any harm label is set, else `allow`).
- `users.parquet`: user_id, age_band, country, language.
- `follows.parquet`: follower_id, followee_id.
- `engagement.parquet`: post_id, timestamp_s, weight — positive engagement events
  (click 1, like 2, comment 3, share 4), the input of the trending source.
- `seen.parquet`: user_id, post_id — every impression, for the already-seen filter.
- `reported.parquet`: user_id, author_id — authors a user reported, blocked for that user.
- `catalog.json`: as_of_s (the newest event, serving's clock for snapshot data) and counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.schema import Dataset, harm_labels_of

ENGAGEMENT_WEIGHTS: dict[str, float] = {"click": 1.0, "like": 2.0, "comment": 3.0,
                                        "share": 4.0}


def _seconds(ts: pd.Series) -> np.ndarray:
    """UTC timestamps -> unix seconds (float64), whatever the column's time unit."""
    return (pd.DatetimeIndex(ts) - pd.Timestamp(0, tz="UTC")).total_seconds().to_numpy(
        np.float64)


def write_catalog(directory: Path, ds: Dataset) -> list[Path]:
    """Write the serving catalog of `ds` under `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    posts = ds.posts
    labels = [f"label_{h}" for h in harm_labels_of(posts) if f"label_{h}" in posts.columns]
    harmful = posts[labels].any(axis=1).to_numpy() if labels else np.zeros(len(posts), bool)
    tables: dict[str, pd.DataFrame] = {
        "posts": pd.DataFrame({
            "post_id": posts["post_id"].to_numpy(np.int64),
            "author_id": posts["author_id"].to_numpy(np.int64),
            "topic": posts["topic"].astype(str).to_numpy(),
            "modality": posts["modality"].astype(str).to_numpy(),
            "language": posts["language"].astype(str).to_numpy(),
            "created_at_s": _seconds(posts["created_at"]),
            "verdict": np.where(harmful, "block", "allow"),
        }).sort_values("post_id"),
        "users": ds.users[["user_id", "age_band", "country", "language"]]
        .astype({"user_id": np.int64}).sort_values("user_id"),
        "follows": ds.follows[["follower_id", "followee_id"]].astype(np.int64),
    }
    imp = ds.impressions
    weight = np.zeros(len(imp), dtype=np.float64)
    for col, w in ENGAGEMENT_WEIGHTS.items():
        weight += imp[col].to_numpy(bool) * w
    engaged = weight > 0
    tables["engagement"] = pd.DataFrame({
        "post_id": imp["post_id"].to_numpy(np.int64)[engaged],
        "timestamp_s": _seconds(imp["timestamp"])[engaged],
        "weight": weight[engaged],
    })
    tables["seen"] = (imp[["user_id", "post_id"]].astype(np.int64).drop_duplicates()
                      .sort_values(["user_id", "post_id"]))
    rep = imp.loc[imp["report"].to_numpy(bool), ["user_id", "post_id"]]
    rep = rep.merge(posts[["post_id", "author_id"]], on="post_id", how="inner")
    tables["reported"] = (rep[["user_id", "author_id"]].astype(np.int64).drop_duplicates()
                          .sort_values(["user_id", "author_id"]))
    paths = []
    for name, df in tables.items():
        path = directory / f"{name}.parquet"
        df.reset_index(drop=True).to_parquet(path, index=False)
        paths.append(path)
    ts = _seconds(imp["timestamp"]) if len(imp) else np.zeros(1)
    created = tables["posts"]["created_at_s"].to_numpy()
    as_of = float(max(ts.max(), created.max() if len(created) else 0.0))
    meta = {"as_of_s": as_of, "rows": {k: len(v) for k, v in tables.items()},
            "engagement_weights": ENGAGEMENT_WEIGHTS}
    (directory / "catalog.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return [*paths, directory / "catalog.json"]
