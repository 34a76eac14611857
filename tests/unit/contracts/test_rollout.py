import pytest

from funnel.contracts.errors import RolloutConfigError
from funnel.contracts.rollout import check_versions, parse_rollout


def stage(**over):
    base = {"variants": [{"name": "control", "bundle_version": "v1", "weight": 90},
                         {"name": "canary", "bundle_version": "v2", "weight": 10}]}
    return {**base, **over}


def refused(raw, *fields):
    with pytest.raises(RolloutConfigError) as e:
        parse_rollout(raw)
    named = [f["field"] for f in e.value.fields]
    for f in fields:
        assert any(n.startswith(f) for n in named), (f, named)
    return str(e.value)


def test_a_valid_config_parses_with_defaults():
    cfg = parse_rollout({"stages": {"ranker": stage(shadows=[
        {"name": "next", "bundle_version": "v3", "sample_rate": 0.5}])}})
    st = cfg.stages["ranker"]
    assert st.primary.name == "control"
    assert st.versions() == {"v1", "v2", "v3"}
    assert cfg.salt_of("ranker") == "funnel:ranker"


def test_weights_not_summing_to_100_are_refused_naming_the_stage():
    msg = refused({"stages": {"ranker": stage(variants=[
        {"name": "a", "bundle_version": "v1", "weight": 60},
        {"name": "b", "bundle_version": "v2", "weight": 30}])}}, "stages.ranker")
    assert "sum to 100, got 90" in msg


def test_an_unknown_stage_is_refused_naming_it():
    msg = refused({"stages": {"reranker": stage()}}, "stages.reranker")
    assert "retrieval" in msg and "ranker" in msg


def test_a_negative_sample_rate_is_refused_naming_the_field():
    refused({"stages": {"ranker": stage(shadows=[
        {"name": "s", "bundle_version": "v3", "sample_rate": -0.1}])}},
        "stages.ranker.shadows[0].sample_rate")


def test_a_guardrail_with_no_metric_is_refused_naming_the_field():
    refused({"stages": {"ranker": stage(guardrails=[{"max": 0.1}])}},
            "stages.ranker.guardrails[0].metric")


def test_a_guardrail_with_the_wrong_bound_is_refused():
    msg = refused({"stages": {"ranker": stage(guardrails=[
        {"metric": "overlap_at_k", "max": 0.5}])}}, "stages.ranker.guardrails[0]")
    assert "takes 'min'" in msg
    msg = refused({"stages": {"ranker": stage(guardrails=[
        {"metric": "error_rate", "max": 3}])}}, "stages.ranker.guardrails[0]")
    assert "[0, 1]" in msg


def test_unknown_keys_are_refused():
    refused({"stages": {"ranker": stage(weights=[1])}}, "stages.ranker.weights")
    refused({"stages": {}, "salt": "x", "extra": 1}, "extra")


def test_promotion_needs_two_variants_and_starts_at_the_canary_weight():
    steps = [{"weight": 10}, {"weight": 50}, {"weight": 100}]
    parse_rollout({"stages": {"ranker": stage(promotion={"steps": steps})}})
    assert "must equal steps[0].weight" in refused(
        {"stages": {"ranker": stage(promotion={"steps": steps[1:]})}}, "stages.ranker")
    assert "must increase" in refused(
        {"stages": {"ranker": stage(promotion={"steps": [{"weight": 10}, {"weight": 5}]})}},
        "stages.ranker.promotion")


def test_duplicate_names_are_refused():
    assert "repeated: ['canary']" in refused({"stages": {"ranker": stage(shadows=[
        {"name": "canary", "bundle_version": "v3", "sample_rate": 1}])}}, "stages.ranker")


def test_unknown_bundle_versions_are_named_with_what_exists():
    cfg = parse_rollout({"stages": {"retrieval": stage()}})
    with pytest.raises(RolloutConfigError) as e:
        check_versions(cfg, ["v1"])
    assert e.value.fields[0]["field"] == "stages.retrieval.variants[1].bundle_version"
    assert "'v2'" in str(e.value) and "['v1']" in str(e.value)
    check_versions(cfg, ["v1", "v2"])


def test_fault_injection_is_refused_unless_allowed():
    cfg = parse_rollout({"stages": {"ranker": stage(variants=[
        {"name": "control", "bundle_version": "v1", "weight": 50},
        {"name": "canary", "bundle_version": "v1", "weight": 50,
         "fault": {"error_rate": 0.2}}])}})
    with pytest.raises(RolloutConfigError, match="allow_fault_injection"):
        check_versions(cfg, ["v1"])
    check_versions(cfg, ["v1"], allow_faults=True)


def test_a_non_mapping_is_refused():
    with pytest.raises(RolloutConfigError, match="mapping"):
        parse_rollout(["stages"])


def test_interleaving_names_a_declared_variant_other_than_the_primary():
    cfg = parse_rollout({"stages": {"ranker": stage(
        interleaving={"variant": "canary", "sample_rate": 0.2})}})
    assert cfg.stages["ranker"].interleaving.sample_rate == 0.2
    msg = refused({"stages": {"ranker": stage(
        interleaving={"variant": "control", "sample_rate": 0.2})}}, "stages.ranker")
    assert "other than the primary" in msg and "['canary']" in msg
    refused({"stages": {"ranker": stage(interleaving={"variant": "nope", "sample_rate": 0.2})}},
            "stages.ranker")
    refused({"stages": {"ranker": stage(interleaving={"variant": "canary",
                                                      "sample_rate": 1.5})}},
            "stages.ranker.interleaving.sample_rate")


def test_interleaving_is_for_the_ranker_stage_only():
    with pytest.raises(RolloutConfigError) as e:
        parse_rollout({"stages": {"retrieval": stage(
            interleaving={"variant": "canary", "sample_rate": 0.2})}})
    assert [f["field"] for f in e.value.fields] == ["stages.retrieval.interleaving"]
    assert "only the ranker stage" in str(e.value)
