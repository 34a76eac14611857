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
