"""Writing the bundle's pieces: TorchScript models, the Triton config, the faiss index and
the drift references. `training.pipeline` calls these; `funnel.contracts.bundle` checksums them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from funnel.contracts.model_io import TASKS

TRITON_CONFIG = """name: "ranker"
backend: "pytorch"
max_batch_size: {max_batch}
input [
  {{ name: "dense", data_type: TYPE_FP32, dims: [ {n_dense} ] }},
  {{ name: "user_hash", data_type: TYPE_INT64, dims: [ ] }},
  {{ name: "item_hash", data_type: TYPE_INT64, dims: [ ] }},
  {{ name: "topic", data_type: TYPE_INT64, dims: [ ] }},
  {{ name: "modality", data_type: TYPE_INT64, dims: [ ] }},
  {{ name: "age_band", data_type: TYPE_INT64, dims: [ ] }}
]
output [
  {{ name: "logits", data_type: TYPE_FP32, dims: [ {n_tasks} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ 256, 512 ]
  max_queue_delay_microseconds: 2000
}}
instance_group [ {{ kind: KIND_AUTO, count: 1 }} ]
parameters {{ key: "tasks" value: {{ string_value: "{tasks}" }} }}
"""


def script_module(module: torch.nn.Module, path: Path) -> Path:
    """Save `module` as TorchScript (eval mode, CPU): loadable without Python class code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module.cpu().eval())
    scripted.save(str(path))
    return path


def write_triton_config(path: Path, *, n_dense: int, max_batch: int = 1024) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TRITON_CONFIG.format(max_batch=max_batch, n_dense=n_dense,
                                         n_tasks=len(TASKS), tasks=",".join(TASKS)))
    return path


def build_hnsw(vectors: np.ndarray, *, m: int, ef_construction: int,
               ef_search: int) -> faiss.IndexHNSWFlat:
    """HNSW over unit vectors with inner-product metric (= cosine)."""
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def ann_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, *,
               k: int) -> float:
    """Mean recall@k of `index` against exact inner-product search over `vectors`."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, len(vectors))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = [len(set(t.tolist()) & set(g.tolist())) / k for t, g in zip(truth, got, strict=True)]
    return float(np.mean(hits))


def reference_stats(sample: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Per-column statistics the drift monitors compare live windows against."""
    stats: dict[str, dict[str, object]] = {}
    for col in sample.columns:
        s = sample[col]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            stats[col] = {"kind": "categorical",
                          "frequencies": {str(k): float(v) for k, v in
                                          s.astype(str).value_counts(normalize=True).items()}}
            continue
        v = s.to_numpy(np.float64)
        q = np.quantile(v, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]).tolist()
        counts, edges = np.histogram(v, bins=20)
        stats[col] = {"kind": "numerical", "count": len(v), "mean": float(v.mean()),
                      "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
                      "quantiles": dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"],
                                            q, strict=True)),
                      "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return stats


def write_reference(directory: Path, sample: pd.DataFrame) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    sample_path = directory / "sample.parquet"
    stats_path = directory / "stats.json"
    sample.to_parquet(sample_path, index=False)
    stats_path.write_text(json.dumps(reference_stats(sample), indent=2, sort_keys=True))
    return [sample_path, stats_path]


def write_moderation_reference(path: Path, scores: np.ndarray, labels: Sequence[str], *,
                               max_rows: int, seed: int) -> Path:
    """The moderation head's per-label scores (`score_<label>`) on held-out texts: what the
    drift monitor compares live moderation scores against. At most `max_rows` rows (a seeded
    sample), float32: a few tens of kB."""
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores: shape {scores.shape} does not match {len(labels)} labels")
    frame = pd.DataFrame(scores.astype(np.float32), columns=[f"score_{lb}" for lb in labels])
    if len(frame) > max_rows:
        frame = frame.sample(max_rows, random_state=seed).reset_index(drop=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def new_bundle_dir(out_dir: Path) -> Path:
    """OUT/v<UTC timestamp> (with a millisecond suffix when that exists already)."""
    version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")
    bdir = out_dir / version
    if bdir.exists():
        bdir = out_dir / f"{version}-{int(time.time() * 1000) % 1000:03d}"
    return bdir


def funnel_version() -> str:
    """The installed funnel package's version (0+unknown from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("funnel")
    except PackageNotFoundError:
        return "0+unknown"
