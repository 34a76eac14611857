"""Per-worker training loops, run by Ray Train `TorchTrainer` workers.

Each loop reads its stage's arrays from `config["data_dir"]` (plain .npy written by the
driver, loaded with allow_pickle=False), trains on this worker's shard, evaluates on the
validation split after every epoch and reports the metric to Ray Train (and through
`TuneReportCallback` to Ray Tune, whose ASHA scheduler may stop the trial early). Rank 0
keeps the best epoch's weights as safetensors in `config["trial_dir"]`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file

from funnel.contracts.model_io import ITEM_KEYS, RANKER_KEYS, USER_KEYS
from training.evaluation import full_ranking_metrics, grouped_ndcg, safe_auc
from training.models.moderation import ModerationHead, focal_loss, weighted_bce
from training.models.ranker import MultiTaskRanker, multitask_loss
from training.models.two_tower import ItemTower, TwoTower, UserTower, in_batch_logq_loss


def load_arrays(data_dir: str | Path, prefix: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    d = Path(data_dir)
    return {k: np.load(d / f"{prefix}{k}.npy", allow_pickle=False) for k in keys}


def save_arrays(data_dir: Path, prefix: str, arrays: dict[str, np.ndarray]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(data_dir / f"{prefix}{k}.npy", np.ascontiguousarray(v), allow_pickle=False)


def _t(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


def build_two_tower(config: dict[str, Any], meta: dict[str, Any]) -> TwoTower:
    common = {"text_dim": meta["text_dim"], "emb_dim": int(config["emb_dim"]),
              "hidden": int(config["hidden"]), "out_dim": int(config["out_dim"]),
              "dropout": float(config["dropout"])}
    return TwoTower(
        UserTower(id_buckets=meta["id_buckets"], n_age=meta["n_age"],
                  n_country=meta["n_country"], n_language=meta["n_language"], **common),
        ItemTower(id_buckets=meta["id_buckets"], author_buckets=meta["author_buckets"],
                  n_topic=meta["n_topic"], n_modality=meta["n_modality"], **common),
        temperature=float(config["temperature"]))


def build_ranker(config: dict[str, Any], meta: dict[str, Any]) -> MultiTaskRanker:
    return MultiTaskRanker(n_dense=meta["n_dense"], id_buckets=meta["id_buckets"],
                           n_topic=meta["n_topic"], n_modality=meta["n_modality"],
                           n_age=meta["n_age"], emb_dim=int(config["emb_dim"]),
                           hidden=int(config["hidden"]), n_layers=int(config["n_layers"]),
                           dropout=float(config["dropout"]))


def build_moderation(config: dict[str, Any], meta: dict[str, Any]) -> ModerationHead:
    return ModerationHead(text_dim=meta["text_dim"], hidden=int(config["hidden"]),
                          n_labels=len(meta["labels"]), dropout=float(config["dropout"]))


@torch.no_grad()
def embed(tower: torch.nn.Module, arrays: dict[str, np.ndarray], keys: tuple[str, ...],
          *, batch: int = 8192, device: torch.device | None = None) -> np.ndarray:
    device = device or torch.device("cpu")
    tower.eval()
    n = len(arrays[keys[0]])
    out = [tower(*(_t(arrays[k][s:s + batch], device) for k in keys)).cpu().numpy()
           for s in range(0, n, batch)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _split_by_user(pairs: np.ndarray, n_users: int) -> list[np.ndarray]:
    order = np.argsort(pairs[:, 0], kind="stable")
    p = pairs[order]
    bounds = np.searchsorted(p[:, 0], np.arange(n_users + 1))
    return [p[bounds[u]:bounds[u + 1], 1] for u in range(n_users)]


def retrieval_metric(user_vec: np.ndarray, item_vec: np.ndarray, train_pairs: np.ndarray,
                     eval_pairs: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    n_users = len(user_vec)
    return full_ranking_metrics(lambda rows: user_vec[rows] @ item_vec.T,
                                train_items=_split_by_user(train_pairs, n_users),
                                test_items=_split_by_user(eval_pairs, n_users), ks=ks)


# ---- the shared epoch driver ---------------------------------------------------------------
def _worker_env(config: dict[str, Any]) -> tuple[int, int, torch.device]:
    import ray.train
    import ray.train.torch

    torch.manual_seed(int(config.get("seed", 0)))
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def _run(config: dict[str, Any], model: torch.nn.Module, n_rows: int,
         step: Callable[[torch.nn.Module, np.ndarray], torch.Tensor],
         evaluate: Callable[[torch.nn.Module], float], metric: str,
         batches: Callable[[np.random.Generator, np.ndarray, int], list[np.ndarray]]
         | None = None) -> None:
    """The epoch loop every stage shares: AdamW over `step`'s loss, `evaluate` after each
    epoch, the best epoch's weights kept, one Tune report per epoch. `batches` orders an
    epoch's rows into batches (default: shuffled, in order)."""
    import ray.train
    import ray.train.torch

    rank, world, _device = _worker_env(config)
    wrapped = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=float(config["lr"]),
                            weight_decay=float(config["weight_decay"]))
    rng = np.random.default_rng(int(config.get("seed", 0)) + rank)
    bs = int(config["batch_size"])
    best = -np.inf
    trial_dir = Path(config["trial_dir"])
    for epoch in range(int(config["max_epochs"])):
        wrapped.train()
        shard = rng.permutation(n_rows)[rank::world]
        losses = []
        order = (batches(rng, shard, bs) if batches is not None
                 else [shard[s:s + bs] for s in range(0, len(shard) - 1, bs)])
        for idx in order:
            if len(idx) < 2:
                continue
            loss = step(wrapped, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        value = evaluate(model) if rank == 0 else 0.0
        if rank == 0 and value > best:
            best = value
            trial_dir.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(trial_dir / "model.safetensors"))
            (trial_dir / "best.json").write_text(json.dumps({"epoch": epoch + 1, metric: value}))
        ray.train.report({metric: value, "train_loss": float(np.mean(losses or [0.0])),
                          "epoch": epoch + 1, "trial_dir": str(trial_dir)})


# ---- stage loops -------------------------------------------------------------------------------
def retrieval_loop(config: dict[str, Any]) -> None:
    d = config["data_dir"]
    meta = json.loads(Path(d, "meta.json").read_text())
    users = load_arrays(d, "user_", USER_KEYS)
    items = load_arrays(d, "item_", ITEM_KEYS)
    pairs = np.load(Path(d, "train_pairs.npy"))
    val_pairs = np.load(Path(d, "val_pairs.npy"))
    log_q = np.load(Path(d, "log_q.npy"))
    _rank, _world, device = _worker_env(config)
    model = build_two_tower(config, meta).to(device)
    temperature = float(config["temperature"])

    def step(m: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        u_idx, i_idx = pairs[idx, 0], pairs[idx, 1]
        u, v = m(*(_t(users[k][u_idx], device) for k in USER_KEYS),
                 *(_t(items[k][i_idx], device) for k in ITEM_KEYS))
        return in_batch_logq_loss(u, v, _t(log_q[i_idx], device), temperature=temperature,
                                  item_ids=_t(i_idx, device))

    def evaluate(m: torch.nn.Module) -> float:
        tt = cast(TwoTower, m)
        uv = embed(tt.user_tower, users, USER_KEYS, device=device)
        iv = embed(tt.item_tower, items, ITEM_KEYS, device=device)
        k = int(meta["val_k"])
        return retrieval_metric(uv, iv, pairs, val_pairs, (k,))[f"recall_at_{k}"]

    _run(config, model, len(pairs), step, evaluate, "val_recall")


def ranker_loop(config: dict[str, Any]) -> None:
    d = config["data_dir"]
    meta = json.loads(Path(d, "meta.json").read_text())
    train = load_arrays(d, "train_", (*RANKER_KEYS, "labels"))
    val = load_arrays(d, "val_", (*RANKER_KEYS, "labels", "groups", "gains"))
    _rank, _world, device = _worker_env(config)
    model = build_ranker(config, meta).to(device)
    weights = _t(np.asarray(meta["task_weights"], np.float32), device)

    def step(m: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        logits = m(*(_t(train[k][idx], device) for k in RANKER_KEYS))
        return multitask_loss(logits, _t(train["labels"][idx], device), weights)

    def evaluate(m: torch.nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            logits = m(*(_t(val[k], device) for k in RANKER_KEYS)).cpu().numpy()
        score = (1.0 / (1.0 + np.exp(-logits))) @ np.asarray(meta["score_weights"], np.float32)
        return grouped_ndcg(val["groups"], score, val["gains"], k=10)

    _run(config, model, len(train["labels"]), step, evaluate, "val_ndcg")


def moderation_loop(config: dict[str, Any]) -> None:
    d = config["data_dir"]
    meta = json.loads(Path(d, "meta.json").read_text())
    train = load_arrays(d, "train_", ("x", "y"))
    val = load_arrays(d, "val_", ("x", "y"))
    _rank, _world, device = _worker_env(config)
    model = build_moderation(config, meta).to(device)
    pos_weight = _t(np.asarray(meta["pos_weight"], np.float32), device)
    loss_kind = str(config["loss"])
    gamma = float(config["focal_gamma"])

    def step(m: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        logits = m(_t(train["x"][idx], device))
        y = _t(train["y"][idx], device)
        if loss_kind == "focal":
            return focal_loss(logits, y, gamma=gamma)
        return weighted_bce(logits, y, pos_weight)

    def evaluate(m: torch.nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            scores = m(_t(val["x"], device)).cpu().numpy()
        aucs = [a for j in range(val["y"].shape[1])
                if (a := safe_auc(val["y"][:, j], scores[:, j])) is not None]
        return float(np.mean(aucs)) if aucs else 0.0

    _run(config, model, len(train["y"]), step, evaluate, "val_roc_auc")


def length_batches(lengths: np.ndarray) -> Callable[[np.random.Generator, np.ndarray, int],
                                                      list[np.ndarray]]:
    """Batches of texts of about the same length, in a shuffled order: each batch is padded
    to its own longest text, so little compute goes to padding (about 2x on tweets)."""
    def order(rng: np.random.Generator, shard: np.ndarray, bs: int) -> list[np.ndarray]:
        by_len = shard[np.lexsort((rng.random(len(shard)), lengths[shard]))]
        out = [by_len[s:s + bs] for s in range(0, len(by_len), bs)]
        return [out[i] for i in rng.permutation(len(out))]
    return order


class UpperLayers(torch.nn.Module):
    """The trainable part of a `MiniLMClassifier` as a module of its own (what DDP wraps):
    cached lower-layer hidden states and their mask -> logits."""

    def __init__(self, clf: torch.nn.Module) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return cast(Any, self.clf).upper(h, mask)


def build_finetune(config: dict[str, Any], meta: dict[str, Any]) -> torch.nn.Module:
    from training.models.minilm import MiniLMClassifier

    return MiniLMClassifier(n_labels=len(meta["labels"]), hidden=int(meta["hidden"]),
                            head_dropout=float(meta["head_dropout"]),
                            trainable_layers=int(meta["trainable_layers"]),
                            dropout=float(config["dropout"]))


def upper_scores(m: torch.nn.Module, h: np.ndarray, mask: np.ndarray, *,
                 device: torch.device | None = None, batch: int = 256) -> np.ndarray:
    """Logits of `UpperLayers` over cached hidden states, by length-sorted batches."""
    device = device or torch.device("cpu")
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(lengths), 0), dtype=np.float32)
    m.eval()
    with torch.no_grad():
        parts = []
        for s in range(0, len(order), batch):
            idx = np.sort(order[s:s + batch])
            n = int(lengths[idx].max())
            parts.append((idx, m(_t(np.asarray(h[idx, :n], np.float32), device),
                                 _t(np.ascontiguousarray(mask[idx, :n]), device)).cpu().numpy()))
        if parts:
            out = np.zeros((len(lengths), parts[0][1].shape[1]), dtype=np.float32)
            for idx, logits in parts:
                out[idx] = logits
    return out


def moderation_finetune_loop(config: dict[str, Any]) -> None:
    """MiniLM's top layers and the head, over the cached output of the frozen layers."""
    from safetensors.torch import load_file

    from training.evaluation import safe_pr_auc

    d = config["data_dir"]
    meta = json.loads(Path(d, "meta.json").read_text())
    train = {k: np.load(Path(d, f"train_{k}.npy"), mmap_mode="r") for k in ("h", "mask", "y")}
    val = {k: np.load(Path(d, f"val_{k}.npy"), mmap_mode="r") for k in ("h", "mask", "y")}
    lengths = np.asarray(train["mask"]).sum(1)
    _rank, _world, device = _worker_env(config)
    clf = build_finetune(config, meta)
    clf.load_state_dict(load_file(str(Path(d, "start.safetensors"))))
    cast(Any, clf).freeze_lower()
    model = UpperLayers(clf).to(device)
    pos_weight = _t(np.asarray(meta["pos_weight"], np.float32), device)
    loss_kind = str(config["loss"])
    gamma = float(config["focal_gamma"])
    val_hard = (np.asarray(val["y"]) >= 0.5).astype(np.float32)

    def step(m: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        idx = np.sort(idx)
        n = int(lengths[idx].max())
        logits = m(_t(np.asarray(train["h"][idx, :n], np.float32), device),
                   _t(np.ascontiguousarray(train["mask"][idx, :n]), device))
        y = _t(np.asarray(train["y"][idx], np.float32), device)
        if loss_kind == "focal":
            return focal_loss(logits, y, gamma=gamma)
        return weighted_bce(logits, y, pos_weight)

    def evaluate(m: torch.nn.Module) -> float:
        scores = upper_scores(m, val["h"], np.asarray(val["mask"]), device=device)
        aps = [a for j in range(val_hard.shape[1])
               if (a := safe_pr_auc(val_hard[:, j], scores[:, j])) is not None]
        return float(np.mean(aps)) if aps else 0.0

    _run(config, model, len(lengths), step, evaluate, "val_pr_auc",
         batches=length_batches(lengths))


LOOPS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "moderation_finetune": (moderation_finetune_loop, "val_pr_auc"),
    "retrieval": (retrieval_loop, "val_recall"),
    "ranker": (ranker_loop, "val_ndcg"),
    "moderation": (moderation_loop, "val_roc_auc"),
}


def threads_per_worker(cpus: float) -> int:
    """Torch threads for a worker given `cpus` (0.95 -> 1, 1.9 -> 2: a sliver is left for
    the trial's own driver)."""
    return max(1, min(math.ceil(cpus - 0.05), os.cpu_count() or 1))
