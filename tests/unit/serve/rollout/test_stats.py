import numpy as np
import pytest

from serve.rollout.stats import Tally, Window, psi


def test_tally_drains_plain_rows_and_window_merges_them():
    t = Tally()
    t.served("ranker", "canary", latency_ms=10.0, error=False, score=0.5)
    t.served("ranker", "canary", latency_ms=None, error=True)
    t.compared("ranker", "canary", overlaps={10: 0.8}, rbo=0.7, score_delta=0.1,
               latency_delta_ms=2.0)
    t.dropped("ranker", "canary")
    assert t.errors("ranker", "canary") == 1
    rows = t.drain()
    assert t.drain() == []
    w = Window()
    for r in rows:
        w.merge(r)
    s = w.summary()
    assert (s["requests"], s["errors"], s["error_rate"], s["dropped"]) == (2, 1, 0.5, 1)
    assert s["overlap_at_k"] == {10: pytest.approx(0.8)}
    assert s["rank_correlation"] == pytest.approx(0.7)
    assert s["p99_ms"] == pytest.approx(10.0)


def test_window_samples_are_bounded():
    w = Window(sample_size=100)
    w.merge({"requests": 1000, "latencies_ms": list(range(1000))})
    assert len(w.latencies_ms) == 100 and w.requests == 1000


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)
    assert psi(a, b) < 0.02
    assert psi(a, rng.normal(1.0, 1, 5000)) > 0.25
    assert psi(a, []) == 0.0
