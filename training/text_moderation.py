"""`funnel train moderation --texts FILE`: the moderation text model from labelled text alone.

Two models train in the same run, on the same seeded split, so that they compare:
- the **frozen** baseline: all-MiniLM-L6-v2 embeddings (frozen) -> the MLP head, tuned with
  Ray Tune as the feed pipeline's head is;
- the **fine-tuned** model: MiniLM's top `finetune_layers` layers and the head, trained with
  Ray Train workers under Ray Tune (learning rate, loss: weighted BCE or focal, encoder
  dropout; ASHA stops weak trials, the best epoch is kept: early stopping on validation
  PR-AUC). The head starts from the frozen baseline's.

Trial configs are sampled from the config's seed, so a run is repeatable: the same split,
the same trials. The frozen lower layers run once over every text and their output is
cached (float16), so each trial's epoch runs the top layers only: on 2 CPU cores that is
what makes tuning affordable. With `finetune_layers: 6` the whole encoder trains (token
embeddings frozen).

The fine-tuned model is exported as one TorchScript module (token ids -> logits), with the
tokenizer file beside it, both checksummed in the manifest; optionally with dynamic int8
Linear layers (its quality on the test split is measured beside the float one's either way).

Output: a **moderation bundle** (manifest `kind: moderation`): the text model, the frozen
baseline head, the held-out scores and precision/recall curves (`moderation/`), and the drift
monitor's reference (`reference/moderation.parquet`, the served model's test-split scores).
With `base` (a serving bundle), the output is instead a new serving bundle: the base's files
unchanged and its moderation component replaced, ready to canary by version. No text is
written anywhere but the TorchScript's tokenizer vocabulary: the held-out file holds scores
and labels only.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from funnel.contracts.bundle import (
    MANIFEST,
    VerifiedBundle,
    point_latest,
    write_manifest,
)
from training import quality
from training.config import TextModerationConfig
from training.data.texts import LabelledTexts
from training.evaluation import safe_auc, safe_pr_auc
from training.export import (
    funnel_version,
    new_bundle_dir,
    script_module,
    write_moderation_reference,
)
from training.loops import UpperLayers, build_moderation, save_arrays
from training.models.minilm import (
    TOKENIZER_FILE,
    MiniLMClassifier,
    Tokenizer,
    build_classifier,
    classify,
    model_dir,
)
from training.tune import StageResult, load_best, tune_stage, tuning_summary

Say = Callable[[str], None]
TEXT_MODEL_FILE = "models/moderation_text.pt"
FROZEN_HEAD_FILE = "models/moderation_frozen_head.pt"
TOKENIZER_PATH = f"models/{TOKENIZER_FILE}"
HELDOUT_FILE = "moderation/heldout.parquet"
CURVES_FILE = "moderation/curves.json"
# files of a serving bundle that belong to its moderation component (replaced with `base`)
MODERATION_FILES = ("models/moderation_head.pt", "reference/moderation.parquet",
                    TEXT_MODEL_FILE, FROZEN_HEAD_FILE, TOKENIZER_PATH, HELDOUT_FILE,
                    CURVES_FILE)


@dataclass(frozen=True)
class Cache:
    """The frozen lower layers' output for every text, and the frozen sentence embedding."""

    h: np.ndarray  # float16 [N, max_length, 384]
    mask: np.ndarray  # int64 [N, max_length]
    embedding: np.ndarray  # float32 [N, 384], L2-normalised (what the frozen head reads)


def encode_cache(clf: MiniLMClassifier, tok: Tokenizer, texts: np.ndarray, *,
                 progress: Callable[[int, int], None] | None = None,
                 batch: int = 64) -> Cache:
    """One pass of the pretrained encoder over `texts` (length-sorted batches)."""
    n, width = len(texts), tok.max_length
    h = np.zeros((n, width, 384), dtype=np.float16)
    mask = np.zeros((n, width), dtype=np.int64)
    emb = np.zeros((n, 384), dtype=np.float32)
    lengths = np.asarray([len(str(t)) for t in texts])
    order = np.argsort(lengths, kind="stable")
    clf.eval()
    with torch.inference_mode():
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            t = tok([str(x) for x in texts[idx]])
            ids, m = torch.from_numpy(t.ids), torch.from_numpy(t.mask)
            low = clf.lower(ids, m)
            w = t.ids.shape[1]
            h[idx, :w] = low.numpy().astype(np.float16)
            mask[idx, :w] = t.mask
            emb[idx] = clf.pooled(low, m).numpy()
            if progress:
                progress(min(s + batch, n), n)
    return Cache(h=h, mask=mask, embedding=emb)


def pos_weight(y: np.ndarray) -> list[float]:
    pos = y.sum(0)
    return np.clip((len(y) - pos) / np.maximum(pos, 1), 1, 100).astype(float).tolist()


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the best F1 (on validation; applied unchanged to test)."""
    from sklearn.metrics import precision_recall_curve

    if labels.sum() == 0:
        return 0.5
    p, r, t = precision_recall_curve(labels, scores)
    f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
    return float(t[int(np.argmax(f1))])


def label_metrics(y_val: np.ndarray, s_val: np.ndarray, y_test: np.ndarray,
                  s_test: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    """Per label on the test split: ROC-AUC, PR-AUC, and precision / recall / F1 at the
    threshold that maximised F1 on validation."""
    per: dict[str, Any] = {}
    for j, lb in enumerate(labels):
        t = best_f1_threshold(y_val[:, j], s_val[:, j])
        pred = s_test[:, j] >= t
        tp = float((pred & (y_test[:, j] > 0)).sum())
        prec = tp / max(float(pred.sum()), 1.0)
        rec = tp / max(float(y_test[:, j].sum()), 1.0)
        per[lb] = {"roc_auc": safe_auc(y_test[:, j], s_test[:, j]),
                   "pr_auc": safe_pr_auc(y_test[:, j], s_test[:, j]),
                   "threshold": round(t, 6), "precision": prec, "recall": rec,
                   "f1": 2 * prec * rec / max(prec + rec, 1e-12),
                   "positives": int(y_test[:, j].sum())}
    rocs = [v["roc_auc"] for v in per.values() if v["roc_auc"] is not None]
    prs = [v["pr_auc"] for v in per.values() if v["pr_auc"] is not None]
    return {"roc_auc_macro": float(np.mean(rocs)) if rocs else None,
            "pr_auc_macro": float(np.mean(prs)) if prs else None,
            "f1_macro": float(np.mean([v["f1"] for v in per.values()])),
            "per_label": per}


def pr_curves(y: np.ndarray, s: np.ndarray, labels: tuple[str, ...], *,
              points: int = 101) -> dict[str, Any]:
    """Precision and recall against the threshold, per label, thinned to about `points`."""
    from sklearn.metrics import precision_recall_curve

    out: dict[str, Any] = {}
    for j, lb in enumerate(labels):
        if y[:, j].sum() == 0:
            continue
        p, r, t = precision_recall_curve(y[:, j], s[:, j])
        keep = np.unique(np.linspace(0, len(t) - 1, min(points, len(t))).astype(int))
        out[lb] = {"threshold": np.round(t[keep], 6).tolist(),
                   "precision": np.round(p[keep], 6).tolist(),
                   "recall": np.round(r[keep], 6).tolist()}
    return out


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class _Trained:
    frozen_head: torch.nn.Module
    frozen_tuning: StageResult
    classifier: MiniLMClassifier
    finetune_tuning: StageResult


def _tune_frozen(cfg: TextModerationConfig, data: LabelledTexts, cache: Cache, work_dir: Path,
                 say: Say, on_trial: Callable[[str, dict[str, Any]], None] | None
                 ) -> tuple[torch.nn.Module, StageResult]:
    tr, va = data.part("train"), data.part("val")
    meta = {"text_dim": 384, "labels": list(data.labels),
            "pos_weight": pos_weight(data.targets[tr])}
    ddir = work_dir / "data" / "moderation-frozen"
    save_arrays(ddir, "train_", {"x": cache.embedding[tr], "y": data.targets[tr]})
    save_arrays(ddir, "val_", {"x": cache.embedding[va], "y": data.hard[va]})
    (ddir / "meta.json").write_text(json.dumps(meta))
    say(f"frozen: tuning the head on frozen embeddings ({cfg.frozen.num_samples} trials)")
    res = tune_stage(cfg.frozen, data_dir=ddir, work_dir=work_dir, resources=cfg.resources,
                     seed=cfg.seed, on_result=on_trial,
                     seeded_search=True)
    return load_best(res, build_moderation, meta), res


def _tune_finetune(cfg: TextModerationConfig, data: LabelledTexts, cache: Cache,
                   frozen_head: torch.nn.Module, frozen_cfg: dict[str, Any], work_dir: Path,
                   say: Say, on_trial: Callable[[str, dict[str, Any]], None] | None
                   ) -> tuple[MiniLMClassifier, StageResult]:
    from safetensors.torch import load_file, save_file

    from training.loops import build_finetune

    tr, va = data.part("train"), data.part("val")
    meta: dict[str, Any] = {"labels": list(data.labels), "hidden": int(frozen_cfg["hidden"]),
            "head_dropout": float(frozen_cfg["dropout"]),
            "trainable_layers": cfg.finetune_layers,
            "pos_weight": pos_weight(data.targets[tr])}
    start = build_classifier(n_labels=len(data.labels), hidden=meta["hidden"],
                             head_dropout=meta["head_dropout"],
                             trainable_layers=cfg.finetune_layers)
    start.head.load_state_dict(frozen_head.state_dict())  # start from the baseline's head
    ddir = work_dir / "data" / "moderation-finetune"
    ddir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in start.state_dict().items()},
              str(ddir / "start.safetensors"))
    save_arrays(ddir, "train_", {"h": cache.h[tr], "mask": cache.mask[tr],
                                 "y": data.targets[tr]})
    save_arrays(ddir, "val_", {"h": cache.h[va], "mask": cache.mask[va], "y": data.hard[va]})
    (ddir / "meta.json").write_text(json.dumps(meta))
    say(f"finetune: tuning MiniLM's top {cfg.finetune_layers} layer(s) with the head "
        f"({cfg.finetune.num_samples} trials, up to {cfg.finetune.max_epochs} epochs, "
        f"{int(tr.sum()):,} texts)")
    res = tune_stage(cfg.finetune, data_dir=ddir, work_dir=work_dir, resources=cfg.resources,
                     seed=cfg.seed, on_result=on_trial,
                     seeded_search=True)
    upper = UpperLayers(build_finetune(res.config, meta))
    upper.load_state_dict(load_file(str(res.trial_dir / "model.safetensors")))
    clf = upper.clf
    assert isinstance(clf, MiniLMClassifier)
    return clf.eval(), res


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def quantize(clf: MiniLMClassifier) -> torch.nn.Module:
    """Dynamic int8 Linear layers (weights int8, activations quantised per batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per run
        return torch.ao.quantization.quantize_dynamic(clf.eval(), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def train_text_moderation(cfg: TextModerationConfig, data: LabelledTexts, *, out_dir: Path,
                          work_dir: Path, say: Say = print,
                          on_trial: Callable[[str, dict[str, Any]], None] | None = None,
                          on_encode: Callable[[int, int], None] | None = None,
                          base: VerifiedBundle | None = None,
                          config_source: str = "") -> Path:
    """Train both models, evaluate them on the test split, write the bundle; its directory."""
    started = time.time()
    timings: dict[str, float] = {}
    torch.manual_seed(cfg.seed)
    tok = Tokenizer(model_dir() / TOKENIZER_FILE, max_length=cfg.max_length)
    summary = data.summary()
    say(f"data: {summary['rows']:,} texts ({summary['train_rows']:,} train, "
        f"{summary['val_rows']:,} val, {summary['test_rows']:,} test; split "
        f"{data.split_source}); positives {summary['positives']}")
    t0 = time.time()
    say("encode: MiniLM over every text once (the frozen layers' output is cached)")
    encoder = build_classifier(n_labels=len(data.labels), hidden=8, head_dropout=0.0,
                               trainable_layers=cfg.finetune_layers)
    cache = encode_cache(encoder, tok, data.texts, progress=on_encode)
    timings["encode_s"] = time.time() - t0

    t0 = time.time()
    frozen_head, frozen_res = _tune_frozen(cfg, data, cache, work_dir, say, on_trial)
    timings["frozen_tune_s"] = time.time() - t0
    t0 = time.time()
    clf, ft_res = _tune_finetune(cfg, data, cache, frozen_head, frozen_res.config, work_dir,
                                 say, on_trial)
    timings["finetune_tune_s"] = time.time() - t0

    va, te = data.part("val"), data.part("test")
    y_val, y_test = data.hard[va], data.hard[te]
    with torch.no_grad():
        fz_val = _sigmoid(frozen_head(torch.from_numpy(cache.embedding[va])).numpy())
        fz_test = _sigmoid(frozen_head(torch.from_numpy(cache.embedding[te])).numpy())
    t0 = time.time()  # the served path (tokenizer -> whole model), not the cached one
    ft_val = classify(clf, tok, list(data.texts[va]))
    ft_test = classify(clf, tok, list(data.texts[te]))
    timings["evaluate_s"] = time.time() - t0
    frozen_m = label_metrics(y_val, fz_val, y_test, fz_test, data.labels)
    ft_m = label_metrics(y_val, ft_val, y_test, ft_test, data.labels)
    say(f"evaluate: test macro PR-AUC fine-tuned {ft_m['pr_auc_macro']:.4f}, frozen "
        f"{frozen_m['pr_auc_macro']:.4f}")
    served: torch.nn.Module = clf
    served_val, served_test = ft_val, ft_test
    int8_m = None
    if cfg.quantize:
        t0 = time.time()
        q = quantize(clf)
        q_val = classify(q, tok, list(data.texts[va]))
        q_test = classify(q, tok, list(data.texts[te]))
        int8_m = label_metrics(y_val, q_val, y_test, q_test, data.labels)
        timings["quantize_eval_s"] = time.time() - t0
        say(f"int8: test macro PR-AUC {int8_m['pr_auc_macro']:.4f} (float "
            f"{ft_m['pr_auc_macro']:.4f})")
        if cfg.serve_quantized:
            served, served_val, served_test = q, q_val, q_test
    from training.pipeline import tfidf_baseline  # sklearn; the feed pipeline's baseline

    base_tfidf = tfidf_baseline(data.texts[data.part("train")], data.hard[data.part("train")],
                                data.texts[te], y_test, labels=data.labels)

    bdir = new_bundle_dir(out_dir)
    bdir.mkdir(parents=True)
    say(f"export: writing bundle {bdir}")
    if base is not None:
        _copy_serving_files(base, bdir)
    _write_files(bdir, cfg, data, served, frozen_head, tok, served_val, served_test,
                 fz_val, fz_test)
    _check_export(bdir, tok, data.texts[te][:64], served_test[:64])
    metrics = {**ft_m, "finetuned": ft_m, "frozen": frozen_m, "int8": int8_m,
               "baselines": {"tfidf_logreg": base_tfidf,
                             "frozen_encoder": {k: frozen_m[k] for k in
                                                ("roc_auc_macro", "pr_auc_macro",
                                                 "f1_macro")}},
               "served": "int8" if served is not clf else "float32",
               "tuning": {"frozen": tuning_summary(frozen_res), "finetune": tuning_summary(ft_res)},
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    spec = {"path": TEXT_MODEL_FILE, "kind": "finetuned", "labels": list(data.labels),
            "text_model": "all-MiniLM-L6-v2", "tokenizer": TOKENIZER_PATH,
            "max_length": cfg.max_length, "finetune_layers": cfg.finetune_layers,
            "quantized": served is not clf, "hparams": ft_res.config,
            "baseline": {"path": FROZEN_HEAD_FILE, "hparams": frozen_res.config},
            "heldout": HELDOUT_FILE, "curves": CURVES_FILE}
    lineage = {"funnel_version": funnel_version(), "torch": torch.__version__,
               "python": platform.python_version(),
               "train_seconds": round(time.time() - started, 1),
               "device": "cuda" if torch.cuda.is_available() else "cpu"}
    texts_info = {"name": f"texts:{Path(data.source).name}",
                  "fingerprint": file_fingerprint(Path(data.source)), **summary}
    if base is not None:
        manifest = {k: v for k, v in base.manifest.items() if k not in ("files", "version")}
        manifest["models"] = {**manifest["models"], "moderation": spec}
        manifest["metrics"] = {**manifest["metrics"], "moderation": metrics}
        manifest["dataset"] = {**manifest["dataset"], "has_harm_labels": True,
                               "moderation_texts": texts_info}
        manifest["lineage"] = {**manifest.get("lineage", {}),
                               "moderation": {**lineage, "base_version": base.version}}
    else:
        manifest = {"kind": "moderation", "dataset": texts_info,
                    "config": {**cfg.model_dump(mode="json"), "source": config_source},
                    "models": {"moderation": spec}, "metrics": {"moderation": metrics},
                    "lineage": lineage}
    manifest.update({"version": bdir.name, "created_at": datetime.now(UTC).isoformat()})
    manifest["quality_gate"] = quality.evaluate(manifest["metrics"])
    write_manifest(bdir, manifest)
    point_latest(out_dir, bdir)
    return bdir


def _copy_serving_files(base: VerifiedBundle, bdir: Path) -> None:
    for rel in base.manifest["files"]:
        if rel in MODERATION_FILES or rel == MANIFEST:
            continue
        dst = bdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base.path / rel, dst)


def _write_files(bdir: Path, cfg: TextModerationConfig, data: LabelledTexts,
                 served: torch.nn.Module, frozen_head: torch.nn.Module, tok: Tokenizer,
                 s_val: np.ndarray, s_test: np.ndarray, fz_val: np.ndarray,
                 fz_test: np.ndarray) -> None:
    (bdir / "models").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript is what
        warnings.simplefilter("ignore", FutureWarning)  # the serving replicas load
        torch.jit.script(served.cpu().eval()).save(str(bdir / TEXT_MODEL_FILE))
    script_module(frozen_head, bdir / FROZEN_HEAD_FILE)
    shutil.copy2(tok.path, bdir / TOKENIZER_PATH)
    va, te = data.part("val"), data.part("test")
    rows = []
    for split, mask, s, f in (("val", va, s_val, fz_val), ("test", te, s_test, fz_test)):
        frame = pd.DataFrame({"split": split}, index=range(int(mask.sum())))
        for j, lb in enumerate(data.labels):
            frame[f"label_{lb}"] = data.hard[mask][:, j] > 0
            frame[f"score_{lb}"] = s[:, j]
            frame[f"frozen_score_{lb}"] = f[:, j]
        rows.append(frame)
    (bdir / "moderation").mkdir(parents=True, exist_ok=True)
    pd.concat(rows, ignore_index=True).to_parquet(bdir / HELDOUT_FILE, index=False)
    (bdir / CURVES_FILE).write_text(json.dumps(
        {"split": "test", "curves": pr_curves(data.hard[te], s_test, data.labels)},
        indent=1))
    write_moderation_reference(bdir / "reference/moderation.parquet", s_test, data.labels,
                               max_rows=cfg.reference_sample_rows, seed=cfg.seed)


def _check_export(bdir: Path, tok: Tokenizer, texts: np.ndarray, expected: np.ndarray) -> None:
    """The exported TorchScript, through the serving path, gives the scores evaluated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(bdir / TEXT_MODEL_FILE), map_location="cpu")
    got = classify(module, tok, [str(t) for t in texts])
    diff = float(np.abs(got - expected).max()) if len(texts) else 0.0
    if diff > 1e-4:
        raise RuntimeError(f"exported text model disagrees with the evaluated one "
                           f"(max score difference {diff:.2e})")
