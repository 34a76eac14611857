"""The one feature module shared by training and serving.

`FeatureTransform.fit` learns vocabularies, id hashing, counters and text embeddings from the
training window; `save`/`load` round-trip it through JSON, parquet and safetensors in the
bundle; serving calls the same `item_features`, `user_features` and `ranker_inputs` so the
model sees identical inputs online and offline.

Counters and rates are computed point-in-time for training rows (only events strictly before
the row count, so no label leaks into its own features) and as final totals for serving.
Rates are smoothed towards the global rate with a Beta prior of `prior_strength` pseudo-
impressions, so a post with 1 impression and 1 click does not look like a 100 % CTR post.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from funnel.contracts.model_io import RANKER_DENSE
from training.data.schema import Dataset
from training.text import TextEncoder

CATEGORICALS: tuple[tuple[str, str], ...] = (
    ("users", "age_band"), ("users", "country"), ("users", "language"),
    ("posts", "topic"), ("posts", "modality"),
)
COUNTER_KEYS: tuple[str, ...] = ("post", "author", "user", "user_topic")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def check_dense_features(names: Sequence[str], *, where: str = "ranker dense features"
                         ) -> tuple[str, ...]:
    """`names` as a tuple, if each is a dense feature this code computes, once; else a
    ValueError naming the unknown ones (a bundle from newer code, or a typo in a config)."""
    out = tuple(names)
    unknown = [n for n in out if n not in RANKER_DENSE]
    if unknown or not out or len(set(out)) != len(out):
        raise ValueError(f"{where}: dense features {list(out)} must be distinct names from "
                         f"{list(RANKER_DENSE)}; unknown: {unknown}")
    return out


def hash_ids(ids: np.ndarray | Sequence[int], buckets: int, *, salt: int = 0) -> np.ndarray:
    """Stable multiplicative hash of int64 ids into [1, buckets); 0 is kept for padding."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (x + np.uint64(salt)) * _GOLDEN
    return (1 + (h >> np.uint64(17)) % np.uint64(buckets - 1)).astype(np.int64)


def cyclic_time(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """[hour_sin, hour_cos, dow_sin, dow_cos] for UTC timestamps."""
    t = pd.DatetimeIndex(ts)
    hour = (t.hour + t.minute / 60.0).to_numpy(dtype=np.float64)
    dow = t.dayofweek.to_numpy(dtype=np.float64)
    return np.stack([np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
                     np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)],
                    axis=1).astype(np.float32)


def unix_ns(seconds: float) -> int:
    """Unix seconds as integer nanoseconds, exactly as pandas converts them
    (`pd.Timestamp(seconds, unit="s").value`: whole seconds, plus the fraction rounded to 9
    places), without pandas on the serving path."""
    base = int(seconds)
    return base * 1_000_000_000 + int(round(seconds - base, 9) * 1e9)


def _topic_key(user_ids: np.ndarray, topic_idx: np.ndarray) -> np.ndarray:
    return np.asarray(user_ids, dtype=np.int64) * 1024 + np.asarray(topic_idx, dtype=np.int64)


@dataclass(frozen=True)
class Counts:
    """Impressions and clicks per counter key, aligned with some rows."""

    imps: dict[str, np.ndarray]
    clicks: dict[str, np.ndarray]


def point_in_time_counts(rows: pd.DataFrame) -> Counts:
    """Counters from events strictly before each row. `rows` needs user_id, post_id,
    author_id, topic_idx, timestamp, click; the result is aligned with `rows`' order."""
    order = np.argsort(rows["timestamp"].to_numpy(), kind="stable")
    r = rows.iloc[order]
    keys = {
        "post": r["post_id"].to_numpy(), "author": r["author_id"].to_numpy(),
        "user": r["user_id"].to_numpy(),
        "user_topic": _topic_key(r["user_id"].to_numpy(), r["topic_idx"].to_numpy()),
    }
    click = r["click"].to_numpy().astype(np.float64)
    imps, clicks = {}, {}
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    for name, k in keys.items():
        g = pd.Series(click).groupby(k)
        imps[name] = g.cumcount().to_numpy().astype(np.float64)[inv]
        clicks[name] = (g.cumsum().to_numpy() - click)[inv]
    return Counts(imps, clicks)


@dataclass(frozen=True, eq=False)
class CatalogAlignment:
    """A transform's per-post lookups laid out in a serving catalog's row order
    (`FeatureTransform.align`), so that serving indexes them by catalog row instead of a
    binary search over a million ids per table per request. -1: the table has no row."""

    text_row: np.ndarray  # int64 [catalog rows]: row of text_table
    post_counter: np.ndarray  # int64 [catalog rows]: row of counters["post"]
    author_counter: np.ndarray  # int64 [catalog rows]: row of counters["author"]


@dataclass(frozen=True, eq=False)
class UserAlignment:
    """A transform's user-tower inputs for each user of a serving catalog, in the catalog's
    user order (`FeatureTransform.align_users`): a request's user features are then one row
    of each array instead of hashing, vocabulary lookups and binary searches."""

    user_hash: np.ndarray  # int64 [users]
    age_band: np.ndarray  # int64 [users]: vocabulary index
    country: np.ndarray  # int64 [users]
    language: np.ndarray  # int64 [users]
    profile_row: np.ndarray  # int64 [users]: row of user_profile, -1: none
    history_row: np.ndarray  # int64 [users]: row of user_history, -1: none


def positions_in(sorted_keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each wanted key in sorted_keys (int64), -1 where absent."""
    if not len(sorted_keys):
        return np.full(len(wanted), -1, np.int64)
    pos = np.searchsorted(sorted_keys, wanted).clip(0, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == wanted, pos, -1).astype(np.int64)


def _gather(values: np.ndarray, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
    return np.where(rows >= 0, values[rows.clip(0)] if len(values) else fill, fill)


@dataclass
class FeatureTransform:
    """Fitted feature state: vocabularies, hash sizes, counter tables, text embeddings."""

    vocabs: dict[str, list[str]]
    id_buckets: int
    author_buckets: int
    global_ctr: float
    prior_strength: float
    counters: dict[str, pd.DataFrame]  # key -> DataFrame(key, imps, clicks)
    post_ids: np.ndarray  # int64, sorted
    # Text embeddings, deduplicated: posts share wording (reposts, templates), and a 1M-post
    # catalog would otherwise carry a 1.5 GB matrix. Post i's vector is text_table[idx[i]].
    post_text_idx: np.ndarray  # int32 [n_posts], aligned with post_ids
    text_table: np.ndarray  # float32 [n_distinct_texts, text_dim]
    user_profile_ids: np.ndarray  # int64, sorted
    user_profile: np.ndarray  # float32 [n_users, text_dim]: mean text of clicked posts
    text_model: str
    # The most recent clicked posts of each user in the fitted window, as item hashes
    # (0 = padding), newest last: the user tower's interaction-history input.
    user_history_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    user_history: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.int64))
    # The ranker's dense inputs, in order: a subset of RANKER_DENSE chosen at training time
    # and kept in the bundle (transform.json and the manifest), so that bundles with
    # different feature sets are served side by side.
    dense_features: tuple[str, ...] = RANKER_DENSE

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, ds: Dataset, train_mask: np.ndarray, encoder: TextEncoder, *,
            id_buckets: int = 50_021, author_buckets: int = 20_011,
            prior_strength: float = 20.0, history_len: int = 50,
            dense_features: Sequence[str] | None = None) -> FeatureTransform:
        vocabs = {f"{t}.{c}": sorted(map(str, ds.table(t)[c].unique())) for t, c in CATEGORICALS}
        posts = ds.posts.sort_values("post_id")
        text_idx, table = encode_texts(posts["text"], encoder)
        text = table[text_idx]
        train = ds.impressions[train_mask]
        merged = _with_post_cols(train, posts, vocabs)
        counters = {}
        keyed = {
            "post": merged["post_id"], "author": merged["author_id"], "user": merged["user_id"],
            "user_topic": pd.Series(_topic_key(merged["user_id"].to_numpy(),
                                               merged["topic_idx"].to_numpy())),
        }
        click = merged["click"].to_numpy().astype(np.float64)
        for name, k in keyed.items():
            agg = pd.DataFrame({"key": np.asarray(k), "click": click}).groupby("key")["click"]
            counters[name] = pd.DataFrame({"key": agg.size().index.to_numpy(np.int64),
                                           "imps": agg.size().to_numpy(np.float64),
                                           "clicks": agg.sum().to_numpy(np.float64)})
        pid = posts["post_id"].to_numpy()
        clicked = train[train["click"]]
        idx = np.searchsorted(pid, clicked["post_id"].to_numpy())
        prof = pd.DataFrame(text[idx]).groupby(clicked["user_id"].to_numpy()).mean()
        prof_v = prof.to_numpy(np.float32)
        prof_v /= np.linalg.norm(prof_v, axis=1, keepdims=True) + 1e-8
        hist_ids, hist = _histories(clicked, id_buckets, history_len)
        return cls(vocabs=vocabs, id_buckets=id_buckets, author_buckets=author_buckets,
                   dense_features=check_dense_features(dense_features or RANKER_DENSE),
                   global_ctr=float(click.mean()) if len(click) else 0.05,
                   prior_strength=prior_strength, counters=counters,
                   post_ids=pid.astype(np.int64), post_text_idx=text_idx, text_table=table,
                   user_profile_ids=prof.index.to_numpy(np.int64), user_profile=prof_v,
                   text_model=encoder.name, user_history_ids=hist_ids, user_history=hist)

    # ---- lookups -------------------------------------------------------------------------
    @cached_property
    def _vocab_maps(self) -> dict[str, dict[str, int]]:
        return {name: {v: i + 1 for i, v in enumerate(vocab)}
                for name, vocab in self.vocabs.items()}

    @cached_property
    def _counter_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(sorted keys, imps, clicks) per counter, as numpy arrays (serving reads these on
        every request; the DataFrames are for persistence)."""
        return {name: (t["key"].to_numpy(np.int64), t["imps"].to_numpy(np.float64),
                       t["clicks"].to_numpy(np.float64))
                for name, t in self.counters.items()}

    def align(self, post_ids: np.ndarray, author_ids: np.ndarray) -> CatalogAlignment:
        """This transform's text and counter rows for each post of a serving catalog
        (`post_ids` and their `author_ids`, in the catalog's row order). One pass over the
        catalog, at load time."""
        pos = positions_in(self.post_ids, np.asarray(post_ids, dtype=np.int64))
        text = np.where(pos >= 0, self.post_text_idx[pos.clip(0)] if len(pos) else 0, -1)
        return CatalogAlignment(
            text_row=text.astype(np.int64),
            post_counter=positions_in(self._counter_arrays["post"][0], post_ids),
            author_counter=positions_in(self._counter_arrays["author"][0], author_ids))

    def align_users(self, user_ids: np.ndarray, columns: Mapping[str, np.ndarray]
                    ) -> UserAlignment:
        """This transform's user-tower inputs for each catalog user (`user_ids` and their
        `age_band`, `country`, `language` columns, in the catalog's user order). One pass at
        load time; `user_features_at` then reads one row."""
        uid = np.asarray(user_ids, dtype=np.int64)
        return UserAlignment(
            user_hash=hash_ids(uid, self.id_buckets, salt=3),
            age_band=self.vocab_index("users.age_band", columns["age_band"]),
            country=self.vocab_index("users.country", columns["country"]),
            language=self.vocab_index("users.language", columns["language"]),
            profile_row=positions_in(self.user_profile_ids, uid),
            history_row=positions_in(self.user_history_ids, uid))

    def user_features_at(self, users: UserAlignment, row: int) -> dict[str, np.ndarray]:
        """`user_features` of the catalog user at `row` of `users` (from `align_users`):
        the same values, read from the aligned arrays."""
        r = slice(row, row + 1)
        return {
            "user_hash": users.user_hash[r],
            "age_band": users.age_band[r],
            "country": users.country[r],
            "language": users.language[r],
            "profile": _table_row(self.user_profile, int(users.profile_row[row])),
            "history": _table_row(self.user_history, int(users.history_row[row])),
        }

    def with_recent_clicks(self, arrays: Mapping[str, np.ndarray], post_ids: np.ndarray
                           ) -> dict[str, np.ndarray]:
        """User-tower inputs (one user) with clicks made after the bundle was fitted
        (`post_ids`, oldest first) appended to the `history` input, the newest
        `history_len` kept: what the online feature store serves."""
        if not len(post_ids):
            return dict(arrays)
        recent = hash_ids(np.asarray(post_ids, dtype=np.int64), self.id_buckets, salt=1)
        return {**arrays, "history": merged_history(arrays["history"], recent)}

    def vocab_index(self, name: str, values: Sequence[str] | np.ndarray) -> np.ndarray:
        """Index in the fitted vocabulary, 1-based; 0 for a value unseen at fit time."""
        vocab = self._vocab_maps[name]
        return np.asarray([vocab.get(str(v), 0) for v in values], dtype=np.int64)

    def vocab_size(self, name: str) -> int:
        return len(self.vocabs[name]) + 1

    @property
    def text_dim(self) -> int:
        return int(self.text_table.shape[1])

    @property
    def post_text(self) -> np.ndarray:
        """[n_posts, text_dim] text embeddings aligned with post_ids (materialised)."""
        return self.text_table[self.post_text_idx]

    def set_posts(self, post_ids: np.ndarray, texts: Sequence[str] | pd.Series,
                  encoder: TextEncoder) -> None:
        """Replace the post catalog (ids sorted ascending, texts aligned) and its text
        embeddings, e.g. to embed a new catalog with an existing bundle's towers."""
        self.post_ids = np.asarray(post_ids, dtype=np.int64)
        self.post_text_idx, self.text_table = encode_texts(texts, encoder)

    def text_of(self, post_ids: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.post_ids, post_ids).clip(0, len(self.post_ids) - 1)
        found = self.post_ids[idx] == post_ids
        out = np.zeros((len(post_ids), self.text_dim), dtype=np.float32)
        out[found] = self.text_table[self.post_text_idx[idx[found]]]
        return out

    def profile_of(self, user_ids: np.ndarray) -> np.ndarray:
        """[n, text_dim] mean text of each user's clicked posts; zeros if unknown."""
        return _rows_by_key(self.user_profile_ids, self.user_profile, user_ids)

    def history_of(self, user_ids: np.ndarray) -> np.ndarray:
        """[n, history_len] item hashes of each user's recent clicks; all 0 if unknown."""
        return _rows_by_key(self.user_history_ids, self.user_history, user_ids)

    def final_counts(self, user_ids: np.ndarray, post_ids: np.ndarray, author_ids: np.ndarray,
                     topic_idx: np.ndarray) -> Counts:
        """Counter totals from the fitted window, for serving (unknown keys count zero)."""
        keys = {"post": post_ids, "author": author_ids, "user": user_ids,
                "user_topic": _topic_key(user_ids, topic_idx)}
        imps, clicks = {}, {}
        for name, k in keys.items():
            tk, ti, tc = self._counter_arrays[name]
            idx = np.searchsorted(tk, k).clip(0, max(len(tk) - 1, 0))
            found = tk[idx] == k if len(tk) else np.zeros(len(k), bool)
            imps[name] = np.where(found, ti[idx] if len(tk) else 0, 0.0)
            clicks[name] = np.where(found, tc[idx] if len(tk) else 0, 0.0)
        return Counts(imps, clicks)

    # ---- model inputs --------------------------------------------------------------------
    def item_features(self, posts: pd.DataFrame) -> dict[str, np.ndarray]:
        """Item-tower inputs for posts (post_id, author_id, topic, modality)."""
        pid = posts["post_id"].to_numpy(np.int64)
        return {
            "item_hash": hash_ids(pid, self.id_buckets, salt=1),
            "author_hash": hash_ids(posts["author_id"].to_numpy(np.int64), self.author_buckets,
                                    salt=2),
            "topic": self.vocab_index("posts.topic", posts["topic"].to_numpy()),
            "modality": self.vocab_index("posts.modality", posts["modality"].to_numpy()),
            "text": self.text_of(pid),
        }

    def user_features(self, users: pd.DataFrame | Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """User-tower inputs for users (columns user_id, age_band, country, language: a
        frame, or a mapping of arrays such as `serve.types.UserRow.columns()`)."""
        uid = np.asarray(users["user_id"], dtype=np.int64)
        return {
            "user_hash": hash_ids(uid, self.id_buckets, salt=3),
            "age_band": self.vocab_index("users.age_band", np.asarray(users["age_band"])),
            "country": self.vocab_index("users.country", np.asarray(users["country"])),
            "language": self.vocab_index("users.language", np.asarray(users["language"])),
            "profile": self.profile_of(uid),
            "history": self.history_of(uid),
        }

    def ranker_inputs(self, rows: pd.DataFrame, counts: Counts,
                      retrieval_score: np.ndarray) -> dict[str, np.ndarray]:
        """Ranker inputs for (user, post, context) rows (training and evaluation). `rows` has
        user_id, post_id, author_id, topic, modality, age_band, country, created_at,
        timestamp, follows_author. Serving builds the same inputs with `serving_inputs`."""
        age_h = (pd.DatetimeIndex(rows["timestamp"]) - pd.DatetimeIndex(rows["created_at"])
                 ).total_seconds().to_numpy() / 3600.0
        uid = rows["user_id"].to_numpy(np.int64)
        return self._ranker_arrays(
            uid=uid, pid=rows["post_id"].to_numpy(np.int64), counts=counts,
            time_feats=cyclic_time(rows["timestamp"]), age_h=age_h,
            follows=rows["follows_author"].to_numpy(np.float32),
            retrieval_score=retrieval_score, profile=self.profile_of(uid),
            user_hash=hash_ids(uid, self.id_buckets, salt=3),
            topic=self.vocab_index("posts.topic", rows["topic"].to_numpy()),
            modality=self.vocab_index("posts.modality", rows["modality"].to_numpy()),
            age_band=self.vocab_index("users.age_band", rows["age_band"].to_numpy()))

    def serving_inputs(self, *, user_id: int, age_band: str, now_ns: int,
                       post_ids: np.ndarray, author_ids: np.ndarray, topic_idx: np.ndarray,
                       modality_idx: np.ndarray, created_ns: np.ndarray,
                       follows_author: np.ndarray, retrieval_score: np.ndarray,
                       catalog_rows: np.ndarray | None = None,
                       alignment: CatalogAlignment | None = None) -> dict[str, np.ndarray]:
        """Ranker inputs for one user's candidates at one instant: the same values
        `ranker_inputs` gives for the equivalent rows (tests/unit/training/test_features.py
        checks that), computed from arrays. `topic_idx`/`modality_idx` are this transform's
        vocabulary indexes (`vocab_index`); times are unix nanoseconds, as pandas holds
        them. With `alignment` (from `align`) and the posts' `catalog_rows`, per-post
        lookups index the aligned tables; the values are the same."""
        n = len(post_ids)
        uid = np.full(n, user_id, dtype=np.int64)
        pid = np.asarray(post_ids, dtype=np.int64)
        topic_idx = np.asarray(topic_idx, dtype=np.int64)
        text = None
        if alignment is not None and catalog_rows is not None:
            counts = self._user_counts(user_id, topic_idx,
                                       alignment.post_counter[catalog_rows],
                                       alignment.author_counter[catalog_rows])
            rows = alignment.text_row[catalog_rows]
            text = self.text_table[rows.clip(0)] if len(self.text_table) else \
                np.zeros((n, self.text_dim), dtype=np.float32)
            missing = rows < 0
            if missing.any():
                text[missing] = 0.0
        else:
            counts = self.final_counts(uid, pid, author_ids, topic_idx)
        age_h = ((now_ns - np.asarray(created_ns, dtype=np.int64)) / 1_000_000_000) / 3600.0
        one = np.asarray([user_id], dtype=np.int64)
        return self._ranker_arrays(
            uid=uid, pid=pid, counts=counts, text=text,
            time_feats=np.broadcast_to(self._time_row(now_ns), (n, 4)), age_h=age_h,
            follows=np.asarray(follows_author, dtype=np.float32),
            retrieval_score=retrieval_score,
            profile=np.repeat(self.profile_of(one), n, axis=0),
            user_hash=np.repeat(hash_ids(one, self.id_buckets, salt=3), n),
            topic=topic_idx, modality=np.asarray(modality_idx, dtype=np.int64),
            age_band=np.repeat(self.vocab_index("users.age_band", [age_band]), n))

    def _user_counts(self, user_id: int, topic_idx: np.ndarray, post_rows: np.ndarray,
                     author_rows: np.ndarray) -> Counts:
        """`final_counts` for one user's candidates, the post and author counters already
        located: the user's own counters are one key, and their (user, topic) keys sit in
        one block of the sorted table, searched on its own."""
        imps: dict[str, np.ndarray] = {}
        clicks: dict[str, np.ndarray] = {}
        n = len(topic_idx)
        for name, rows in (("post", post_rows), ("author", author_rows)):
            _, ti, tc = self._counter_arrays[name]
            imps[name], clicks[name] = _gather(ti, rows), _gather(tc, rows)
        tk, ti, tc = self._counter_arrays["user"]
        r = positions_in(tk, np.asarray([user_id], dtype=np.int64))
        imps["user"] = np.repeat(_gather(ti, r), n)
        clicks["user"] = np.repeat(_gather(tc, r), n)
        keys = _topic_key(np.full(n, user_id, dtype=np.int64), topic_idx)
        tk, ti, tc = self._counter_arrays["user_topic"]
        lo_key, hi_key = _topic_key(np.asarray([user_id, user_id + 1]), np.zeros(2, np.int64))
        if n and keys.min() >= lo_key and keys.max() < hi_key:
            lo, hi = np.searchsorted(tk, [lo_key, hi_key])
            r = positions_in(tk[lo:hi], keys)
            r = np.where(r >= 0, r + lo, -1)
        else:  # a topic index past the key's width: search the whole table
            r = positions_in(tk, keys)
        imps["user_topic"], clicks["user_topic"] = _gather(ti, r), _gather(tc, r)
        return Counts(imps, clicks)

    def _time_row(self, now_ns: int) -> np.ndarray:
        """cyclic_time of one instant; hour, minute and weekday change once a minute, so the
        row is kept per minute."""
        minute = now_ns // 60_000_000_000
        cache = self.__dict__.setdefault("_time_rows", {})
        row = cache.get(minute)
        if row is None:
            if len(cache) > 64:
                cache.clear()
            row = cache[minute] = cyclic_time(pd.DatetimeIndex(
                [pd.Timestamp(now_ns, unit="ns", tz="UTC")]))[0]
        return row

    def _ranker_arrays(self, *, uid: np.ndarray, pid: np.ndarray, counts: Counts,
                       text: np.ndarray | None = None, time_feats: np.ndarray,
                       age_h: np.ndarray, follows: np.ndarray,
                       retrieval_score: np.ndarray, profile: np.ndarray,
                       user_hash: np.ndarray, topic: np.ndarray, modality: np.ndarray,
                       age_band: np.ndarray) -> dict[str, np.ndarray]:
        """The one place the ranker's inputs are computed, for training and serving."""
        n = lambda name: self.prior_strength  # noqa: E731 - same prior for every counter
        rate = {k: (counts.clicks[k] + self.global_ctr * n(k)) / (counts.imps[k] + n(k))
                for k in COUNTER_KEYS}
        affinity = np.einsum("ij,ij->i", profile, self.text_of(pid) if text is None else text)
        every = np.column_stack([
            time_feats,
            np.log1p(np.clip(age_h, 0, None)),
            rate["post"], np.log1p(counts.imps["post"]), rate["author"], rate["user"],
            np.log1p(counts.clicks["user"]), rate["user_topic"],
            follows, retrieval_score, affinity,
        ]).astype(np.float32)  # one column per RANKER_DENSE name, in that order
        dense = (every if self.dense_features == RANKER_DENSE else np.ascontiguousarray(
            every[:, [RANKER_DENSE.index(f) for f in self.dense_features]]))
        return {
            "dense": dense,
            "user_hash": user_hash,
            "item_hash": hash_ids(pid, self.id_buckets, salt=1),
            "topic": topic,
            "modality": modality,
            "age_band": age_band,
        }

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"vocabs": self.vocabs, "id_buckets": self.id_buckets,
                "author_buckets": self.author_buckets, "global_ctr": self.global_ctr,
                "prior_strength": self.prior_strength, "text_model": self.text_model,
                "dense_features": list(self.dense_features),
                "counter_keys": list(COUNTER_KEYS)}
        paths = [directory / "transform.json", directory / "embeddings.safetensors"]
        paths[0].write_text(json.dumps(meta, indent=2, sort_keys=True))
        save_file({"post_ids": self.post_ids, "post_text_idx": self.post_text_idx,
                   "text_table": self.text_table,
                   "user_profile_ids": self.user_profile_ids,
                   "user_profile": self.user_profile,
                   "user_history_ids": self.user_history_ids,
                   "user_history": self.user_history}, str(paths[1]))
        for name, table in self.counters.items():
            path = directory / f"counters_{name}.parquet"
            table.to_parquet(path, index=False)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, directory: Path) -> FeatureTransform:
        meta = json.loads((directory / "transform.json").read_text())
        t = load_file(str(directory / "embeddings.safetensors"))
        counters = {k: pd.read_parquet(directory / f"counters_{k}.parquet")
                    .sort_values("key").reset_index(drop=True) for k in meta["counter_keys"]}
        return cls(vocabs=meta["vocabs"], id_buckets=meta["id_buckets"],
                   author_buckets=meta["author_buckets"], global_ctr=meta["global_ctr"],
                   dense_features=check_dense_features(
                       meta.get("dense_features", RANKER_DENSE), where=str(directory)),
                   prior_strength=meta["prior_strength"], counters=counters,
                   post_ids=t["post_ids"], post_text_idx=t["post_text_idx"],
                   text_table=t["text_table"],
                   user_profile_ids=t["user_profile_ids"], user_profile=t["user_profile"],
                   text_model=meta["text_model"], user_history_ids=t["user_history_ids"],
                   user_history=t["user_history"])


def _table_row(table: np.ndarray, row: int) -> np.ndarray:
    """[1, ...] copy of table[row]; a zero row for -1 (as `_rows_by_key` gives)."""
    if row < 0:
        return np.zeros((1, *table.shape[1:]), dtype=table.dtype)
    return table[row:row + 1].copy()


def _rows_by_key(keys: np.ndarray, table: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """table[i] for each wanted key == keys[i] (keys sorted); zero rows for unknown keys."""
    out = np.zeros((len(wanted), *table.shape[1:]), dtype=table.dtype)
    if len(keys) == 0:
        return out
    idx = np.searchsorted(keys, wanted).clip(0, len(keys) - 1)
    found = keys[idx] == wanted
    out[found] = table[idx[found]]
    return out


def encode_texts(texts: Sequence[str] | pd.Series, encoder: TextEncoder
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(index per text int32, table of distinct-text embeddings float32)."""
    uniq, inverse = np.unique(np.asarray(list(texts), dtype=object).astype(str),
                              return_inverse=True)
    table = np.asarray(encoder.encode(uniq.tolist()), dtype=np.float32)
    return inverse.astype(np.int32), table


def merged_history(bundle_row: np.ndarray, live_hashes: np.ndarray) -> np.ndarray:
    """The user tower's history input [1, L]: the bundle's row (item hashes, 0-padded on the
    left, newest last) followed by the live clicks (newest last), the newest L kept."""
    length = bundle_row.shape[-1]
    old = bundle_row.reshape(-1)
    old = old[old != 0]
    recent = live_hashes[-length:]
    if len(recent):
        # a post clicked again moves to the newest end instead of taking two slots
        old = old[~np.isin(old, recent)]
    both = np.concatenate([old, recent])[-length:]
    out = np.zeros((1, length), dtype=np.int64)
    if len(both):
        out[0, length - len(both):] = both
    return out


def _histories(clicked: pd.DataFrame, id_buckets: int, length: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the item hashes of the last `length` clicked posts (newest last, left-padded
    with 0), from click rows with user_id, post_id and timestamp."""
    c = clicked[["user_id", "post_id", "timestamp"]].sort_values(["user_id", "timestamp"],
                                                                  kind="stable")
    c = c[c.groupby("user_id").cumcount(ascending=False).to_numpy() < length]
    users = c["user_id"].to_numpy(np.int64)
    ids, start = np.unique(users, return_index=True)
    out = np.zeros((len(ids), length), dtype=np.int64)
    hashes = hash_ids(c["post_id"].to_numpy(np.int64), id_buckets, salt=1)
    ends = np.append(start[1:], len(users))
    for row, (s, e) in enumerate(zip(start, ends, strict=True)):
        out[row, length - (e - s):] = hashes[s:e]
    return ids, out


def _with_post_cols(impressions: pd.DataFrame, posts: pd.DataFrame,
                    vocabs: dict[str, list[str]]) -> pd.DataFrame:
    m = impressions.merge(posts[["post_id", "author_id", "topic"]], on="post_id", how="left")
    vocab = {v: i + 1 for i, v in enumerate(vocabs["posts.topic"])}
    m["topic_idx"] = m["topic"].map(vocab).fillna(0).astype(np.int64)
    return m


def join_rows(ds: Dataset, impressions: pd.DataFrame, ft: FeatureTransform) -> pd.DataFrame:
    """Impressions joined with post and user columns, plus `follows_author` and `topic_idx`."""
    m = _with_post_cols(impressions, ds.posts, ft.vocabs)
    m = m.merge(ds.posts[["post_id", "modality", "created_at"]], on="post_id", how="left")
    m = m.merge(ds.users[["user_id", "age_band", "country"]], on="user_id", how="left")
    fol = pd.MultiIndex.from_frame(ds.follows[["follower_id", "followee_id"]])
    m["follows_author"] = pd.MultiIndex.from_arrays(
        [m["user_id"].to_numpy(), m["author_id"].to_numpy()]).isin(fol)
    return m
