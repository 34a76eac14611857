from serve.rollout.assign import BUCKETS, assign, bucket, pick


def test_buckets_are_stable_and_salted():
    assert bucket("s", 42) == bucket("s", 42)
    assert 0 <= bucket("s", 42) < BUCKETS
    diff = sum(bucket("a", u) != bucket("b", u) for u in range(1000))
    assert diff > 990  # another salt reshuffles nearly everyone


def test_weights_are_honoured_over_many_users():
    names, weights = ["control", "canary"], [80.0, 20.0]
    got = [assign("exp", u, names, weights) for u in range(20_000)]
    share = got.count("canary") / len(got)
    # binomial sd at n=20000, p=0.2 is 0.0028: 4 sd
    assert abs(share - 0.20) < 0.012


def test_growing_a_canary_keeps_its_users():
    names = ["control", "canary"]
    small = {u for u in range(5000) if assign("x", u, names, [95, 5]) == "canary"}
    large = {u for u in range(5000) if assign("x", u, names, [75, 25]) == "canary"}
    assert small and small <= large


def test_pick_edges():
    assert pick(["p"], [100], 9999) == "p"
    assert pick(["p", "c"], [50, 50], 4999) == "c"
    assert pick(["p", "c"], [50, 50], 5000) == "p"
    assert pick(["p", "c"], [100, 0], 0) == "p"
