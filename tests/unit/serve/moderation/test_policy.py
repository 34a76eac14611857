"""The moderation policy: thresholds -> decision, and refusal of bad policy files."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.errors import PolicyError
from serve.moderation.policy import dormant_labels, load_policy, more_severe, parse_policy

LABELS = ("abuse", "hate", "nudity")
DOC = {"version": "t1", "labels": {"abuse": {"review_at": 0.5, "block_at": 0.9},
                                   "hate": {"review_at": 0.2, "block_at": 0.8},
                                   "nudity": {"review_at": 0.2, "block_at": 0.8}}}
SHIPPED = Path(__file__).resolve().parents[4] / "serve" / "configs" / "moderation-policy.yaml"


def test_below_every_review_threshold_is_allow() -> None:
    v = parse_policy(DOC, labels=LABELS).decide({"abuse": 0.49, "hate": 0.1, "nudity": 0.0})
    assert v.decision == "allow" and v.reasons == ()


def test_review_and_block_thresholds_are_inclusive() -> None:
    p = parse_policy(DOC, labels=LABELS)
    assert p.decide({"abuse": 0.5}).decision == "review"
    assert p.decide({"hate": 0.8}).decision == "block"


def test_most_severe_label_decides_and_every_hit_is_a_reason() -> None:
    v = parse_policy(DOC, labels=LABELS).decide({"abuse": 0.6, "hate": 0.85, "nudity": 0.3})
    assert v.decision == "block"
    assert [r.split(":")[0] for r in v.reasons] == ["hate", "abuse", "nudity"]
    assert "block_at 0.8" in v.reasons[0]


def test_unscored_labels_are_skipped() -> None:
    # an image-only item has no text scores: only nudity decides
    assert parse_policy(DOC, labels=LABELS).decide({"nudity": 0.95}).decision == "block"


def test_a_label_no_serving_model_emits_is_kept_dormant() -> None:
    # thresholds for a label a canary head adds: kept after the scored ones, and they decide
    # only content that has a score for it
    doc = {**DOC, "labels": {"self_harm": {"review_at": 0.1, "block_at": 0.5},
                             **DOC["labels"]}}
    p = parse_policy(doc, labels=LABELS)
    assert p.labels == (*LABELS, "self_harm")
    assert dormant_labels(p, LABELS) == ["self_harm"]
    assert p.missing([*LABELS, "self_harm", "gore"]) == ["gore"]
    assert p.decide({"abuse": 0.1}).decision == "allow"
    assert p.decide({"abuse": 0.1, "self_harm": 0.2}).decision == "review"


def test_a_bad_label_name_is_refused_with_the_field_named() -> None:
    doc = {**DOC, "labels": {**DOC["labels"], "Self Harm": {"review_at": 0.1, "block_at": 0.5}}}
    with pytest.raises(PolicyError, match=r"labels\.Self Harm: not a label name"):
        parse_policy(doc, labels=LABELS)


def test_missing_label_is_refused() -> None:
    doc = {"version": "t1", "labels": {"abuse": {"review_at": 0.5, "block_at": 0.9}}}
    with pytest.raises(PolicyError,
                       match=r"labels\.hate: no thresholds for \['hate', 'nudity'\]"):
        parse_policy(doc, labels=LABELS)


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"review_at": 0.9, "block_at": 0.5}, "must not exceed block_at"),
    ({"review_at": -0.1, "block_at": 0.5}, "labels.abuse.review_at"),
    ({"review_at": 0.1, "block_at": 0.5, "warn_at": 0.2}, "labels.abuse.warn_at"),
])
def test_bad_thresholds_are_refused(thresholds: dict[str, float], message: str) -> None:
    doc = {"version": "t1", "labels": {**DOC["labels"], "abuse": thresholds}}
    with pytest.raises(PolicyError, match=message.replace(".", r"\.")):
        parse_policy(doc, labels=LABELS)


def test_load_policy_names_the_file_on_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(f, labels=LABELS)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml", labels=LABELS)


def test_shipped_policy_loads_and_is_stricter_on_severe_labels() -> None:
    from training.data.schema import HARM_LABELS

    p = load_policy(SHIPPED, labels=HARM_LABELS)
    assert p.version and set(p.labels) == set(HARM_LABELS)
    severe = max(p.thresholds[lb].review_at for lb in ("nudity", "violence", "hate"))
    mild = min(p.thresholds[lb].review_at for lb in ("abuse", "misinformation", "spam"))
    assert severe < mild


def test_more_severe() -> None:
    assert more_severe("allow", "review") == "review"
    assert more_severe("block", "review") == "block"
    assert more_severe("allow", "allow") == "allow"
