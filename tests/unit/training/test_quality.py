"""The quality gate's verdicts from a manifest's metrics."""

from __future__ import annotations

from typing import Any

from training.quality import evaluate, failures


def metrics(ret: float, pop: float, ndcg: float, order: float, roc: float | None,
            tfidf: float | None) -> dict[str, Any]:
    return {"retrieval": {"recall_at_50": ret,
                          "baselines": {"popularity": {"recall_at_50": pop}}},
            "ranker": {"ndcg_at_10": ndcg,
                       "baselines": {"retrieval_order": {"ndcg_at_10": order}}},
            "moderation": {"roc_auc_macro": roc,
                           "baselines": {"tfidf_logreg": {"roc_auc_macro": tfidf}}}}


def test_every_model_beating_its_baseline_passes() -> None:
    g = evaluate(metrics(0.15, 0.11, 0.65, 0.62, 0.93, 0.90))
    assert g["passed"] is True
    assert {m: v["verdict"] for m, v in g["models"].items()} == {
        "retrieval": "beats", "ranker": "beats", "moderation": "beats"}
    assert g["models"]["ranker"]["baseline"] == "retrieval order"


def test_the_issues_demo_run_fails_on_retrieval_and_ranker() -> None:
    g = evaluate(metrics(0.0208, 0.0218, 0.6025, 0.6060, 0.95, 0.90))
    assert g["passed"] is False
    assert g["models"]["retrieval"]["verdict"] == "loses"
    assert g["models"]["ranker"]["verdict"] == "loses"
    assert failures({"quality_gate": g}) == [
        "retrieval recall@50 0.0208 does not beat popularity 0.0218",
        "ranker ndcg@10 0.6025 does not beat retrieval order 0.6060"]


def test_a_tie_is_not_a_win() -> None:
    assert evaluate(metrics(0.1, 0.1, 0.7, 0.6, None, None))["models"]["retrieval"][
        "verdict"] == "loses"


def test_no_harm_labels_means_moderation_is_not_measured_and_does_not_fail() -> None:
    g = evaluate(metrics(0.2, 0.1, 0.7, 0.6, None, None))
    assert g["models"]["moderation"]["verdict"] == "not measured"
    assert g["passed"] is True


def test_a_bundle_from_before_the_gate_is_judged_from_its_metrics() -> None:
    old = {"metrics": metrics(0.0208, 0.0218, 0.7, 0.6, None, None)}
    assert failures(old) == ["retrieval recall@50 0.0208 does not beat popularity 0.0218"]
    assert failures({}) == []


def test_moderation_on_a_handful_of_harmful_texts_is_insufficient_data() -> None:
    m = metrics(0.2, 0.1, 0.7, 0.6, 0.9563, 0.9584)
    m["moderation"]["per_label"] = {"spam": {"positives": 7}, "hate": {"positives": 5}}
    g = evaluate(m)
    assert g["models"]["moderation"]["verdict"] == "insufficient data"
    assert g["models"]["moderation"]["test_positives"] == 12
    assert g["passed"] is True
    m["moderation"]["per_label"]["spam"]["positives"] = 60
    assert evaluate(m)["models"]["moderation"]["verdict"] == "loses"
