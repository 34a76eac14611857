from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve.catalog import Catalog, decayed_engagement
from training.catalog import write_catalog
from training.data.synthetic import Profile, generate

SMALL = Profile("unit", n_users=30, n_posts=150, impressions_per_user=12, mean_follows=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, object]:
    ds = generate(SMALL, seed=5)
    ds.posts.loc[ds.posts.index[:10], "label_hate"] = True
    d: Path = tmp_path_factory.mktemp("cat")
    write_catalog(d, ds)
    return Catalog(d, list_size=50), ds


def test_decay_halves_per_half_life_and_ignores_future_events() -> None:
    s = decayed_engagement(np.array([1, 2, 3]), np.array([0.0, 3600.0, 9999.0]),
                           np.array([1.0, 1.0, 5.0]), now_s=7200.0, half_life_h=1.0)
    assert s.to_dict() == pytest.approx({2: 0.5, 1: 0.25})
    assert list(s.index) == [2, 1]


def test_blocked_posts_stay_out_of_every_source_list(built: tuple[Catalog, object]) -> None:
    cat, ds = built
    posts = ds.posts  # type: ignore[attr-defined]
    blocked = set(posts.loc[posts["label_hate"], "post_id"])
    assert not blocked & set(cat.trending[0]) and not blocked & set(cat.fresh[0])
    authors = posts["author_id"].unique()
    ids, _ = cat.recent_posts_by(authors)
    assert len(ids) and not blocked & set(ids)
    assert set(cat.items(np.array(sorted(blocked))).names("verdict")) == {"block"}


def test_fresh_is_newest_first_and_users_and_graph_round_trip(
        built: tuple[Catalog, object]) -> None:
    cat, ds = built
    created = cat.fresh[1]
    assert (np.diff(created) <= 0).all()
    follows = ds.follows  # type: ignore[attr-defined]
    u = int(follows["follower_id"].iloc[0])
    assert set(cat.followees(u)) == set(follows.loc[follows["follower_id"] == u, "followee_id"])
    assert cat.has_user(int(ds.users["user_id"].iloc[0]))  # type: ignore[attr-defined]
    assert not cat.has_user(10**12)
    unknown = cat.user(10**12)
    assert unknown.age_band == "unknown" and not unknown.known
    u0 = ds.users.iloc[0]  # type: ignore[attr-defined]
    row = cat.user(int(u0["user_id"]))
    assert row.known and (row.age_band, row.country, row.language) == (
        u0["age_band"], u0["country"], u0["language"])
    imp = ds.impressions  # type: ignore[attr-defined]
    seen_u = int(imp["user_id"].iloc[0])
    assert set(cat.seen(seen_u)) == set(imp.loc[imp["user_id"] == seen_u, "post_id"])
    assert len(cat.seen(10**12)) == 0


def test_items_keep_order_and_mark_unknown_ids(built: tuple[Catalog, object]) -> None:
    cat, ds = built
    ids = np.array([cat.post_ids[5], 10**12, cat.post_ids[1]])
    items = cat.items(ids)
    assert items.ids.tolist() == ids.tolist() and items.known.tolist() == [True, False, True]
    posts = ds.posts.set_index("post_id")  # type: ignore[attr-defined]
    for k in (0, 2):
        row = posts.loc[int(ids[k])]
        assert items.author_id[k] == row["author_id"]
        assert items.names("topic")[k] == row["topic"]
        assert items.names("language")[k] == row["language"]
        assert items.names("modality")[k] == row["modality"]
        assert items.created_at_s[k] == pytest.approx(row["created_at"].timestamp(), abs=1e-3)
    # nanoseconds exactly as pandas converts the seconds (the ranker's age feature)
    want = pd.to_datetime(items.created_at_s[[0, 2]], unit="s", utc=True).asi8
    assert items.created_ns[[0, 2]].tolist() == want.tolist()
    sub = items.take(np.array([2, 0]))
    assert sub.ids.tolist() == [ids[2], ids[0]] and sub.known.all()


def test_recent_posts_by_many_authors_equals_one_by_one(built: tuple[Catalog, object]) -> None:
    cat, ds = built
    authors = np.concatenate([ds.posts["author_id"].unique()[:7],  # type: ignore[attr-defined]
                              [10**12]])
    ids, _created = cat.recent_posts_by(authors)
    one_by_one = [cat.post_ids[cat._author_recent.get(int(a))] for a in authors]
    assert ids.tolist() == np.concatenate(one_by_one).tolist()
    assert len(cat.recent_posts_by(np.zeros(0, np.int64))[0]) == 0


def test_items_found_by_rows_equal_items_found_by_ids(built: tuple[Catalog, object]) -> None:
    cat, _ = built
    ids = np.concatenate([cat.post_ids[[7, 3, 99]], [10**12]])
    a, b = cat.items(ids), cat.items(ids, cat.rows_of(ids))
    assert cat.rows_of(ids)[-1] == -1
    for col in ("ids", "known", "author_id", "topic", "modality", "language", "verdict",
                "created_at_s", "created_ns"):
        assert np.array_equal(getattr(a, col)[a.known], getattr(b, col)[b.known]), col
    assert a.known.tolist() == b.known.tolist() == [True, True, True, False]
    # the catalog's own lists carry their rows
    assert (cat.post_ids[cat.trending_rows] == cat.trending[0]).all()
    assert (cat.post_ids[cat.fresh_rows] == cat.fresh[0]).all()
