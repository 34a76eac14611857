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
    assert {cat.infos(np.array(sorted(blocked)))[b].verdict for b in blocked} == {"block"}


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
    unknown = cat.user_frame(10**12)
    assert unknown["age_band"].iloc[0] == "unknown"
    imp = ds.impressions  # type: ignore[attr-defined]
    seen_u = int(imp["user_id"].iloc[0])
    assert set(cat.seen(seen_u)) == set(imp.loc[imp["user_id"] == seen_u, "post_id"])
    assert len(cat.seen(10**12)) == 0


def test_item_frame_keeps_order_and_drops_unknown(built: tuple[Catalog, object]) -> None:
    cat, _ = built
    ids = np.array([cat.post_ids[5], 10**12, cat.post_ids[1]])
    f = cat.item_frame(ids)
    assert f["post_id"].tolist() == [cat.post_ids[5], cat.post_ids[1]]
    assert isinstance(f["created_at"].dtype, pd.DatetimeTZDtype)
