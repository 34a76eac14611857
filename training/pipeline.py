"""`funnel train`: data -> features -> Ray Tune per model -> evaluation -> bundle.

Order matters: the ranker takes the two-tower's retrieval score as an input, so retrieval
is tuned first; moderation is independent. Every model is evaluated on held-out data that
no tuning decision saw, beside its baselines computed in the same run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from funnel.contracts.bundle import point_latest, write_manifest
from funnel.contracts.model_io import ITEM_KEYS, RANKER_KEYS, TASKS, USER_KEYS
from training import quality
from training.calibration import (
    CALIBRATION_FILE,
    N_BINS,
    calibration_report,
    fit_calibration,
    sigmoid,
)
from training.catalog import write_catalog
from training.config import TrainConfig
from training.data.schema import ENGAGEMENT_TASKS, HARM_LABELS, Dataset, harm_labels_of
from training.evaluation import (
    full_ranking_metrics,
    grouped_ndcg,
    itemknn_score_fn,
    popularity_scores,
    safe_auc,
    safe_pr_auc,
)
from training.export import (
    ann_recall,
    build_hnsw,
    funnel_version,
    new_bundle_dir,
    script_module,
    write_moderation_reference,
    write_reference,
    write_triton_config,
)
from training.features import FeatureTransform, join_rows, point_in_time_counts
from training.loops import (
    _split_by_user,
    build_moderation,
    build_ranker,
    build_two_tower,
    embed,
    save_arrays,
)
from training.models.two_tower import TwoTower
from training.text import TextEncoder
from training.tune import StageResult, load_best, tune_stage, tuning_summary

Say = Callable[[str], None]
SCORE_WEIGHTS = {"click": 1.0, "like": 0.5, "comment": 0.3, "share": 0.3, "hide": -1.0}
NEGATIVES_PER_POSITIVE = 4


@dataclass(frozen=True)
class Split:
    """Boolean masks over impressions: disjoint train / val / test."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_split(ds: Dataset, cfg: TrainConfig) -> Split:
    imp = ds.impressions
    if cfg.split.kind == "time":
        ts = imp["timestamp"].astype("int64").to_numpy()
        t_test = np.quantile(ts, 1 - cfg.split.test_fraction)
        t_val = np.quantile(ts, 1 - cfg.split.test_fraction - cfg.split.val_fraction)
        return Split(train=ts < t_val, val=(ts >= t_val) & (ts < t_test), test=ts >= t_test)
    # leave-last-out: per user, newest interaction -> test, the one before -> val.
    order = imp.assign(_i=np.arange(len(imp))).sort_values(
        ["user_id", "timestamp", "_i"], ascending=[True, False, False])
    rank = order.groupby("user_id").cumcount().to_numpy()
    n = order.groupby("user_id")["_i"].transform("size").to_numpy()
    r = np.empty(len(imp), dtype=np.int64)
    r[order["_i"].to_numpy()] = np.where(n >= 3, rank, 99)
    return Split(train=r >= 2, val=r == 1, test=r == 0)


def _pairs(imp: pd.DataFrame, mask: np.ndarray, uix: pd.Index, pix: pd.Index) -> np.ndarray:
    rows = imp[mask & imp["click"].to_numpy()]
    p = np.stack([uix.get_indexer(rows["user_id"]), pix.get_indexer(rows["post_id"])], axis=1)
    return np.unique(p, axis=0) if len(p) else np.zeros((0, 2), np.int64)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def train_bundle(cfg: TrainConfig, ds: Dataset, *, out_dir: Path, work_dir: Path,
                 encoder: TextEncoder, say: Say = print,
                 on_trial: Callable[[str, dict[str, Any]], None] | None = None,
                 config_source: str = "",
                 review_labels: pd.DataFrame | None = None) -> Path:
    """Run the whole training pipeline and write a verified bundle; returns its directory.

    Stages, in order (each a function below): features, retrieval, ranker (with
    calibration), moderation, the ANN index, export."""
    started = time.time()
    rng = np.random.default_rng(cfg.seed)
    run = _prepare(cfg, ds, encoder=encoder, work_dir=work_dir, say=say, on_trial=on_trial)
    ret = _retrieval_stage(run)
    rk = _ranker_stage(run, ret, rng)
    moderation, moderation_scores = None, None
    if ds.has_harm_labels:
        moderation, moderation_metrics, moderation_scores = _train_moderation(
            cfg, run.posts, run.ft, work_dir, say, on_trial,
            extra=_review_examples(review_labels, encoder, ds.harm_labels)
            if review_labels is not None
            else None)
    else:
        say("moderation: skipped (the dataset has no harm labels)")
        moderation_metrics = {"roc_auc_macro": None,
                              "skipped": "the dataset has no harm labels"}
    index, ann_metrics = _ann_stage(run, ret, rng)
    metrics = {"retrieval": ret.metrics, "ranker": rk.metrics,
               "moderation": moderation_metrics, "ann": ann_metrics}
    bdir = new_bundle_dir(out_dir)
    say(f"export: writing bundle {bdir}")
    _write_bundle_files(run, ret, rk, moderation, moderation_scores, index, bdir)
    manifest = _manifest(run, ret, rk, moderation is not None, metrics, version=bdir.name,
                         config_source=config_source, started=started)
    write_manifest(bdir, manifest)
    point_latest(out_dir, bdir)
    return bdir


@dataclass(frozen=True)
class _Run:
    """What every stage reads: the config, the data, its split and the fitted features."""

    cfg: TrainConfig
    ds: Dataset
    split: Split
    users: pd.DataFrame
    posts: pd.DataFrame
    uix: pd.Index
    pix: pd.Index
    ft: FeatureTransform
    work_dir: Path
    say: Say
    on_trial: Callable[[str, dict[str, Any]], None] | None


@dataclass(frozen=True)
class _Retrieval:
    tuning: StageResult
    two_tower: TwoTower
    user_vec: np.ndarray
    item_vec: np.ndarray
    metrics: dict[str, Any]


@dataclass(frozen=True)
class _Ranker:
    tuning: StageResult
    model: torch.nn.Module
    calibration: Any
    inputs: dict[str, np.ndarray]
    rows: pd.DataFrame
    test: np.ndarray  # mask of `rows` in the test split
    probs: np.ndarray  # calibrated, on the test rows
    final: np.ndarray  # the weighted score serving ranks by, on the test rows
    metrics: dict[str, Any]


def _prepare(cfg: TrainConfig, ds: Dataset, *, encoder: TextEncoder, work_dir: Path,
             say: Say, on_trial: Callable[[str, dict[str, Any]], None] | None) -> _Run:
    split = make_split(ds, cfg)
    say(f"split ({cfg.split.kind}): train {split.train.sum():,} / val {split.val.sum():,} / "
        f"test {split.test.sum():,} impressions")
    users = ds.users.sort_values("user_id").reset_index(drop=True)
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    say(f"features: encoding {posts['text'].nunique():,} distinct post texts with {encoder.name}")
    ft = FeatureTransform.fit(ds, split.train, encoder,
                              dense_features=cfg.ranker_dense_features)
    return _Run(cfg=cfg, ds=ds, split=split, users=users, posts=posts,
                uix=pd.Index(users["user_id"]), pix=pd.Index(posts["post_id"]), ft=ft,
                work_dir=work_dir, say=say, on_trial=on_trial)


def _retrieval_stage(run: _Run) -> _Retrieval:
    """Tune the two-tower; Recall/NDCG@K against popularity (and ItemKNN when it fits)."""
    cfg, ft, users, posts, split = run.cfg, run.ft, run.users, run.posts, run.split
    user_arr, item_arr = ft.user_features(users), ft.item_features(posts)
    train_pairs = _pairs(run.ds.impressions, split.train, run.uix, run.pix)
    val_pairs = _pairs(run.ds.impressions, split.val, run.uix, run.pix)
    test_pairs = _pairs(run.ds.impressions, split.test, run.uix, run.pix)
    counts = np.bincount(train_pairs[:, 1], minlength=len(posts)).astype(np.float64)
    log_q = np.log((counts + 1.0) / (counts.sum() + len(posts)))
    meta = {"text_dim": ft.text_dim, "id_buckets": ft.id_buckets,
            "author_buckets": ft.author_buckets,
            "n_age": ft.vocab_size("users.age_band"),
            "n_country": ft.vocab_size("users.country"),
            "n_language": ft.vocab_size("users.language"),
            "n_topic": ft.vocab_size("posts.topic"),
            "n_modality": ft.vocab_size("posts.modality"), "val_k": 50}
    rdir = run.work_dir / "data" / "retrieval"
    save_arrays(rdir, "user_", user_arr)
    save_arrays(rdir, "item_", item_arr)
    save_arrays(rdir, "", {"train_pairs": train_pairs, "val_pairs": val_pairs,
                           "log_q": log_q.astype(np.float32)})
    (rdir / "meta.json").write_text(json.dumps(meta))
    run.say(f"retrieval: tuning two-tower ({cfg.retrieval.num_samples} trials, "
            f"{len(train_pairs):,} positive pairs)")
    tuned = tune_stage(cfg.retrieval, data_dir=rdir, work_dir=run.work_dir,
                       resources=cfg.resources, seed=cfg.seed, on_result=run.on_trial)
    two_tower = cast(TwoTower, load_best(tuned, build_two_tower, meta))
    user_vec = embed(two_tower.user_tower, user_arr, USER_KEYS)
    item_vec = embed(two_tower.item_tower, item_arr, ITEM_KEYS)
    seen = np.concatenate([train_pairs, val_pairs])
    ks = tuple(cfg.eval_k)
    n_users = len(users)
    train_items = _split_by_user(seen, n_users)
    test_items = _split_by_user(test_pairs, n_users)
    metrics = full_ranking_metrics(lambda r: user_vec[r] @ item_vec.T,
                                   train_items=train_items, test_items=test_items, ks=ks)
    pop = popularity_scores(seen[:, 1], len(posts))
    pop_metrics = full_ranking_metrics(lambda r: np.tile(pop, (len(r), 1)),
                                       train_items=train_items, test_items=test_items, ks=ks)
    baselines = {"popularity": pop_metrics}
    if len(posts) <= 20_000:
        knn = itemknn_score_fn(seen[:, 0], seen[:, 1], n_users, len(posts))
        baselines["itemknn"] = full_ranking_metrics(knn, train_items=train_items,
                                                    test_items=test_items, ks=ks)
    run.say(f"retrieval: recall@50 {metrics.get('recall_at_50', 0):.4f} "
            f"(popularity {pop_metrics.get('recall_at_50', 0):.4f})")
    return _Retrieval(tuning=tuned, two_tower=two_tower, user_vec=user_vec, item_vec=item_vec,
                      metrics={**metrics, "baselines": baselines, "tuning": tuning_summary(tuned)})


def _ranker_stage(run: _Run, ret: _Retrieval, rng: np.random.Generator) -> _Ranker:
    """Tune the multi-task ranker on logged impressions; calibrate each head on validation;
    NDCG@10 of the calibrated, weighted score against retrieval order on test."""
    cfg, ft, split = run.cfg, run.ft, run.split
    imp = run.ds.impressions.assign(_split=np.select([split.train, split.val, split.test],
                                                     ["train", "val", "test"], "none"))
    if imp["click"].mean() > 0.95:  # implicit feedback only (MovieLens): sample negatives
        imp = _with_sampled_negatives(imp, run.posts["post_id"].to_numpy(), rng)
    rows = join_rows(run.ds, imp, ft)
    counts_pit = point_in_time_counts(rows)
    u_i = run.uix.get_indexer(pd.Index(rows["user_id"]))
    p_i = run.pix.get_indexer(pd.Index(rows["post_id"]))
    retrieval_score = np.einsum("ij,ij->i", ret.user_vec[u_i],
                                ret.item_vec[p_i]).astype(np.float32)
    inputs = ft.ranker_inputs(rows, counts_pit, retrieval_score)
    labels = rows[list(TASKS)].to_numpy(np.float32)
    gains = (rows[["click", "like", "comment", "share"]].to_numpy(np.float32).sum(1)
             * (1 - rows["hide"].to_numpy(np.float32)))
    groups = pd.factorize(rows["request_id"])[0]
    part = rows["_split"].to_numpy()
    meta = {"n_dense": len(ft.dense_features), "id_buckets": ft.id_buckets,
            "n_topic": ft.vocab_size("posts.topic"),
            "n_modality": ft.vocab_size("posts.modality"),
            "n_age": ft.vocab_size("users.age_band"),
            "task_weights": [1.0] * len(TASKS),
            "score_weights": [SCORE_WEIGHTS[t] for t in TASKS]}
    kdir = run.work_dir / "data" / "ranker"
    for name in ("train", "val"):
        m = part == name
        save_arrays(kdir, f"{name}_", {**{k: inputs[k][m] for k in RANKER_KEYS},
                                       "labels": labels[m], "groups": groups[m],
                                       "gains": gains[m]})
    (kdir / "meta.json").write_text(json.dumps(meta))
    run.say(f"ranker: tuning multi-task ranker ({cfg.ranker.num_samples} trials, "
            f"{int((part == 'train').sum()):,} rows)")
    tuned = tune_stage(cfg.ranker, data_dir=kdir, work_dir=run.work_dir,
                       resources=cfg.resources, seed=cfg.seed, on_result=run.on_trial)
    ranker = load_best(tuned, build_ranker, meta)
    test, val = part == "test", part == "val"
    with torch.no_grad():
        logits = ranker(*(torch.from_numpy(inputs[k][test]) for k in RANKER_KEYS)).numpy()
        val_logits = ranker(*(torch.from_numpy(inputs[k][val]) for k in RANKER_KEYS)).numpy()
    # calibrators are fitted on validation (the ranker never trained on it) and judged on test
    calibration, fits = fit_calibration(val_logits, labels[val], TASKS, seed=cfg.seed)
    raw_probs = sigmoid(logits)
    probs = calibration.probs(logits)  # what serving computes: the weighted score uses these
    weights = np.asarray(meta["score_weights"], np.float32)
    final = probs @ weights
    cal_metrics = calibration_report(calibration, logits, labels[test], fits)
    metrics: dict[str, Any] = {
        "ndcg_at_10": grouped_ndcg(groups[test], final, gains[test], k=10),
        "ndcg_at_10_uncalibrated": grouped_ndcg(groups[test], raw_probs @ weights,
                                                gains[test], k=10),
        "auc": {t: safe_auc(labels[test][:, j], raw_probs[:, j])
                for j, t in enumerate(TASKS)},
        "calibration": {"fit_split": "val", "eval_split": "test", "bins": N_BINS,
                        "tasks": cal_metrics},
        "score_weights": SCORE_WEIGHTS,
        "baselines": {"retrieval_order": {
            "ndcg_at_10": grouped_ndcg(groups[test], retrieval_score[test], gains[test], k=10)}},
        "tuning": tuning_summary(tuned),
    }
    run.say(f"ranker: ndcg@10 {metrics['ndcg_at_10']:.4f} (retrieval order "
            f"{metrics['baselines']['retrieval_order']['ndcg_at_10']:.4f})")
    for t, c in cal_metrics.items():
        run.say(f"calibration: {t} ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f} "
                f"({c['method']})")
    return _Ranker(tuning=tuned, model=ranker, calibration=calibration, inputs=inputs,
                   rows=rows, test=test, probs=probs, final=final, metrics=metrics)


def _ann_stage(run: _Run, ret: _Retrieval, rng: np.random.Generator
               ) -> tuple[Any, dict[str, Any]]:
    """The HNSW index over the item vectors, and its recall against exact search."""
    cfg = run.cfg
    run.say(f"ann: building HNSW over {len(ret.item_vec):,} item embeddings")
    index = build_hnsw(ret.item_vec, m=cfg.ann.m, ef_construction=cfg.ann.ef_construction,
                       ef_search=cfg.ann.ef_search)
    q_rows = rng.choice(len(ret.user_vec), size=min(1000, len(ret.user_vec)), replace=False)
    return index, {"recall_at_100_vs_exact": ann_recall(index, ret.item_vec,
                                                         ret.user_vec[q_rows], k=100),
                   "m": cfg.ann.m, "ef_search": cfg.ann.ef_search,
                   "items": len(ret.item_vec)}


def _write_bundle_files(run: _Run, ret: _Retrieval, rk: _Ranker,
                        moderation: torch.nn.Module | None,
                        moderation_scores: np.ndarray | None, index: Any, bdir: Path) -> None:
    """Everything in the bundle but its manifest (funnel/contracts/bundle.py: the layout)."""
    import faiss

    cfg, ft = run.cfg, run.ft
    script_module(ret.two_tower.user_tower, bdir / "models/user_tower.pt")
    script_module(ret.two_tower.item_tower, bdir / "models/item_tower.pt")
    script_module(rk.model, bdir / "triton/ranker/1/model.pt")
    rk.calibration.save(bdir / CALIBRATION_FILE)
    write_triton_config(bdir / "triton/ranker/config.pbtxt", n_dense=len(ft.dense_features))
    if moderation is not None:
        script_module(moderation, bdir / "models/moderation_head.pt")
    (bdir / "index").mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(bdir / "index/items.faiss"))
    np.save(bdir / "index/item_ids.npy", run.posts["post_id"].to_numpy(np.int64),
            allow_pickle=False)
    ft.save(bdir / "features")
    run.say("export: writing the serving catalog (items, graph, engagement, seen)")
    write_catalog(bdir / "catalog", run.ds)
    # calibrated, as serving logs them: the drift monitor compares like with like
    sample = pd.DataFrame(rk.inputs["dense"][rk.test], columns=list(ft.dense_features))
    for j, t in enumerate(TASKS):
        sample[f"p_{t}"] = rk.probs[:, j]
    sample["score"] = rk.final
    sample["topic"] = rk.rows["topic"].to_numpy()[rk.test]
    sample["modality"] = rk.rows["modality"].to_numpy()[rk.test]
    if len(sample) > cfg.reference_sample_rows:
        sample = sample.sample(cfg.reference_sample_rows, random_state=cfg.seed)
    write_reference(bdir / "reference", sample.reset_index(drop=True))
    if moderation_scores is not None:
        write_moderation_reference(bdir / "reference/moderation.parquet", moderation_scores,
                                   run.ds.harm_labels, max_rows=cfg.reference_sample_rows,
                                   seed=cfg.seed)


def _manifest(run: _Run, ret: _Retrieval, rk: _Ranker, has_moderation: bool,
              metrics: dict[str, Any], *, version: str, config_source: str,
              started: float) -> dict[str, Any]:
    ds, ft = run.ds, run.ft
    manifest = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "dataset": {"name": ds.name, "users": len(run.users), "posts": len(run.posts),
                    "impressions": len(ds.impressions), "follows": len(ds.follows),
                    "has_harm_labels": ds.has_harm_labels,
                    "fingerprint": dataset_fingerprint(ds)},
        "config": {**run.cfg.model_dump(mode="json"), "source": config_source},
        "models": {
            "user_tower": {"path": "models/user_tower.pt", "inputs": list(USER_KEYS),
                           "hparams": ret.tuning.config},
            "item_tower": {"path": "models/item_tower.pt", "inputs": list(ITEM_KEYS),
                           "hparams": ret.tuning.config},
            "ranker": {"path": "triton/ranker/1/model.pt", "inputs": list(RANKER_KEYS),
                       "dense_features": list(ft.dense_features), "tasks": list(TASKS),
                       "score_weights": SCORE_WEIGHTS, "hparams": rk.tuning.config,
                       "calibration": CALIBRATION_FILE},
            "moderation": ({"path": "models/moderation_head.pt", "labels": list(ds.harm_labels),
                            "text_model": ft.text_model}
                           if has_moderation else None),
            "index": {"path": "index/items.faiss", "ids": "index/item_ids.npy",
                      "kind": "HNSWFlat", "metric": "inner_product"},
            "catalog": {"path": "catalog/", "meta": "catalog/catalog.json"},
        },
        "metrics": metrics,
        "lineage": {"funnel_version": funnel_version(), "git_commit": _git_commit(),
                    "command": _command(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "trials": {s.stage: str(s.trial_dir.name)
                               for s in (ret.tuning, rk.tuning)},
                    "train_seconds": round(time.time() - started, 1),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
    }
    manifest["quality_gate"] = quality.evaluate(metrics)
    return manifest


def dataset_fingerprint(ds: Dataset) -> str:
    """sha256 over the content of the dataset's four tables (pandas' row hashes, column
    names, in a fixed order): equal for the same data however it was loaded."""
    h = hashlib.sha256()
    for name in ("users", "follows", "posts", "impressions"):
        t = ds.table(name)
        h.update(f"{name}:{','.join(map(str, t.columns))}:{len(t)};".encode())
        h.update(pd.util.hash_pandas_object(t, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _command() -> str:
    """The command that trained the bundle, as typed (program name without its path)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    return shlex.join(argv)


def _review_examples(labels: pd.DataFrame, encoder: TextEncoder, harm_labels: tuple[str, ...]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Reviewer-labelled texts as (embeddings, labels) for the moderation training split (a
    label the export lacks, one added to the taxonomy since, counts as negative)."""
    x = encoder.encode([str(t) for t in labels["text"]]).astype(np.float32)
    y = np.stack([labels[f"label_{h}"].to_numpy(np.float32) if f"label_{h}" in labels
                  else np.zeros(len(labels), np.float32) for h in harm_labels], axis=1)
    return x, y


def _train_moderation(cfg: TrainConfig, posts: pd.DataFrame, ft: FeatureTransform,
                      work_dir: Path, say: Say,
                      on_trial: Callable[[str, dict[str, Any]], None] | None,
                      extra: tuple[np.ndarray, np.ndarray] | None = None,
                      ) -> tuple[torch.nn.Module, dict[str, Any], np.ndarray]:
    """Tune and evaluate the text head; also returns its scores on the held-out texts (the
    drift monitor's moderation reference)."""
    x = ft.post_text
    harm_labels = harm_labels_of(posts)
    y = posts[[f"label_{h}" for h in harm_labels]].to_numpy(np.float32)
    ts = posts["created_at"].astype("int64").to_numpy()
    t_test = np.quantile(ts, 1 - cfg.split.test_fraction)
    t_val = np.quantile(ts, 1 - cfg.split.test_fraction - cfg.split.val_fraction)
    tr, va, te = ts < t_val, (ts >= t_val) & (ts < t_test), ts >= t_test
    x_tr, y_tr = x[tr], y[tr]
    if extra is not None and len(extra[0]):
        # reviewer labels join the training split only: val/test stay the dataset's own
        x_tr, y_tr = np.concatenate([x_tr, extra[0]]), np.concatenate([y_tr, extra[1]])
        say(f"moderation: {len(extra[0]):,} reviewer-labelled texts added to training "
            f"({int(extra[1].max(axis=1).sum())} harmful)")
    pos = y_tr.sum(0)
    meta = {"text_dim": int(x.shape[1]), "labels": list(harm_labels),
            "pos_weight": np.clip((len(y_tr) - pos) / np.maximum(pos, 1), 1, 100).tolist()}
    mdir = work_dir / "data" / "moderation"
    save_arrays(mdir, "train_", {"x": x_tr, "y": y_tr})
    save_arrays(mdir, "val_", {"x": x[va], "y": y[va]})
    (mdir / "meta.json").write_text(json.dumps(meta))
    say(f"moderation: tuning text head ({cfg.moderation.num_samples} trials, "
        f"{len(y_tr):,} texts, {int(pos.sum())} positive labels)")
    res = tune_stage(cfg.moderation, data_dir=mdir, work_dir=work_dir,
                     resources=cfg.resources, seed=cfg.seed, on_result=on_trial)
    model = load_best(res, build_moderation, meta)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(x[te]))).numpy()
    per_label = {h: {"roc_auc": safe_auc(y[te][:, j], scores[:, j]),
                     "pr_auc": safe_pr_auc(y[te][:, j], scores[:, j]),
                     "positives": int(y[te][:, j].sum())} for j, h in enumerate(harm_labels)}
    rocs = [v["roc_auc"] for v in per_label.values() if v["roc_auc"] is not None]
    prs = [v["pr_auc"] for v in per_label.values() if v["pr_auc"] is not None]
    texts = posts["text"].astype(str).to_numpy()
    base = tfidf_baseline(texts[tr], y[tr], texts[te], y[te], labels=harm_labels)
    roc_macro = float(np.mean(rocs)) if rocs else None
    out: dict[str, Any] = {
           "roc_auc_macro": roc_macro,
           "pr_auc_macro": float(np.mean(prs)) if prs else None,
           "per_label": per_label, "tuning": tuning_summary(res),
           "baselines": {"tfidf_logreg": base},
           "review_label_rows": 0 if extra is None else len(extra[0])}
    say(f"moderation: macro ROC-AUC {_fmt(roc_macro)} (tf-idf logreg "
        f"{_fmt(base['roc_auc_macro'])})")
    return model, out, scores


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def tfidf_baseline(train_texts: np.ndarray, y_train: np.ndarray, test_texts: np.ndarray,
                   y_test: np.ndarray, *, labels: tuple[str, ...] = HARM_LABELS
                   ) -> dict[str, Any]:
    """The text head's same-run baseline: word 1-2-gram TF-IDF and one balanced logistic
    regression per label, fitted on the same training texts, judged on the same test texts
    (macro ROC-AUC over the labels with both classes in train and test)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_tr = vec.fit_transform(train_texts)
    x_te = vec.transform(test_texts)
    per_label: dict[str, float | None] = {}
    for j, h in enumerate(labels):
        if len(np.unique(y_train[:, j])) < 2:
            per_label[h] = None
            continue
        clf = LogisticRegression(class_weight="balanced", max_iter=1000)
        clf.fit(x_tr, y_train[:, j])
        per_label[h] = safe_auc(y_test[:, j], clf.predict_proba(x_te)[:, 1])
    rocs = [v for v in per_label.values() if v is not None]
    return {"roc_auc_macro": float(np.mean(rocs)) if rocs else None,
            "per_label": per_label}


def _with_sampled_negatives(imp: pd.DataFrame, post_ids: np.ndarray,
                            rng: np.random.Generator) -> pd.DataFrame:
    """Add NEGATIVES_PER_POSITIVE unclicked random posts to each request (implicit data)."""
    neg = imp.loc[imp.index.repeat(NEGATIVES_PER_POSITIVE)].copy()
    neg["post_id"] = rng.choice(post_ids, size=len(neg))
    for col in (*ENGAGEMENT_TASKS, "report"):
        neg[col] = False
    neg["dwell_s"] = np.float32(0.0)
    return pd.concat([imp, neg], ignore_index=True)
