import random

from serve.rollout.router import Router


def table(budget=None, shadow_rate=0.0, revision=1):
    return {"revision": revision, "stages": {"ranker": {
        "salt": "s", "compare_sample_rate": 1.0, "overlap_ks": [10], "canary_budget": budget,
        "variants": [{"name": "control", "bundle_version": "v1", "weight": 50, "fault": None},
                     {"name": "canary", "bundle_version": "v2", "weight": 50,
                      "fault": {"error_rate": 0.2}}],
        "shadows": [{"name": "next", "bundle_version": "v3", "sample_rate": shadow_rate,
                     "fault": None}]}}}


def canary_user(r):
    return next(u for u in range(1000) if r.assign("ranker", u).variant == "canary")


def test_assignment_is_sticky_and_unknown_stages_are_none():
    r = Router(rng=random.Random(0))
    r.update(table())
    first = {u: r.assign("ranker", u).variant for u in range(200)}
    assert first == {u: r.assign("ranker", u).variant for u in range(200)}
    assert set(first.values()) == {"control", "canary"}
    assert r.assign("retrieval", 1) is None
    a = r.assign("ranker", canary_user(r))
    assert a.key == ("v2", (("error_rate", 0.2),)) and a.compare and not a.primary


def test_a_spent_budget_share_sends_canary_users_to_the_primary():
    r = Router(rng=random.Random(0))
    r.update(table(budget=2))
    u = canary_user(r)
    a1 = r.assign("ranker", u)
    r.begin(a1)
    r.end(a1, failed=True)
    a2 = r.assign("ranker", u)
    r.begin(a2)  # in flight: 1 failure + 1 in flight = the share
    assert r.assign("ranker", u).variant == "control"
    r.end(a2, failed=False)
    assert r.assign("ranker", u).variant == "canary"
    sent = r.unreported()
    a3 = r.assign("ranker", u)
    r.begin(a3)
    r.end(a3, failed=True)  # fails while the report is on its way
    r.reported(sent)  # the controller's table accounts for the first failure only
    r.update(table(budget=2, revision=2))
    assert r.unreported() == {"ranker": 1}
    assert r.assign("ranker", u).variant == "canary"  # 1 unreported < share 2
    r.update(table(budget=1, revision=3))
    assert r.assign("ranker", u).variant == "control"


def test_shadows_are_sampled_and_versions_listed():
    r = Router(rng=random.Random(0))
    r.update(table(shadow_rate=1.0))
    assert [s.variant for s in r.shadows("ranker")] == ["next"]
    r.update(table(shadow_rate=0.0))
    assert r.shadows("ranker") == []
    assert r.versions("ranker") == {("v1", None), ("v2", (("error_rate", 0.2),)), ("v3", None)}


def with_interleaving(rate):
    t = table()
    t["stages"]["ranker"]["interleaving"] = {"variant": "canary", "bundle_version": "v2",
                                             "sample_rate": rate}
    return t


def test_interleaving_samples_the_primarys_requests_by_request_id():
    r = Router(rng=random.Random(0))
    r.update(with_interleaving(0.3))
    control = r.assign("ranker", next(u for u in range(1000)
                                      if r.assign("ranker", u).variant == "control"))
    picked = [r.interleave("ranker", f"req-{i}", control) for i in range(2000)]
    share = sum(p is not None for p in picked) / len(picked)
    assert 0.26 < share < 0.34
    one = next(p for p in picked if p is not None)
    assert (one.variant, one.bundle_version, one.primary) == ("canary", "v2", False)
    assert one.key == ("v2", (("error_rate", 0.2),))  # the variant's fault comes along
    # the same request id is interleaved again (a replay serves the same page)
    again = [r.interleave("ranker", f"req-{i}", control) is not None for i in range(2000)]
    assert again == [p is not None for p in picked]
    # a canary's users see the canary alone; no table entry, no interleaving
    canary = r.assign("ranker", canary_user(r))
    assert all(r.interleave("ranker", f"req-{i}", canary) is None for i in range(200))
    assert r.interleave("ranker", "req-1", None) is None
    r.update(table())
    assert all(r.interleave("ranker", f"req-{i}", control) is None for i in range(200))
