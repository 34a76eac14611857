"""Read side of the serving catalog (`training.catalog` writes it into the bundle).

Everything is held as sorted numpy arrays and CSR-style adjacency (`_Index`), so a lookup is
a binary search and a slice, and the catalog of the large profile (1M posts, millions of
impressions) loads in seconds and costs no Python object per row. Text columns are held as
int32 codes into a small table of names; a request's candidates come out as `Items`, one
array per column, built by fancy indexing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serve.types import Items, UserRow
from training.features import positions_in


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

    def get_many(self, keys: np.ndarray) -> np.ndarray:
        """The values of each key in turn, concatenated (unknown keys add nothing)."""
        if len(keys) == 0 or len(self.keys) == 0:
            return self.values[:0]
        i = np.searchsorted(self.keys, keys).clip(0, len(self.keys) - 1)
        i = i[self.keys[i] == keys]
        starts, ends = self.offsets[i], self.offsets[i + 1]
        lengths = ends - starts
        # one arange over every slice: position within its slice plus the slice's start
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths,
                                                           lengths)
        return self.values[np.repeat(starts, lengths) + within]


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
        self.categories: dict[str, np.ndarray] = {}
        self._codes: dict[str, np.ndarray] = {}
        for col in ("topic", "modality", "language", "verdict"):
            codes, names = pd.factorize(posts[col].astype(str), sort=True)
            self._codes[col] = codes.astype(np.int32)
            self.categories[col] = np.asarray(names, dtype=object)
        self._created = posts["created_at_s"].to_numpy(np.float64)
        # nanoseconds as pandas converts the seconds (the ranker's item-age feature was fitted
        # on pandas timestamps; converting once here keeps serving bit-identical to it)
        self._created_ns = pd.to_datetime(self._created, unit="s", utc=True).asi8
        allowed = self.categories["verdict"][self._codes["verdict"]] == "allow"
        self._allow_code = self._code("verdict", "allow")

        users = pd.read_parquet(directory / "users.parquet").sort_values("user_id")
        self.user_ids = users["user_id"].to_numpy(np.int64)
        self._user_cols = {c: users[c].astype(str).to_numpy(object)
                           for c in ("age_band", "country", "language")}

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
        self.trending_rows = self._rows(self.trending[0])[0]
        newest = np.argsort(-self._created, kind="stable")
        newest = newest[allowed[newest]][:list_size]
        self.fresh = (self.post_ids[newest], self._created[newest])
        self.fresh_rows = newest.astype(np.int64)

    def _code(self, column: str, name: str) -> int:
        """The code of `name` in a categorical column; -1 if no item has it."""
        hit = np.flatnonzero(self.categories[column] == name)
        return int(hit[0]) if len(hit) else -1

    # ---- users ---------------------------------------------------------------------------
    def has_user(self, user_id: int) -> bool:
        i = int(np.searchsorted(self.user_ids, user_id))
        return i < len(self.user_ids) and int(self.user_ids[i]) == user_id

    def user(self, user_id: int) -> UserRow:
        """The user's catalog row; defaults ("unknown") and `known` False if absent."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i < len(self.user_ids) and int(self.user_ids[i]) == user_id:
            c = self._user_cols
            return UserRow(user_id, True, str(c["age_band"][i]), str(c["country"][i]),
                           str(c["language"][i]), row=i)
        return UserRow(user_id, False)

    @property
    def user_columns(self) -> dict[str, np.ndarray]:
        """The users' `age_band`, `country` and `language` (str), in `user_ids` order."""
        return self._user_cols

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

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Each id's catalog row, -1 where the catalog lacks it."""
        return positions_in(self.post_ids, np.asarray(item_ids, dtype=np.int64))

    def row_map(self, sorted_keys: np.ndarray) -> np.ndarray:
        """For each catalog row, the position of its post id in `sorted_keys` (another
        table's sorted post ids), or -1: built once per table, so that a request finds its
        candidates in that table by indexing, not by another binary search."""
        return positions_in(np.asarray(sorted_keys), self.post_ids)

    @property
    def authors(self) -> np.ndarray:
        """Each catalog row's author id (int64, read-only use)."""
        return self._author

    def _allowed(self, item_ids: np.ndarray) -> np.ndarray:
        idx, found = self._rows(item_ids)
        return found & (self._codes["verdict"][idx] == self._allow_code)

    def allowed(self, item_ids: np.ndarray) -> np.ndarray:
        """Mask of the ids the catalog holds with moderation verdict `allow` (what a
        candidate list may propose)."""
        return self._allowed(item_ids)

    def authors_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Each item's author id, -1 where the catalog lacks the item."""
        idx, found = self._rows(item_ids)
        return np.where(found, self._author[idx] if len(self._author) else -1, -1)

    def recent_posts_by(self, authors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(post ids, created_at_s) of the newest allowed posts of `authors`, author by
        author in the given order."""
        r = self.recent_rows_by(authors)
        return self.post_ids[r], self._created[r]

    def recent_rows_by(self, authors: np.ndarray) -> np.ndarray:
        """The catalog rows of `recent_posts_by`."""
        return self._author_recent.get_many(np.asarray(authors, dtype=np.int64))

    def created_at_s(self, rows: np.ndarray) -> np.ndarray:
        return self._created[rows]

    def items(self, item_ids: np.ndarray, rows: np.ndarray | None = None) -> Items:
        """The catalog columns of `item_ids`, in the given order (`known` False where the
        catalog lacks an id). `rows`, when the caller has them (`Candidates.rows`: -1 for an
        id the catalog lacks), saves the binary search."""
        if rows is None:
            idx, found = self._rows(item_ids)
        else:
            found = rows >= 0
            idx = rows.clip(0)
        c = self._codes
        return Items(ids=np.asarray(item_ids, dtype=np.int64), known=found, rows=idx,
                     author_id=self._author[idx], topic=c["topic"][idx],
                     modality=c["modality"][idx], language=c["language"][idx],
                     verdict=c["verdict"][idx], created_at_s=self._created[idx],
                     created_ns=self._created_ns[idx], categories=self.categories)
