import pytest

from serve.rollout.agreement import overlap_at_k, rbo


def test_overlap_at_k():
    assert overlap_at_k([1, 2, 3, 4], [4, 3, 9, 8], 2) == 0.0
    assert overlap_at_k([1, 2, 3, 4], [4, 3, 2, 1], 4) == 1.0
    assert overlap_at_k([1, 2, 3, 4], [2, 9, 1, 7], 2) == pytest.approx(0.5)
    assert overlap_at_k([1, 2], [1, 2, 3], 10) == 1.0  # shorter than k
    assert overlap_at_k([], [], 5) == 1.0


def test_rbo_bounds_and_order_sensitivity():
    assert rbo([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert rbo([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0)
    top_swap = rbo([1, 2, 3, 4, 5], [2, 1, 3, 4, 5])
    bottom_swap = rbo([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])
    assert 0 < top_swap < bottom_swap < 1  # disagreement at the top costs more


def test_rbo_known_value():
    # depth-1 agreement 0, depth-2 agreement 1: (1-p)/p * (0*p + 1*p^2) + extrapolation
    p = 0.9
    expected = (1 - p) / p * (0 + 1.0 * p**2) + 1.0 * p**2
    assert rbo([1, 2], [2, 1], p) == pytest.approx(expected)


def test_rbo_uneven_lengths_stay_in_range():
    v = rbo([1, 2, 3], [1, 2, 3, 4, 5, 6])
    assert 0.9 < v <= 1.0
    with pytest.raises(ValueError):
        rbo([1], [1], p=1.0)
