"""ANN benchmark: faiss HNSW vs exact inner-product search over the large profile's items.

Item embeddings are produced the way serving produces them: the bundle's fitted feature
transform and TorchScript item tower applied to the 1M posts of the `large` synthetic
profile. Both indexes answer the same user-tower queries, single-threaded, side by side in
this process; the result is recall@100 of HNSW against exact search and the QPS ratio.

    python -m benchmarks.ann --bundle artifacts/latest [--queries 500] [--m 32 48]
        [--ef-search 128 256 512] [--cache data/ann-cache] [--out benchmarks/results/ann.json]

Two recalls are reported. `recall_at_100` is the strict one: the share of exact search's
100 ids that HNSW returns. `recall_at_100_ties` counts a returned item as correct when its
score reaches the exact 100th score (ann-benchmarks' definition, epsilon 1e-6): items with
identical embeddings tie, and exact search breaks ties arbitrarily.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import torch

from funnel.contracts.bundle import verify_bundle
from funnel.contracts.model_io import ITEM_KEYS, USER_KEYS
from training.data.synthetic import generate
from training.export import build_hnsw
from training.features import FeatureTransform


def _embed(model: torch.jit.ScriptModule, arrays: dict[str, np.ndarray], keys: tuple[str, ...],
           batch: int = 65_536) -> np.ndarray:
    n = len(arrays[keys[0]])
    out = []
    with torch.no_grad():
        for s in range(0, n, batch):
            out.append(model(*(torch.from_numpy(arrays[k][s:s + batch]) for k in keys)).numpy())
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def _vectors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """(item vectors, query vectors, bundle version), from `--cache` when it holds them."""
    b = verify_bundle(args.bundle)
    cache = Path(args.cache) if args.cache else None
    if cache and (cache / "items.npy").is_file():
        meta = json.loads((cache / "meta.json").read_text())
        if meta == {"bundle": b.version, "profile": args.profile, "queries": args.queries}:
            print(f"embeddings from cache {cache}")
            return (np.load(cache / "items.npy", allow_pickle=False),
                    np.load(cache / "queries.npy", allow_pickle=False), b.version)
    ft = FeatureTransform.load(b.path / "features")
    t0 = time.time()
    ds = generate(args.profile, seed=0)
    print(f"generated {args.profile}: {len(ds.posts):,} posts in {time.time() - t0:.0f}s")
    from training.text import MiniLMEncoder

    # Large-profile posts are new to the bundle: encode their (highly repetitive) text.
    enc = MiniLMEncoder()
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    ft.set_posts(posts["post_id"].to_numpy(np.int64), posts["text"], enc)
    item_tower = torch.jit.load(str(b.file("models/item_tower.pt")))
    user_tower = torch.jit.load(str(b.file("models/user_tower.pt")))
    torch.set_num_threads(2)
    items = _embed(item_tower, ft.item_features(posts), ITEM_KEYS)
    users = ds.users.sample(args.queries, random_state=0)
    queries = _embed(user_tower, ft.user_features(users), USER_KEYS)
    print(f"embedded {len(items):,} items (dim {items.shape[1]}) in {time.time() - t0:.0f}s")
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "items.npy", items, allow_pickle=False)
        np.save(cache / "queries.npy", queries, allow_pickle=False)
        (cache / "meta.json").write_text(json.dumps(
            {"bundle": b.version, "profile": args.profile, "queries": args.queries}))
    return items, queries, b.version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", default="artifacts/latest")
    ap.add_argument("--profile", default="large")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--m", type=int, nargs="+", default=[32])
    ap.add_argument("--cache", default=None, help="directory to keep the embeddings in")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args()

    items, queries, version = _vectors(args)
    exact = faiss.IndexFlatIP(items.shape[1])
    exact.add(items)
    faiss.omp_set_num_threads(1)  # the measurement is single-threaded, both sides

    def timed(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, float]:
        start = time.perf_counter()
        ids = np.empty((len(queries), args.k), dtype=np.int64)
        scores = np.empty((len(queries), args.k), dtype=np.float32)
        for i in range(len(queries)):  # one query at a time, as a serving replica issues them
            d, n = index.search(queries[i:i + 1], args.k)
            scores[i], ids[i] = d[0], n[0]
        return ids, scores, len(queries) / (time.perf_counter() - start)

    truth, truth_scores, exact_qps = timed(exact)
    print(f"exact search: {exact_qps:.1f} QPS")
    kth = truth_scores[:, -1:] - 1e-6
    rows = []
    for m in args.m:
        faiss.omp_set_num_threads(2)
        t1 = time.time()
        hnsw = build_hnsw(items, m=m, ef_construction=args.ef_construction,
                          ef_search=args.ef_search[0])
        build_s = time.time() - t1
        print(f"HNSW M={m}: built in {build_s:.0f}s on 2 threads")
        faiss.omp_set_num_threads(1)
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            got, got_scores, qps = timed(hnsw)
            recall = float(np.mean([len(set(t) & set(g)) / args.k
                                    for t, g in zip(truth, got, strict=True)]))
            ties = float(np.mean(got_scores >= kth))
            rows.append({"m": m, "ef_search": ef, "recall_at_100": round(recall, 4),
                         "recall_at_100_ties": round(ties, 4), "hnsw_qps": round(qps, 1),
                         "exact_qps": round(exact_qps, 1), "speedup": round(qps / exact_qps, 1),
                         "build_s_2_threads": round(build_s, 1)})
            print(json.dumps(rows[-1]))
        del hnsw
    result = {"date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "faiss": faiss.__version__, "items": len(items),
              "dim": int(items.shape[1]), "ef_construction": args.ef_construction,
              "queries": len(queries), "bundle": version, "results": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
