"""The dataset fingerprint the registry records: the same data gives the same digest however
it is held; one changed value changes it."""

from __future__ import annotations

import dataclasses

from training.data.synthetic import Profile, generate
from training.pipeline import dataset_fingerprint

SMALL = Profile("unit", n_users=30, n_posts=80, impressions_per_user=5, mean_follows=2)


def test_fingerprint_follows_the_content() -> None:
    a, b = generate(SMALL, seed=1), generate(SMALL, seed=1)
    fp = dataset_fingerprint(a)
    assert len(fp) == 64 and fp == dataset_fingerprint(b)
    assert fp != dataset_fingerprint(generate(SMALL, seed=2))
    posts = a.posts.copy()
    posts.loc[posts.index[3], "topic"] = "something-else"
    assert dataset_fingerprint(dataclasses.replace(a, posts=posts)) != fp
