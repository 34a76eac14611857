"""benchmarks/retrieval_headroom.py: the ceilings a retrieval model is judged against."""

from __future__ import annotations

from benchmarks.retrieval_headroom import TOPIC_WEIGHTS, headroom


def test_the_hidden_affinity_ceiling_is_above_popularity_on_tiny() -> None:
    r = headroom("tiny", 0)
    assert 0.0 < r["popularity"] < 1.0
    assert set(r["topic_popularity"]) == {str(a) for a in TOPIC_WEIGHTS}
    assert r["hidden_affinity"] > r["popularity"]
    assert r["test_pairs"] > 0 and r["posts"] == 2_500
