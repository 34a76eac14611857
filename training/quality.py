"""The quality gate: does each trained model beat the baseline trained and judged beside it?

Every model is evaluated on the same held-out split as a simple same-run baseline:

| model | metric | baseline |
|---|---|---|
| retrieval (two-tower) | recall@50 | popularity (most-clicked items) |
| ranker | NDCG@10 | retrieval order (the two-tower's own score) |
| moderation (text head) | macro ROC-AUC | TF-IDF + logistic regression on the same texts |

A model that does not beat its baseline "loses"; the bundle's manifest records the verdicts
(`quality_gate`), `funnel train` prints them, and `funnel rollout apply` refuses a bundle
that failed unless the config says `allow_regression: true` (recorded as a decision).
A model with no metric (moderation on a dataset without harm labels) is "not measured",
and one judged on too few examples to tell (`MIN_MODERATION_POSITIVES` harmful texts in the
test split: the tiny profile has about a dozen) is "insufficient data"; neither fails the
gate. Pure: no torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["beats", "loses", "not measured", "insufficient data"]

# Below this many harmful texts in the test split (over all labels), two macro ROC-AUCs a few
# thousandths apart are noise: one text moves a label's AUC by 1/positives.
MIN_MODERATION_POSITIVES = 50


@dataclass(frozen=True)
class Gate:
    model: str
    metric: str                    # shown to people: "recall@50"
    value_path: tuple[str, ...]    # in manifest["metrics"]
    baseline: str
    baseline_path: tuple[str, ...]


GATES: tuple[Gate, ...] = (
    Gate("retrieval", "recall@50", ("retrieval", "recall_at_50"), "popularity",
         ("retrieval", "baselines", "popularity", "recall_at_50")),
    Gate("ranker", "ndcg@10", ("ranker", "ndcg_at_10"), "retrieval order",
         ("ranker", "baselines", "retrieval_order", "ndcg_at_10")),
    Gate("moderation", "macro ROC-AUC", ("moderation", "roc_auc_macro"), "tf-idf logreg",
         ("moderation", "baselines", "tfidf_logreg", "roc_auc_macro")),
)


def _get(metrics: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return None if node is None else float(node)


def moderation_positives(metrics: Mapping[str, Any]) -> int | None:
    labels = (metrics.get("moderation") or {}).get("per_label")
    if not isinstance(labels, Mapping):
        return None
    return sum(int(v.get("positives") or 0) for v in labels.values())


def evaluate(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's `quality_gate`: each model's verdict, and whether all pass."""
    models: dict[str, dict[str, Any]] = {}
    for g in GATES:
        value, base = _get(metrics, g.value_path), _get(metrics, g.baseline_path)
        verdict: Verdict = ("not measured" if value is None or base is None
                            else "beats" if value > base else "loses")
        entry: dict[str, Any] = {"metric": g.metric, "value": value, "baseline": g.baseline,
                                 "baseline_value": base}
        if g.model == "moderation" and verdict != "not measured":
            n = moderation_positives(metrics)
            entry["test_positives"] = n
            if n is not None and n < MIN_MODERATION_POSITIVES:
                verdict = "insufficient data"
        models[g.model] = {**entry, "verdict": verdict}
    return {"passed": all(m["verdict"] != "loses" for m in models.values()),
            "models": models}


def failures(manifest: Mapping[str, Any], models: Collection[str] | None = None) -> list[str]:
    """What a bundle's gate says is wrong, one phrase per losing model (of `models` only,
    when given); empty when it passed (or predates the gate: such a bundle is judged by its
    metrics, see `evaluate`)."""
    gate = manifest.get("quality_gate")
    if not isinstance(gate, Mapping):
        gate = evaluate(manifest.get("metrics") or {})
    return [f"{name} {m['metric']} {m['value']:.4f} does not beat {m['baseline']} "
            f"{m['baseline_value']:.4f}"
            for name, m in (gate.get("models") or {}).items()
            if m.get("verdict") == "loses" and (models is None or name in models)]
