from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fakes import HashingTextEncoder
from training.data.synthetic import Profile, generate
from training.features import (
    FeatureTransform,
    cyclic_time,
    hash_ids,
    join_rows,
    point_in_time_counts,
)

SMALL = Profile("unit", n_users=40, n_posts=120, impressions_per_user=10, mean_follows=3)


def test_hash_is_stable_in_range_and_spreads() -> None:
    ids = np.arange(1, 10_001)
    h = hash_ids(ids, 101, salt=1)
    assert h.min() >= 1 and h.max() <= 100
    assert hash_ids(np.array([42]), 101, salt=1)[0] == hash_ids(np.array([42]), 101, salt=1)[0]
    assert len(np.unique(h)) == 100
    assert not np.array_equal(h, hash_ids(ids, 101, salt=2))


def test_cyclic_time_midnight_and_noon() -> None:
    ts = pd.Series(pd.to_datetime(["2026-01-05T00:00:00", "2026-01-05T12:00:00"], utc=True))
    enc = cyclic_time(ts)
    assert enc[0, :2] == pytest.approx([0.0, 1.0], abs=1e-6)
    assert enc[1, :2] == pytest.approx([0.0, -1.0], abs=1e-6)


def test_point_in_time_counts_see_only_the_past() -> None:
    rows = pd.DataFrame({
        "user_id": [1, 2, 3], "post_id": [7, 7, 7], "author_id": [9, 9, 9],
        "topic_idx": [1, 1, 1], "click": [True, False, True],
        "timestamp": pd.to_datetime(["2026-01-03", "2026-01-01", "2026-01-02"], utc=True),
    })
    c = point_in_time_counts(rows)
    # order by time: row1 (jan 1), row2 (jan 2), row0 (jan 3)
    assert c.imps["post"].tolist() == [2.0, 0.0, 1.0]
    assert c.clicks["post"].tolist() == [1.0, 0.0, 0.0]


def test_transform_round_trip_gives_identical_inputs(tmp_path: Path) -> None:
    ds = generate(SMALL, seed=2)
    mask = np.ones(len(ds.impressions), bool)
    ft = FeatureTransform.fit(ds, mask, HashingTextEncoder())
    ft.save(tmp_path / "features")
    loaded = FeatureTransform.load(tmp_path / "features")
    rows = join_rows(ds, ds.impressions.head(50), ft)
    args = (rows["user_id"].to_numpy(), rows["post_id"].to_numpy(),
            rows["author_id"].to_numpy(), rows["topic_idx"].to_numpy())
    a = ft.ranker_inputs(rows, ft.final_counts(*args), np.zeros(len(rows), np.float32))
    b = loaded.ranker_inputs(rows, loaded.final_counts(*args), np.zeros(len(rows), np.float32))
    for k in a:
        np.testing.assert_allclose(a[k], b[k])
    assert ft.vocab_index("posts.topic", ["no-such-topic"])[0] == 0


def test_history_keeps_the_newest_clicks_newest_last_and_pads_with_zero() -> None:
    ts = pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-02", "2026-01-04", "2026-01-01"],
                        utc=True)
    clicked = pd.DataFrame({"user_id": [5, 5, 5, 5, 8], "post_id": [10, 30, 20, 40, 99],
                            "timestamp": ts})
    from training.features import _histories

    ids, hist = _histories(clicked, 1009, length=3)
    assert ids.tolist() == [5, 8]
    assert hist[0].tolist() == hash_ids(np.array([20, 30, 40]), 1009, salt=1).tolist()
    assert hist[1].tolist() == [0, 0, int(hash_ids(np.array([99]), 1009, salt=1)[0])]


def test_history_round_trips_and_is_zero_for_unknown_users(tmp_path: Path) -> None:
    ds = generate(SMALL, seed=1)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder(),
                              history_len=7)
    users = ds.users.sort_values("user_id")
    feats = ft.user_features(users)
    assert feats["history"].shape == (len(users), 7)
    assert (feats["history"] != 0).any()
    ft.save(tmp_path)
    again = FeatureTransform.load(tmp_path).user_features(users)
    np.testing.assert_array_equal(again["history"], feats["history"])
    assert not ft.history_of(np.array([10**12])).any()


def test_a_dense_feature_subset_is_the_full_layout_s_columns_and_round_trips(
        tmp_path: Path) -> None:
    import json

    import pytest

    from funnel.contracts.model_io import RANKER_DENSE

    ds = generate(SMALL, seed=2)
    mask = np.ones(len(ds.impressions), bool)
    full = FeatureTransform.fit(ds, mask, HashingTextEncoder())
    subset = ["retrieval_score", "post_ctr", "follows_author"]
    part = FeatureTransform.fit(ds, mask, HashingTextEncoder(), dense_features=subset)
    rows = join_rows(ds, ds.impressions.head(40), full)
    args = (rows["user_id"].to_numpy(), rows["post_id"].to_numpy(),
            rows["author_id"].to_numpy(), rows["topic_idx"].to_numpy())
    score = np.linspace(0, 1, len(rows)).astype(np.float32)
    a = full.ranker_inputs(rows, full.final_counts(*args), score)["dense"]
    b = part.ranker_inputs(rows, part.final_counts(*args), score)["dense"]
    assert a.shape[1] == len(RANKER_DENSE) and b.shape == (len(rows), 3)
    np.testing.assert_array_equal(b, a[:, [RANKER_DENSE.index(f) for f in subset]])
    part.save(tmp_path / "f")
    assert json.loads((tmp_path / "f" / "transform.json").read_text())["dense_features"] == \
        subset
    assert FeatureTransform.load(tmp_path / "f").dense_features == tuple(subset)
    # a bundle naming a feature this code cannot compute is refused, named
    meta = json.loads((tmp_path / "f" / "transform.json").read_text())
    meta["dense_features"] = ["post_ctr", "seconds_since_last_visit"]
    (tmp_path / "f" / "transform.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="seconds_since_last_visit"):
        FeatureTransform.load(tmp_path / "f")


def test_unix_ns_converts_seconds_exactly_as_pandas() -> None:
    from training.features import unix_ns

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(1.5e9, 1.9e9, 3000), rng.uniform(0, 2e9, 200).round(3),
                         [0.0, 1.0, 1767225600.0, 1767225600.5, 1767225600.999999999]])
    for x in xs.tolist():
        assert unix_ns(x) == pd.Timestamp(x, unit="s", tz="UTC").value, x


def test_serving_inputs_equal_the_training_inputs_for_the_same_rows() -> None:
    """Serving builds one user's inputs from arrays; training from a joined frame. Same
    numbers, to the bit, or the ranker sees skewed features online."""
    from training.features import unix_ns

    ds = generate(SMALL, seed=4)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    users = ds.users.set_index("user_id")
    posts = ds.posts.sort_values("post_id").head(60)
    now_s = float(posts["created_at"].max().timestamp()) + 3 * 3600.25
    for uid in [*ds.users["user_id"].head(5).tolist(), 10 ** 12]:
        age_band = str(users["age_band"].get(uid, "unknown"))
        follows = posts["author_id"].to_numpy() % 3 == uid % 3
        score = np.linspace(-1, 1, len(posts)).astype(np.float32)
        rows = posts.assign(
            user_id=np.int64(uid), age_band=age_band, country="x",
            timestamp=pd.Timestamp(now_s, unit="s", tz="UTC"), follows_author=follows)
        topic_idx = ft.vocab_index("posts.topic", rows["topic"].to_numpy())
        counts = ft.final_counts(rows["user_id"].to_numpy(np.int64),
                                 rows["post_id"].to_numpy(), rows["author_id"].to_numpy(),
                                 topic_idx)
        want = ft.ranker_inputs(rows, counts, score)
        same = {"user_id": uid, "age_band": age_band, "now_ns": unix_ns(now_s),
                "post_ids": posts["post_id"].to_numpy(),
                "author_ids": posts["author_id"].to_numpy(), "topic_idx": topic_idx,
                "modality_idx": ft.vocab_index("posts.modality", posts["modality"].to_numpy()),
                "created_ns": pd.DatetimeIndex(posts["created_at"]).as_unit("ns").asi8,
                "follows_author": follows, "retrieval_score": score}
        got = ft.serving_inputs(**same)
        # the same through a catalog alignment, whose rows include posts the transform
        # never saw (no text, no counters) and whose order is not the transform's
        catalog_ids = np.concatenate([[10**9, 10**9 + 1], posts["post_id"].to_numpy()[::-1]])
        catalog_authors = np.concatenate([[1, 2], posts["author_id"].to_numpy()[::-1]])
        al = ft.align(catalog_ids, catalog_authors)
        cat_rows = np.searchsorted(-catalog_ids[2:], -posts["post_id"].to_numpy()) + 2
        aligned = ft.serving_inputs(**same, catalog_rows=cat_rows, alignment=al)
        assert (al.text_row[:2] == -1).all() and (al.post_counter[:2] == -1).all()
        for out in (got, aligned):
            assert sorted(out) == sorted(want)
            for k in want:
                assert out[k].dtype == want[k].dtype and out[k].shape == want[k].shape, k
                assert np.array_equal(out[k], want[k]), k


def test_user_features_at_an_aligned_row_equal_user_features() -> None:
    """Serving reads a catalog user's tower inputs from arrays aligned at load time; they
    must be the very values `user_features` computes, users with no profile or history and
    values outside the vocabularies included."""
    ds = generate(SMALL, seed=4)
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), HashingTextEncoder())
    users = ds.users.sort_values("user_id")
    ids = np.concatenate([users["user_id"].to_numpy(np.int64), [10 ** 12]])
    cols = {c: np.concatenate([users[c].astype(str).to_numpy(object), ["never-seen"]])
            for c in ("age_band", "country", "language")}
    aligned = ft.align_users(ids, cols)
    assert aligned.profile_row[-1] == -1 and aligned.history_row[-1] == -1
    assert (aligned.history_row >= 0).any() and (aligned.history_row < 0).any()
    for row in range(len(ids)):
        want = ft.user_features({"user_id": ids[row:row + 1],
                                 **{c: v[row:row + 1] for c, v in cols.items()}})
        got = ft.user_features_at(aligned, row)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert np.array_equal(got[k], want[k]), (row, k)
