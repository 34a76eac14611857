"""The feature store's pure arithmetic: forward decay, trending merge, history merge."""

import numpy as np
import pytest

from serve.features.layout import Layout, merge_trending
from training.features import merged_history


def test_forward_decay_matches_direct_decay_and_is_order_free() -> None:
    lay = Layout(half_life_h=6.0)
    now = 1_700_000_000.0
    events = [(1.0, now - 3 * 3600), (2.0, now - 12 * 3600), (4.0, now - 60)]
    direct = sum(w * 0.5 ** ((now - t) / lay.half_life_s) for w, t in events)
    totals: dict[int, float] = {}
    for w, t in reversed(events):  # any order adds up to the same total
        epoch, inc = lay.forward(w, t)
        totals[epoch] = totals.get(epoch, 0.0) + inc
    got = sum(float(lay.to_now(v, e, now)) for e, v in totals.items())
    assert got == pytest.approx(direct, rel=1e-12)


def test_an_epoch_keeps_the_factor_within_a_double() -> None:
    lay = Layout(half_life_h=6.0, epoch_s=7 * 86_400)
    epoch, inc = lay.forward(1.0, lay.epoch_of(1e9) + lay.epoch_s - 1)
    assert epoch == lay.epoch_of(1e9) and inc < 2.0 ** 28
    cur, prev = lay.epochs_at(1e9)
    assert cur - prev == lay.epoch_s and cur <= 1e9 < cur + lay.epoch_s


def test_trending_adds_live_engagement_to_the_bundle_list() -> None:
    ids, scores = merge_trending(np.array([10, 11, 12]), np.array([5.0, 3.0, 1.0]),
                                 np.array([12, 99]), np.array([6.0, 2.0]), limit=3)
    assert ids.tolist() == [12, 10, 11]  # 1 + 6 beats 5
    assert scores.tolist() == [7.0, 5.0, 3.0]
    same, _ = merge_trending(np.array([1, 2]), np.array([2.0, 1.0]), np.zeros(0, np.int64),
                             np.zeros(0), limit=5)
    assert same.tolist() == [1, 2]


def test_history_appends_recent_clicks_newest_last_and_keeps_its_length() -> None:
    row = np.array([[0, 0, 7, 8, 9]])
    out = merged_history(row, np.array([8, 5]))
    assert out.tolist() == [[0, 7, 9, 8, 5]]  # 8 clicked again moves to the newest end
    full = merged_history(row, np.arange(100, 110))
    assert full.tolist() == [[105, 106, 107, 108, 109]]
    assert merged_history(row, np.zeros(0, np.int64)).tolist() == row.tolist()


def test_the_layout_follows_the_settings_and_the_bundle() -> None:
    from serve.config import FeatureStoreSettings

    f = FeatureStoreSettings(prefix="stage:f", seen_cap=64, event_ttl_s=7200)
    lay = Layout.from_settings(f, history=np.zeros((10, 20), np.int64), half_life_h=2.0)
    assert (lay.history_len, lay.seen_cap, lay.event_ttl_s, lay.half_life_s) == (20, 64, 7200,
                                                                                 7200.0)
    assert lay.seen(5) == "stage:f:u:5:s" and lay.event("x") == "stage:f:e:x"
    assert Layout.from_settings(f, history=np.zeros((0, 1)), half_life_h=6).history_len == 50


def test_a_url_that_is_not_redis_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.config import FeatureStoreSettings, parse_app_args
    from serve.errors import ServeConfigError

    with pytest.raises(ServeConfigError, match=r"args\.features\.url"):
        parse_app_args({"features": {"url": "http://cache:6379"}})
    monkeypatch.setenv("FUNNEL_FEATURES_REDIS_URL", "cache:6379")
    with pytest.raises(ServeConfigError, match="FUNNEL_FEATURES_REDIS_URL"):
        FeatureStoreSettings().resolved_url()
    monkeypatch.setenv("FUNNEL_FEATURES_REDIS_URL", "redis://cache:6379/0")
    assert FeatureStoreSettings(url="redis://other/1").resolved_url() == "redis://cache:6379/0"
