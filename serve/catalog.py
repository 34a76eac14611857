"""Read side of the serving catalog (`training.catalog` writes it into the bundle).

Everything is held as sorted numpy arrays and CSR-style adjacency (`_Index`), so a lookup is
a binary search and a slice, and the catalog of the large profile (1M posts, millions of
impressions) loads in seconds and costs no Python object per row. `ItemInfo` objects are
built only for the few hundred candidates of a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serve.types import ItemInfo


@dataclass(frozen=True)
class _Index:
    """key -> values adjacency: `keys` sorted and unique, values of keys[i] at
    values[offsets[i]:offsets[i+1]]."""

    keys: np.ndarray
    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray) -> _Index:
        order = np.argsort(keys, kind="stable")
        k, v = np.asarray(keys)[order], np.asarray(values)[order]
        uniq, start = np.unique(k, return_index=True)
        return cls(uniq.astype(np.int64), np.append(start, len(k)).astype(np.int64), v)

    def get(self, key: int) -> np.ndarray:
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            return self.values[:0]
        return self.values[self.offsets[i]:self.offsets[i + 1]]


def decayed_engagement(post_ids: np.ndarray, timestamps_s: np.ndarray, weights: np.ndarray,
                       *, now_s: float, half_life_h: float) -> pd.Series:
    """Sum over events of weight * 0.5 ** (age / half-life), per post (events after `now_s`
    do not count). Returned sorted by score, highest first."""
    age_h = (now_s - timestamps_s) / 3600.0
    live = age_h >= 0
    score = weights[live] * np.power(0.5, age_h[live] / half_life_h)
    s = pd.Series(score).groupby(post_ids[live]).sum()
    return s.sort_values(ascending=False, kind="stable")


class Catalog:
    """Items, users, follow graph, engagement and per-user history for serving."""

    def __init__(self, directory: Path, *, trending_half_life_h: float = 6.0,
                 recent_per_author: int = 20, list_size: int = 2000) -> None:
        meta = json.loads((directory / "catalog.json").read_text())
        self.as_of_s = float(meta["as_of_s"])
        posts = pd.read_parquet(directory / "posts.parquet").sort_values("post_id")
        self.post_ids = posts["post_id"].to_numpy(np.int64)
        self._author = posts["author_id"].to_numpy(np.int64)
        self._topic = posts["topic"].to_numpy(object)
        self._modality = posts["modality"].to_numpy(object)
        self._language = posts["language"].to_numpy(object)
        self._created = posts["created_at_s"].to_numpy(np.float64)
        self._verdict = posts["verdict"].to_numpy(object)
        allowed = self._verdict == "allow"

        users = pd.read_parquet(directory / "users.parquet").sort_values("user_id")
        self.user_ids = users["user_id"].to_numpy(np.int64)
        self._users = users.reset_index(drop=True)

        follows = pd.read_parquet(directory / "follows.parquet")
        self._followees = _Index.build(follows["follower_id"].to_numpy(np.int64),
                                       follows["followee_id"].to_numpy(np.int64))
        # Each author's newest posts first, moderation-blocked ones left out up front.
        by_new = np.lexsort((-self._created, self._author))
        keep = by_new[allowed[by_new]]
        rank = pd.Series(self._author[keep]).groupby(self._author[keep]).cumcount().to_numpy()
        keep = keep[rank < recent_per_author]
        self._author_recent = _Index.build(self._author[keep], keep.astype(np.int64))

        seen = pd.read_parquet(directory / "seen.parquet")
        self._seen = _Index.build(seen["user_id"].to_numpy(np.int64),
                                  seen["post_id"].to_numpy(np.int64))
        rep = pd.read_parquet(directory / "reported.parquet")
        self._reported = _Index.build(rep["user_id"].to_numpy(np.int64),
                                      rep["author_id"].to_numpy(np.int64))

        eng = pd.read_parquet(directory / "engagement.parquet")
        trend = decayed_engagement(eng["post_id"].to_numpy(np.int64),
                                   eng["timestamp_s"].to_numpy(np.float64),
                                   eng["weight"].to_numpy(np.float64),
                                   now_s=self.as_of_s, half_life_h=trending_half_life_h)
        trend = trend[self._allowed(trend.index.to_numpy(np.int64))]
        self.trending = (trend.index.to_numpy(np.int64)[:list_size],
                         trend.to_numpy(np.float64)[:list_size])
        newest = np.argsort(-self._created, kind="stable")
        newest = newest[allowed[newest]][:list_size]
        self.fresh = (self.post_ids[newest], self._created[newest])

    # ---- users ---------------------------------------------------------------------------
    def has_user(self, user_id: int) -> bool:
        i = int(np.searchsorted(self.user_ids, user_id))
        return i < len(self.user_ids) and int(self.user_ids[i]) == user_id

    def user_frame(self, user_id: int) -> pd.DataFrame:
        """One-row frame (user_id, age_band, country, language); defaults if unknown."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i < len(self.user_ids) and int(self.user_ids[i]) == user_id:
            return self._users.iloc[[i]].reset_index(drop=True)
        return pd.DataFrame({"user_id": [user_id], "age_band": ["unknown"],
                             "country": ["unknown"], "language": ["unknown"]})

    def followees(self, user_id: int) -> np.ndarray:
        return self._followees.get(user_id)

    def seen(self, user_id: int) -> np.ndarray:
        return self._seen.get(user_id)

    def reported_authors(self, user_id: int) -> np.ndarray:
        return self._reported.get(user_id)

    # ---- items ---------------------------------------------------------------------------
    def _rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        idx = np.searchsorted(self.post_ids, ids).clip(0, max(len(self.post_ids) - 1, 0))
        found = self.post_ids[idx] == ids if len(self.post_ids) else np.zeros(len(ids), bool)
        return idx, found

    def _allowed(self, item_ids: np.ndarray) -> np.ndarray:
        idx, found = self._rows(item_ids)
        return found & (self._verdict[idx] == "allow")

    def recent_posts_by(self, authors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(post ids, created_at_s) of the newest allowed posts of `authors`."""
        rows = [self._author_recent.get(int(a)) for a in authors]
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return self.post_ids[r], self._created[r]

    def infos(self, item_ids: np.ndarray) -> dict[int, ItemInfo]:
        idx, found = self._rows(item_ids)
        return {int(self.post_ids[i]): ItemInfo(
            item_id=int(self.post_ids[i]), author_id=int(self._author[i]),
            topic=str(self._topic[i]), language=str(self._language[i]),
            created_at_s=float(self._created[i]), verdict=str(self._verdict[i]))
            for i in idx[found]}

    def item_frame(self, item_ids: np.ndarray) -> pd.DataFrame:
        """post_id, author_id, topic, modality, created_at for known ids, in the given order."""
        idx, found = self._rows(item_ids)
        i = idx[found]
        return pd.DataFrame({
            "post_id": self.post_ids[i], "author_id": self._author[i],
            "topic": self._topic[i], "modality": self._modality[i],
            "created_at": pd.to_datetime(self._created[i], unit="s", utc=True),
        })
