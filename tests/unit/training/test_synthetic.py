from __future__ import annotations

import numpy as np
import pandas as pd

from training.data.schema import HARM_LABELS
from training.data.synthetic import PROFILES, Profile, generate, generate_with_truth

SMALL = Profile("unit", n_users=200, n_posts=3000, impressions_per_user=30, mean_follows=5)


def test_same_seed_same_data_and_other_seed_differs() -> None:
    a, b, c = generate(SMALL, seed=3), generate(SMALL, seed=3), generate(SMALL, seed=4)
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    pd.testing.assert_frame_equal(a.posts, b.posts)
    assert not a.impressions["click"].equals(c.impressions["click"])


def test_position_bias_and_harm_rate() -> None:
    ds = generate(SMALL, seed=0)
    ctr = ds.impressions.groupby("position")["click"].mean()
    assert ctr[0] > 2 * ctr[9]
    harmful = ds.posts[[f"label_{h}" for h in HARM_LABELS]].any(axis=1).mean()
    assert 0.015 < harmful < 0.05


def test_no_post_shown_before_it_exists() -> None:
    ds = generate(SMALL, seed=0)
    m = ds.impressions.merge(ds.posts[["post_id", "created_at"]], on="post_id")
    assert (m["timestamp"] >= m["created_at"]).all()


def test_harmful_text_carries_a_harm_phrase_and_the_newest_posts_a_new_wording() -> None:
    from training.data.synthetic import HARM_PHRASES, HARM_PHRASES_LATE, LATE_FROM

    ds, truth = generate_with_truth(SMALL, seed=0)
    posts = ds.posts.assign(harmful=truth.harmful)
    old = {ph for v in HARM_PHRASES.values() for ph in v}
    new = {ph for v in HARM_PHRASES_LATE.values() for ph in v}
    tail = posts["text"].str.split(". ", n=1, regex=False).str[1]
    harmful = posts[posts["harmful"]]
    assert tail[posts["harmful"]].isin(old | new).all()
    day = (posts["created_at"] - posts["created_at"].min()).dt.total_seconds() / 86400
    late_wording = tail.isin(new)
    assert late_wording.any() and (day[late_wording] >= LATE_FROM * SMALL.days - 1).all()
    assert len(harmful) > 0


def test_labels_are_noisy_as_annotators_are() -> None:
    from training.data.synthetic import BENIGN_LOOKALIKES

    ds, truth = generate_with_truth(PROFILES["demo"], seed=0)
    labelled = ds.posts[[f"label_{h}" for h in HARM_LABELS]].any(axis=1).to_numpy()
    harmful = truth.harmful
    missed = (harmful & ~labelled).sum() / harmful.sum()
    false = (~harmful & labelled).sum() / (~harmful).sum()
    assert 0.05 < missed < 0.15 and 0.001 < false < 0.006
    lookalike = ds.posts["text"].str.split(". ", n=1, regex=False).str[1].isin(BENIGN_LOOKALIKES)
    assert lookalike.any() and not (lookalike.to_numpy() & harmful).any()


def test_the_text_does_not_change_the_engagement_tables() -> None:
    # the text and its labels come from a generator of their own
    ds = generate(SMALL, seed=0)
    assert ds.impressions["click"].sum() > 0
    assert len(ds.impressions) == SMALL.n_users * SMALL.impressions_per_user


def test_large_profile_has_the_documented_size() -> None:
    assert PROFILES["large"].n_users == 100_000
    assert PROFILES["large"].n_posts == 1_000_000
    assert np.isclose(PROFILES["tiny"].harm_rate, 0.03)


def test_hidden_truth_is_what_the_clicks_were_drawn_from() -> None:
    ds, truth = generate_with_truth(SMALL, seed=0)
    pd.testing.assert_frame_equal(ds.impressions, generate(SMALL, seed=0).impressions)
    imp = ds.impressions
    p = truth.click_probability(imp["user_id"].to_numpy() - 1, imp["post_id"].to_numpy() - 1,
                                imp["position"].to_numpy())
    # expected clicks vs drawn clicks: equal up to sampling noise, overall and per position
    se = np.sqrt((p * (1 - p)).sum())
    assert abs(p.sum() - imp["click"].sum()) < 4 * se
    top = imp["position"].to_numpy() == 0
    assert abs(p[top].sum() - imp["click"][top].sum()) < 4 * np.sqrt((p[top] * (1 - p[top])).sum())
    fol = ds.follows.to_numpy() - 1
    assert truth.follows(fol[:, 0], fol[:, 1]).all()
    assert not truth.follows(fol[:, 0], fol[:, 0]).any()  # nobody follows themselves


def test_an_extra_label_adds_its_own_posts_and_leaves_the_rest_as_they_were() -> None:
    import pytest

    from funnel.contracts.errors import DatasetError
    from training.data.synthetic import EXTRA_HARM_PHRASES

    base = generate(SMALL, seed=0)
    ds = generate(SMALL, seed=0, extra_labels=("self_harm",))
    assert ds.harm_labels == (*HARM_LABELS, "self_harm")
    on = ds.posts["label_self_harm"].to_numpy()
    assert 0.005 < on.mean() < 0.03
    six = [f"label_{h}" for h in HARM_LABELS]
    assert not ds.posts.loc[on, six].to_numpy().any()  # posts of its own
    phrases = EXTRA_HARM_PHRASES["self_harm"]
    assert all(any(p in t for p in phrases) for t in ds.posts.loc[on, "text"])
    pd.testing.assert_frame_equal(ds.posts.loc[~on].drop(columns="label_self_harm"),
                                  base.posts.loc[~on])
    pd.testing.assert_frame_equal(ds.impressions, base.impressions)
    with pytest.raises(DatasetError, match=r"extra label 'gore'.*known: \['self_harm'\]"):
        generate(SMALL, seed=0, extra_labels=("gore",))
