"""`funnel bench moderation-quality`: text moderation on real, human-labelled language.

One run, on the Davidson et al. (2017) tweets (hate speech / offensive / neither):
1. `funnel train moderation` on the file, with a fixed, recorded split and seed: the frozen
   encoder's head and the fine-tuned encoder train in the same run on the same split;
2. per label (`hate`: class 0; `abuse`: classes 0 and 1) on the test split: precision,
   recall and F1 at the validation-F1-best threshold, and PR-AUC;
3. the paper's three classes, from the two scores (hate if `hate` >= t_h, else offensive if
   `abuse` >= t_a, else neither; t_h and t_a chosen on validation for macro-F1): macro-F1,
   weighted F1 and each class's F1, beside the paper's figures;
4. texts per second served (the moderation server's own model class, batches of the text
   batcher's size, on every core), fine-tuned and frozen measured in interleaved rounds;
5. `funnel moderation thresholds` on the bundle: the proposed policy's recall on the test
   split, with its 95 % interval (the split's sampling error).

No text is printed or written: only counts and figures.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_DATA = Path("../shared/data/davidson-2017/labeled_data.csv")
TEXT_COLUMN = "tweet"
LABEL_SPECS = ("hate=class:0", "abuse=class:0,1")
CLASSES = ("hate", "offensive", "neither")
SPLIT_SEED = 20170301
# Davidson et al. 2017, logistic regression with TF-IDF n-grams and extra features (5-fold)
PAPER = {"weighted_precision": 0.91, "weighted_recall": 0.90, "weighted_f1": 0.90,
         "hate_precision": 0.44, "hate_recall": 0.61,
         "hate_f1": round(2 * 0.44 * 0.61 / (0.44 + 0.61), 3)}


def classes_of(frame: pd.DataFrame) -> np.ndarray:
    """0 hate, 1 offensive, 2 neither, from the held-out hard labels."""
    return np.where(frame["label_hate"], 0, np.where(frame["label_abuse"], 1, 2))


def predict_classes(s_hate: np.ndarray, s_abuse: np.ndarray, t_hate: float,
                    t_abuse: float) -> np.ndarray:
    return np.where(s_hate >= t_hate, 0, np.where(s_abuse >= t_abuse, 1, 2))


def _f1s(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(macro-F1, weighted F1, hate F1) of three classes, from the confusion matrix."""
    cm = np.bincount(y * 3 + pred, minlength=9).reshape(3, 3).astype(np.float64)
    tp = np.diag(cm)
    prec = tp / np.maximum(cm.sum(0), 1)
    rec = tp / np.maximum(cm.sum(1), 1)
    f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
    support = cm.sum(1)
    return float(f1.mean()), float((f1 * support).sum() / support.sum()), float(f1[0])


def fit_class_thresholds(y: np.ndarray, s_hate: np.ndarray, s_abuse: np.ndarray
                         ) -> tuple[float, float]:
    """(t_hate, t_abuse) maximising macro-F1 on validation (a grid on score quantiles)."""
    grid_h = np.unique(np.quantile(s_hate, np.linspace(0.5, 0.995, 60)))
    grid_a = np.unique(np.quantile(s_abuse, np.linspace(0.01, 0.5, 50)))
    best, arg = -1.0, (0.5, 0.5)
    for th in grid_h:
        for ta in grid_a:
            f = _f1s(y, predict_classes(s_hate, s_abuse, th, ta))[0]
            if f > best:
                best, arg = f, (float(th), float(ta))
    return arg


def three_class(heldout: pd.DataFrame, prefix: str) -> dict[str, Any]:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    val, test = heldout[heldout["split"] == "val"], heldout[heldout["split"] == "test"]
    t_h, t_a = fit_class_thresholds(classes_of(val), val[f"{prefix}hate"].to_numpy(),
                                    val[f"{prefix}abuse"].to_numpy())
    y = classes_of(test)
    pred = predict_classes(test[f"{prefix}hate"].to_numpy(), test[f"{prefix}abuse"].to_numpy(),
                           t_h, t_a)
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    return {"macro_f1": float(f1_score(y, pred, average="macro", labels=[0, 1, 2])),
            "weighted_f1": float(f1_score(y, pred, average="weighted", labels=[0, 1, 2])),
            "hate_f1": float(f[0]), "hate_precision": float(p[0]), "hate_recall": float(r[0]),
            "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]),
                              "f1": float(f[i]), "support": int(n[i])}
                          for i, c in enumerate(CLASSES)},
            "thresholds": {"hate": round(t_h, 6), "abuse": round(t_a, 6)}}


def bootstrap(heldout: pd.DataFrame, thresholds: dict[str, dict[str, float]], *,
              n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The test split's sampling error: 95 % percentile intervals of each model's
    three-class figures over `n` resamples of the test rows (with replacement), and of the
    fine-tuned minus frozen macro-F1 on the same resamples (paired)."""
    test = heldout[heldout["split"] == "test"]
    y = classes_of(test)
    preds = {name: predict_classes(test[f"{prefix}hate"].to_numpy(),
                                   test[f"{prefix}abuse"].to_numpy(),
                                   thresholds[name]["hate"], thresholds[name]["abuse"])
             for name, prefix in (("finetuned", "score_"), ("frozen", "frozen_score_"))}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        got = {name: _f1s(y[idx], p[idx]) for name, p in preds.items()}
        for name, (macro, weighted, hate) in got.items():
            draws.setdefault(f"{name}.macro_f1", []).append(macro)
            draws.setdefault(f"{name}.weighted_f1", []).append(weighted)
            draws.setdefault(f"{name}.hate_f1", []).append(hate)
        draws.setdefault("macro_f1_gain", []).append(got["finetuned"][0] - got["frozen"][0])
    return {"resamples": n, "seed": seed,
            "ci95": {k: [round(float(np.percentile(v, 2.5)), 4),
                         round(float(np.percentile(v, 97.5)), 4)] for k, v in draws.items()}}


def _frozen_scorer(bundle: Path, spec: dict[str, Any]) -> Callable[[list[str]], np.ndarray]:
    """The frozen baseline served as the feed bundle's head is: MiniLM (sentence-transformers)
    embeddings -> the TorchScript head -> sigmoid."""
    import torch

    from training.text import MiniLMEncoder

    head = torch.jit.load(str(bundle / spec["baseline"]["path"]), map_location="cpu").eval()
    enc = MiniLMEncoder(device="cpu", batch_size=64)

    def score(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(head(torch.from_numpy(enc.encode(texts)))).numpy()
    return score


def throughput(scorers: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str], *,
               batch: int, rounds: int, per_round: int) -> dict[str, dict[str, Any]]:
    """Texts per second of each scorer on batches of `batch`, in interleaved rounds (each
    round runs every scorer on the same `per_round` texts): the median round, and all."""
    for s in scorers.values():  # warm-up
        s(texts[:batch])
    seen: dict[str, list[float]] = {k: [] for k in scorers}
    for r in range(rounds):
        chunk = [texts[(r * per_round + i) % len(texts)] for i in range(per_round)]
        for name, s in scorers.items():
            t0 = time.perf_counter()
            for i in range(0, len(chunk), batch):
                s(chunk[i:i + batch])
            seen[name].append(len(chunk) / (time.perf_counter() - t0))
    return {k: {"texts_per_s": float(np.median(v)), "rounds": [round(x, 1) for x in v]}
            for k, v in seen.items()}


def run(*, data: Path, out_dir: Path, config: Path | None, rows: int | None,
        say: Callable[[str], None], batch: int = 32, rounds: int = 5,
        per_round: int = 512) -> dict[str, Any]:
    import torch

    from funnel.contracts.bundle import verify_bundle
    from serve.config import DEFAULT_POLICY
    from serve.moderation.policy import load_policy
    from serve.moderation.thresholds import propose
    from training.cli import training_session
    from training.config import TEXT_MODERATION_CONFIG, load_text_moderation_config
    from training.data.texts import load_labelled_texts
    from training.text_moderation import HELDOUT_FILE, train_text_moderation

    cfg = load_text_moderation_config(config)
    # rows: a seeded sample, in memory, for a quick check of the harness
    texts = load_labelled_texts(data, text_column=TEXT_COLUMN, label_specs=LABEL_SPECS,
                                val_fraction=cfg.split.val_fraction,
                                test_fraction=cfg.split.test_fraction, seed=SPLIT_SEED,
                                sample_rows=rows)
    started = time.time()
    with training_session(out_dir / ".work") as session:
        bdir = train_text_moderation(cfg, texts, out_dir=out_dir, work_dir=out_dir / ".work",
                                     say=session.say, on_trial=session.on_trial,
                                     on_encode=session.on_encode,
                                     config_source=str(config or TEXT_MODERATION_CONFIG))
    train_s = time.time() - started
    bundle = verify_bundle(bdir)
    m = bundle.manifest["metrics"]["moderation"]
    spec = bundle.manifest["models"]["moderation"]
    heldout = pd.read_parquet(bundle.path / HELDOUT_FILE)
    say("three classes: thresholds fitted on validation, measured on test")
    ft3, fz3 = three_class(heldout, "score_"), three_class(heldout, "frozen_score_")
    sampling = bootstrap(heldout, {"finetuned": ft3["thresholds"],
                                   "frozen": fz3["thresholds"]})

    say(f"throughput: batches of {batch}, {rounds} interleaved rounds of {per_round} texts, "
        f"{os.cpu_count()} threads")
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:  # kserve parses the command line at import; `--config` would abbreviate one of its
        from serve.moderation.models import TextModerationModel
    finally:
        sys.argv = argv
    served = TextModerationModel(bundle=str(bundle.path), intra_op_threads=os.cpu_count() or 1)
    served.load()
    torch.set_num_threads(os.cpu_count() or 1)
    test_texts = [str(t) for t in texts.texts[texts.part("test")]]
    speed = throughput({"finetuned": served.score_texts,
                        "frozen": _frozen_scorer(bundle.path, spec)},
                       test_texts, batch=batch, rounds=rounds, per_round=per_round)

    policy = load_policy(DEFAULT_POLICY, labels=())
    proposal = propose(heldout, spec["labels"], base=policy, severe=("hate",),
                       bundle_version=bundle.version)
    th = {p.label: {"review_at": p.review_at, "block_at": p.block_at, "rule": p.review_rule,
                    "val_recall": p.review_val.recall, "test_recall": p.review_test.recall,
                    "test_recall_ci95": list(p.review_test.recall_ci),
                    "test_positives": p.review_test.positives,
                    "recall_within_sampling_error": (p.recall_within_error(0.90)
                                                     if p.review_rule == "recall" else None),
                    "block_precision_test": p.block_test.precision,
                    "block_reached": p.block_reached}
          for p in proposal.labels}
    (out_dir / "proposed-policy.yaml").write_text(proposal.to_yaml())

    def side(three: dict[str, Any], per_label: dict[str, Any], tps: float) -> dict[str, Any]:
        return {"macro_f1": three["macro_f1"], "weighted_f1": three["weighted_f1"],
                "hate_f1": three["hate_f1"], "texts_per_s": tps, "three_class": three,
                "per_label": per_label}

    return {
        "benchmark": "moderation-quality",
        "command": "funnel bench moderation-quality" + (" " + " ".join(sys.argv[3:])
                                                       if len(sys.argv) > 3 else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "data": {"file": data.name, "rows": len(texts.texts), "labels": list(LABEL_SPECS),
                 "split": texts.split_source, **texts.summary()},
        "split_seed": SPLIT_SEED,
        "config": cfg.model_dump(mode="json"),
        "bundle": bundle.version,
        "finetuned": side(ft3, m["finetuned"]["per_label"],
                          speed["finetuned"]["texts_per_s"]),
        "frozen": side(fz3, m["frozen"]["per_label"], speed["frozen"]["texts_per_s"]),
        "int8": {"per_label": (m.get("int8") or {}).get("per_label"),
                 "pr_auc_macro": (m.get("int8") or {}).get("pr_auc_macro")},
        "throughput": {**speed, "batch": batch, "threads": os.cpu_count()},
        "paper": PAPER,
        "sampling_error": sampling,
        "thresholds": {"target_recall": 0.90, "target_precision": 0.90, "labels": th},
        "training_s": round(train_s, 1),
        "training_breakdown_s": m["timings_s"],
        "tuning": m["tuning"],
    }
