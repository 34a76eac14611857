"""The moderation-quality benchmark's pure parts: three classes from two scores, their F1s,
the bootstrap of the test split's sampling error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from benchmarks.moderation_quality import (
    _f1s,
    bootstrap,
    classes_of,
    fit_class_thresholds,
    predict_classes,
    three_class,
)


def _heldout(n: int = 3000, seed: int = 0, noise: float = 0.35) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for split in ("val", "test"):
        cls = rng.choice([0, 1, 2], size=n, p=[0.06, 0.77, 0.17])
        hate, abuse = cls == 0, cls <= 1
        frame = pd.DataFrame({"split": split, "label_hate": hate, "label_abuse": abuse})
        for prefix, k in (("score_", 1.0), ("frozen_score_", 0.5)):
            frame[f"{prefix}hate"] = np.clip(k * 0.6 * hate + rng.normal(0.2, noise, n), 0, 1)
            frame[f"{prefix}abuse"] = np.clip(k * 0.6 * abuse + rng.normal(0.2, noise, n), 0, 1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_classes_and_f1s_match_sklearn() -> None:
    h = _heldout()
    test = h[h["split"] == "test"]
    y = classes_of(test)
    assert set(np.unique(y)) == {0, 1, 2}
    pred = predict_classes(test["score_hate"].to_numpy(), test["score_abuse"].to_numpy(),
                           0.6, 0.4)
    macro, weighted, hate = _f1s(y, pred)
    assert macro == pytest.approx(f1_score(y, pred, average="macro"))
    assert weighted == pytest.approx(f1_score(y, pred, average="weighted"))
    assert hate == pytest.approx(f1_score(y == 0, pred == 0))


def test_thresholds_fitted_on_validation_beat_fixed_ones() -> None:
    h = _heldout()
    val = h[h["split"] == "val"]
    y = classes_of(val)
    th, ta = fit_class_thresholds(y, val["score_hate"].to_numpy(), val["score_abuse"].to_numpy())
    fitted = f1_score(y, predict_classes(val["score_hate"].to_numpy(),
                                         val["score_abuse"].to_numpy(), th, ta), average="macro")
    fixed = f1_score(y, predict_classes(val["score_hate"].to_numpy(),
                                        val["score_abuse"].to_numpy(), 0.5, 0.5),
                     average="macro")
    assert fitted >= fixed


def test_bootstrap_interval_holds_the_point_estimate_and_the_gain() -> None:
    h = _heldout()
    ft, fz = three_class(h, "score_"), three_class(h, "frozen_score_")
    b = bootstrap(h, {"finetuned": ft["thresholds"], "frozen": fz["thresholds"]}, n=300)
    lo, hi = b["ci95"]["finetuned.macro_f1"]
    assert lo <= ft["macro_f1"] <= hi and hi - lo < 0.1
    glo, ghi = b["ci95"]["macro_f1_gain"]
    assert glo > 0  # the better-separated scores win on every resample's interval
    assert glo <= ft["macro_f1"] - fz["macro_f1"] <= ghi
