import pytest

from funnel.contracts.rollout import parse_rollout
from serve.errors import RolloutConflict
from serve.rollout.state import RolloutState


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def config(guardrails=(), steps=None, auto_rollback=True, budget=10):
    steps = steps or [{"weight": 10, "min_requests": 50, "min_duration_s": 60},
                      {"weight": 50, "min_requests": 50, "min_duration_s": 60},
                      {"weight": 100}]
    return parse_rollout({"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": "v1", "weight": 90},
                     {"name": "canary", "bundle_version": "v2", "weight": 10}],
        "guardrails": list(guardrails),
        "promotion": {"steps": steps, "auto_rollback": auto_rollback,
                      "error_budget": budget}}}})


def rows(variant, n, *, errors=0, latency=10.0, overlap=None, score=0.5):
    r = {"stage": "ranker", "variant": variant, "requests": n, "errors": errors,
         "latencies_ms": [latency] * n, "scores": [score] * n}
    if overlap is not None:
        r.update(comparisons=n, overlap_sum={"10": overlap * n}, rbo_sum=overlap * n)
    return r


def state(cfg, clock):
    s = RolloutState(clock=clock)
    s.apply(cfg)
    return s


def test_promotes_step_by_step_when_minimums_are_met_and_guardrails_hold():
    clock = Clock()
    s = state(config([{"metric": "error_rate", "max": 0.05, "min_samples": 20}]), clock)
    rev = s.revision
    s.report("r1", [rows("control", 100), rows("canary", 60)])
    assert s.evaluate() == []  # 0 of 60 s at this step
    assert "s at this step" in s.stages["ranker"].waiting
    clock.t += 61
    [d] = s.evaluate()
    assert d.action == "promote" and s.stages["ranker"].weights == [50.0, 50.0]
    assert s.revision > rev
    s.report("r1", [rows("control", 100), rows("canary", 60)])
    clock.t += 61
    s.evaluate()
    assert s.stages["ranker"].weights == [0.0, 100.0]
    assert s.evaluate() == []  # the guardrail wants 20 canary requests at this step too
    s.report("r1", [rows("canary", 20)])
    [d] = s.evaluate()  # the last step has no other minimums
    assert d.action == "complete" and s.stages["ranker"].status == "complete"


def test_a_broken_guardrail_rolls_back_with_its_reason():
    clock = Clock()
    s = state(config([{"metric": "overlap_at_k", "k": 10, "min": 0.6, "min_samples": 20}]),
              clock)
    s.report("r1", [rows("control", 100), rows("canary", 30, overlap=0.2)])
    [d] = s.evaluate()
    assert d.action == "rollback" and "overlap_at_k@10 0.2 breaks min 0.6" in d.reason
    st = s.stages["ranker"]
    assert st.status == "rolled_back" and st.weights == [100.0, 0.0]
    assert s.routing()["stages"]["ranker"]["variants"][1]["weight"] == 0.0
    assert s.evaluate() == []  # rolled back stays rolled back


def test_guardrails_wait_for_enough_samples_and_hold_promotion_meanwhile():
    clock = Clock()
    s = state(config([{"metric": "overlap_at_k", "min": 0.6, "min_samples": 100}]), clock)
    s.report("r1", [rows("control", 100), rows("canary", 60, overlap=0.1)])
    clock.t += 100
    assert s.evaluate() == []  # 60 < 100 comparisons: neither breach nor promotion
    assert "60/100 comparisons" in s.stages["ranker"].waiting
    assert s.stages["ranker"].weights == [90.0, 10.0]


def test_the_error_budget_rolls_back_before_any_rate_is_known():
    clock = Clock()
    s = state(config(budget=5), clock)
    s.report("r1", [rows("canary", 8, errors=5)])
    [d] = s.evaluate()
    assert d.action == "rollback" and "error budget spent: 5 failures" in d.reason


def test_without_auto_rollback_a_breach_holds():
    clock = Clock()
    s = state(config([{"metric": "error_rate", "max": 0.01, "min_samples": 10}],
                     auto_rollback=False, budget=1000), clock)
    s.report("r1", [rows("control", 50), rows("canary", 50, errors=10)])
    [d] = s.evaluate()
    assert d.action == "hold" and s.stages["ranker"].status == "held"
    assert s.stages["ranker"].weights == [90.0, 10.0]


def test_latency_ratio_and_drift_guardrails():
    clock = Clock()
    s = state(config([{"metric": "p99_latency_ratio", "max": 1.5, "min_samples": 10}]), clock)
    s.report("r1", [rows("control", 50, latency=10), rows("canary", 50, latency=20)])
    [d] = s.evaluate()
    assert "p99_latency_ratio 2 breaks max 1.5" in d.reason
    s = state(config([{"metric": "drift_score", "max": 0.25, "min_samples": 10}]), clock)
    s.report("r1", [{**rows("control", 50), "scores": [i / 50 for i in range(50)]},
                    {**rows("canary", 50), "scores": [0.99] * 50}])
    [d] = s.evaluate()
    assert d.action == "rollback" and "drift_score" in d.reason


def test_budget_share_splits_the_remaining_budget_across_active_replicas():
    clock = Clock()
    s = state(config(budget=10), clock)
    s.report("r1", [rows("canary", 4, errors=2)])
    s.report("r2", [])
    assert s.routing()["stages"]["ranker"]["canary_budget"] == 4  # (10 - 2) // 2
    clock.t += 30  # both replicas silent: counted as one
    assert s.routing()["stages"]["ranker"]["canary_budget"] == 8


def test_manual_commands_and_their_conflicts():
    clock = Clock()
    s = state(config(), clock)
    d = s.promote("ranker")
    assert d.action == "manual_promote" and s.stages["ranker"].weights == [50.0, 50.0]
    s.rollback("ranker")
    with pytest.raises(RolloutConflict, match="already rolled back"):
        s.rollback("ranker")
    with pytest.raises(RolloutConflict, match="rolled_back"):
        s.promote("ranker")
    with pytest.raises(RolloutConflict, match="no rollout"):
        s.promote("retrieval")
    counts = {(c["stage"], c["action"]): c["count"] for c in s.status()["decision_counts"]}
    assert counts[("ranker", "manual_rollback")] == 1


def test_status_lists_windows_guardrails_and_decisions():
    clock = Clock()
    s = state(config([{"metric": "error_rate", "max": 0.5, "min_samples": 1}]), clock)
    s.report("r1", [rows("canary", 3, errors=1)])
    st = s.status()["stages"]["ranker"]
    assert st["variants"]["canary"]["window"]["requests"] == 3
    [g] = st["variants"]["canary"]["guardrails"]
    assert g["value"] == pytest.approx(1 / 3) and g["holds"] is True
    assert s.status()["decisions"][0]["action"] == "apply"


def test_interleaving_is_routed_until_the_candidate_is_rolled_back():
    cfg = parse_rollout({"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": "v1", "weight": 90},
                     {"name": "canary", "bundle_version": "v2", "weight": 10}],
        "interleaving": {"variant": "canary", "sample_rate": 0.25},
        "promotion": {"steps": [{"weight": 10}, {"weight": 100}]}}}})
    s = state(cfg, Clock())
    want = {"variant": "canary", "bundle_version": "v2", "sample_rate": 0.25}
    assert s.routing()["stages"]["ranker"]["interleaving"] == want
    assert s.status()["stages"]["ranker"]["interleaving"] == want
    s.rollback("ranker")
    assert s.routing()["stages"]["ranker"]["interleaving"] is None


def test_the_shadow_scorer_reports_without_taking_a_share_of_the_budget() -> None:
    s = RolloutState(clock=lambda: 100.0)
    s.report("r1", [])
    s.report("scorer", [{"stage": "ranker", "variant": "x", "comparisons": 3}], False)
    assert s.active_replicas() == 1
    s.report("r2", [])
    assert s.active_replicas() == 2


def test_allow_regression_is_kept_as_a_decision_of_each_stage() -> None:
    s = RolloutState(clock=lambda: 100.0)
    cfg = parse_rollout({"allow_regression": True, "stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": "v1", "weight": 90},
        {"name": "candidate", "bundle_version": "v2", "weight": 10}]}}})
    s.apply(cfg, source="api")
    actions = [(d.stage, d.action) for d in s.decisions]
    assert actions == [("ranker", "apply"), ("ranker", "allow_regression")]
    plain = parse_rollout({"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": "v1", "weight": 100}]}}})
    s.apply(plain, source="api")
    assert [d.action for d in s.decisions][-1] == "apply"


def test_a_canary_that_costs_more_per_request_breaks_the_cost_ratio():
    clock = Clock()
    g = [{"metric": "cost_ratio", "max": 1.3, "min_samples": 20}]
    s = state(config(g), clock)
    # 10 core-ms per primary request, 18 per canary request
    s.report("r1", [{**rows("control", 50), "cost_requests": 50, "cost_core_s": 0.5},
                    {**rows("canary", 10), "cost_requests": 10, "cost_core_s": 0.18}])
    assert s.evaluate() == []  # 10 of 20 costed requests
    assert "10/20 costed requests" in s.stages["ranker"].waiting
    st = s.status()["stages"]["ranker"]["variants"]
    assert st["control"]["window"]["core_ms_per_request"] == pytest.approx(10.0)
    # $0.031611 per core-hour: 10 core-s per thousand requests
    assert st["control"]["usd_per_1k"] == pytest.approx(10 / 3600 * 0.031611)
    assert st["canary"]["usd_per_1k"] > st["control"]["usd_per_1k"]
    assert s.status()["stages"]["ranker"]["variants"]["control"]["totals"][
        "cost_core_s"] == pytest.approx(0.5)
    s.report("r1", [{**rows("canary", 10), "cost_requests": 10, "cost_core_s": 0.18}])
    [d] = s.evaluate()
    assert d.action == "rollback" and "cost_ratio 1.8 breaks max 1.3" in d.reason
    s = state(config(g), clock)  # one that costs the same promotes
    s.report("r1", [{**rows("control", 50), "cost_requests": 50, "cost_core_s": 0.5},
                    {**rows("canary", 60), "cost_requests": 60, "cost_core_s": 0.63}])
    clock.t += 61
    [d] = s.evaluate()
    assert d.action == "promote"
