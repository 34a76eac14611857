"""Policy thresholds from measurement: `funnel moderation thresholds`.

Reads a bundle's held-out scores (`moderation/heldout.parquet`: per label the hard label and
the served model's score, on the validation and test splits; no text) and proposes each
label's `review_at` and `block_at`:

- `review_at`, severe labels: the highest threshold whose recall on validation reaches the
  target (default 0.90): a person sees at least that share of the harmful items, and no more
  items than it takes. Other labels keep the base policy's `review_at`.
- `block_at`, every label: the lowest threshold whose precision on validation reaches the
  target (default 0.90): content is removed without a person only where the model is right
  that often. A label whose precision never reaches it gets `block_at: 1.0` (never
  auto-blocked), said in the comment. The precision must hold over at least 20 flagged
  validation items: a precision measured on a handful is no evidence for removing content.

Thresholds are chosen on validation and then measured on the test split, which they never
saw: the recall there, with its 95 % Wilson interval (the split's sampling error: a few
hundred positives give about ±3 points), is what the policy can be expected to deliver.
`review_at` is capped at `block_at` (an item above both is blocked, so still caught).

Labels the bundle does not score (nudity for a text model) keep the base policy's thresholds.
Pure logic (numpy, pandas): the command line is in serve/moderation/cli.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from serve.moderation.policy import ModerationPolicy

SEVERE_LABELS: tuple[str, ...] = ("hate", "nudity", "violence", "self_harm")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


@dataclass(frozen=True)
class AtThreshold:
    threshold: float
    precision: float
    recall: float
    flagged: int
    true_positives: int
    positives: int

    @property
    def recall_ci(self) -> tuple[float, float]:
        return wilson(self.true_positives, self.positives)

    @property
    def precision_ci(self) -> tuple[float, float]:
        return wilson(self.true_positives, self.flagged)


def measure(labels: np.ndarray, scores: np.ndarray, threshold: float) -> AtThreshold:
    y = np.asarray(labels).astype(bool)
    flag = np.asarray(scores) >= threshold
    tp = int((flag & y).sum())
    return AtThreshold(threshold=float(threshold), precision=tp / max(int(flag.sum()), 1),
                       recall=tp / max(int(y.sum()), 1), flagged=int(flag.sum()),
                       true_positives=tp, positives=int(y.sum()))


def recall_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold t with recall(score >= t) >= target."""
    pos = np.sort(np.asarray(scores)[np.asarray(labels).astype(bool)])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive examples to measure recall on")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[k - 1])


MIN_BLOCK_SUPPORT = 20


def precision_threshold(labels: np.ndarray, scores: np.ndarray, target: float, *,
                        min_flagged: int = MIN_BLOCK_SUPPORT) -> float | None:
    """The lowest threshold t with precision(score >= t) >= target over at least
    `min_flagged` flagged items (a precision measured on a handful is no evidence for
    removing content unseen), or None if none has."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    flagged = np.arange(1, len(s) + 1)
    # a cut is only valid at the last of equal scores (a threshold flags all ties)
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    ok = (tp / flagged >= target) & last_of_tie & (flagged >= min_flagged)
    if not ok.any():
        return None
    return float(s_sorted[np.flatnonzero(ok)[-1]])


@dataclass(frozen=True)
class LabelProposal:
    label: str
    review_at: float
    block_at: float
    review_rule: str  # "recall" | "base" | "capped" (base review_at above block_at)
    block_reached: bool
    review_val: AtThreshold
    review_test: AtThreshold
    block_val: AtThreshold
    block_test: AtThreshold

    def recall_within_error(self, target: float) -> bool:
        """The test recall at review_at is the target, within the split's sampling error
        (the target lies in, or below, its 95 % interval)."""
        return self.review_test.recall_ci[1] >= target if self.review_test.positives else False


@dataclass(frozen=True)
class Proposal:
    labels: tuple[LabelProposal, ...]
    kept: Mapping[str, tuple[float, float]]  # labels the bundle does not score
    target_recall: float
    target_precision: float
    bundle_version: str
    version: str

    def to_yaml(self) -> str:
        def pct(x: float) -> str:
            return f"{100 * x:.1f}%"

        lines = [
            "# Moderation policy proposed by `funnel moderation thresholds` from measured "
            "scores.",
            f"# Bundle {self.bundle_version}: thresholds chosen on its validation split, "
            "measured on its test split.",
            f"# review_at (severe labels): highest threshold with validation recall >= "
            f"{self.target_recall:g};",
            f"# block_at: lowest threshold with validation precision >= "
            f"{self.target_precision:g}. Intervals: 95% Wilson.",
            f'version: "{self.version}"',
            "labels:",
        ]
        for p in self.labels:
            rt, bt = p.review_test, p.block_test
            lo, hi = rt.recall_ci
            review_note = {
                "recall": f"recall val {pct(p.review_val.recall)}, test {pct(rt.recall)} "
                          f"[{pct(lo)}, {pct(hi)}] of {rt.positives} positives; flags "
                          f"{rt.flagged} test items",
                "base": "review_at kept from the base policy",
                "capped": "the base policy's review_at is above block_at: capped at it",
            }[p.review_rule]
            if p.block_reached:
                plo, phi = bt.precision_ci
                block_note = (f"block precision val {pct(p.block_val.precision)}, test "
                              f"{pct(bt.precision)} [{pct(plo)}, {pct(phi)}], recall test "
                              f"{pct(bt.recall)}")
            else:
                block_note = (f"precision {self.target_precision:g} never reached on "
                              "validation: never blocked without review")
            lines.append(f"  # {p.label}: {review_note}")
            lines.append(f"  # {p.label}: {block_note}")
            lines.append(f"  {p.label}: {{review_at: {p.review_at:.4f}, "
                         f"block_at: {p.block_at:.4f}}}")
        for lb, (r, b) in self.kept.items():
            lines.append(f"  # {lb}: not scored by this bundle; kept from the base policy")
            lines.append(f"  {lb}: {{review_at: {r:g}, block_at: {b:g}}}")
        return "\n".join(lines) + "\n"


def propose(heldout: pd.DataFrame, labels: Sequence[str], *, base: ModerationPolicy,
            severe: Sequence[str] = SEVERE_LABELS, target_recall: float = 0.90,
            target_precision: float = 0.90, bundle_version: str = "",
            version: str = "") -> Proposal:
    """Thresholds per label from a bundle's held-out scores (see the module docstring)."""
    for name, v in (("target_recall", target_recall), ("target_precision", target_precision)):
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{name}: {v} must be in (0, 1]")
    val, test = heldout[heldout["split"] == "val"], heldout[heldout["split"] == "test"]
    if val.empty or test.empty:
        raise ValueError("the held-out scores need both a val and a test split")
    out = []
    for lb in labels:
        yv, sv = val[f"label_{lb}"].to_numpy(bool), val[f"score_{lb}"].to_numpy(np.float64)
        yt, st = test[f"label_{lb}"].to_numpy(bool), test[f"score_{lb}"].to_numpy(np.float64)
        block = precision_threshold(yv, sv, target_precision)
        block_at = 1.0 if block is None else block
        if lb in severe and yv.any():
            review_at, rule = recall_threshold(yv, sv, target_recall), "recall"
        else:
            fallback = base.thresholds.get(lb)
            review_at, rule = (fallback.review_at if fallback else 0.5), "base"
        if review_at > block_at:
            review_at, rule = block_at, ("capped" if rule == "base" else rule)
        out.append(LabelProposal(
            label=lb, review_at=review_at, block_at=block_at, review_rule=rule,
            block_reached=block is not None, review_val=measure(yv, sv, review_at),
            review_test=measure(yt, st, review_at), block_val=measure(yv, sv, block_at),
            block_test=measure(yt, st, block_at)))
    kept = {lb: (t.review_at, t.block_at) for lb, t in base.thresholds.items()
            if lb not in labels}
    return Proposal(labels=tuple(out), kept=kept, target_recall=target_recall,
                    target_precision=target_precision, bundle_version=bundle_version,
                    version=version or f"{bundle_version or 'measured'}.thresholds")
