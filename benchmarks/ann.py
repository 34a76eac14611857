"""ANN benchmark: faiss HNSW vs exact inner-product search over the large profile's items.

Item embeddings are produced the way serving produces them: the bundle's fitted feature
transform and TorchScript item tower applied to the 1M posts of the `large` synthetic
profile. Both indexes answer the same user-tower queries, single-threaded, side by side in
this process; the result is recall@100 of HNSW against exact search and the QPS ratio.

    python -m benchmarks.ann --bundle artifacts/latest [--queries 500] [--ef-search 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import faiss
import numpy as np
import torch

from training.bundle import verify_bundle
from training.data.synthetic import generate
from training.export import build_hnsw
from training.features import FeatureTransform
from training.loops import ITEM_KEYS, USER_KEYS


def _embed(model: torch.jit.ScriptModule, arrays: dict[str, np.ndarray], keys: tuple[str, ...],
           batch: int = 65_536) -> np.ndarray:
    n = len(arrays[keys[0]])
    out = []
    with torch.no_grad():
        for s in range(0, n, batch):
            out.append(model(*(torch.from_numpy(arrays[k][s:s + batch]) for k in keys)).numpy())
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", default="artifacts/latest")
    ap.add_argument("--profile", default="large")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args()

    b = verify_bundle(args.bundle)
    ft = FeatureTransform.load(b.path / "features")
    t0 = time.time()
    ds = generate(args.profile, seed=0)
    print(f"generated {args.profile}: {len(ds.posts):,} posts in {time.time() - t0:.0f}s")
    from training.text import MiniLMEncoder

    # Large-profile posts are new to the bundle: encode their (highly repetitive) text.
    enc = MiniLMEncoder()
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    ft.post_ids = posts["post_id"].to_numpy(np.int64)
    ft.post_text = enc.encode(posts["text"].tolist())
    item_tower = torch.jit.load(str(b.file("models/item_tower.pt")))
    user_tower = torch.jit.load(str(b.file("models/user_tower.pt")))
    torch.set_num_threads(2)
    items = _embed(item_tower, ft.item_features(posts), ITEM_KEYS)
    rng = np.random.default_rng(0)
    users = ds.users.sample(args.queries, random_state=0)
    queries = _embed(user_tower, ft.user_features(users), USER_KEYS)
    print(f"embedded {len(items):,} items (dim {items.shape[1]}) in {time.time() - t0:.0f}s")

    faiss.omp_set_num_threads(2)
    t1 = time.time()
    hnsw = build_hnsw(items, m=args.m, ef_construction=args.ef_construction,
                      ef_search=args.ef_search[0])
    build_s = time.time() - t1
    exact = faiss.IndexFlatIP(items.shape[1])
    exact.add(items)

    faiss.omp_set_num_threads(1)  # the measurement is single-threaded, both sides
    def timed(index: faiss.Index) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        ids = np.empty((len(queries), args.k), dtype=np.int64)
        for i in range(len(queries)):  # one query at a time, as a serving replica issues them
            ids[i] = index.search(queries[i:i + 1], args.k)[1][0]
        return ids, len(queries) / (time.perf_counter() - start)

    truth, exact_qps = timed(exact)
    rows = []
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        got, qps = timed(hnsw)
        recall = float(np.mean([len(set(t) & set(g)) / args.k
                                for t, g in zip(truth, got, strict=True)]))
        rows.append({"ef_search": ef, "recall_at_100": round(recall, 4),
                     "hnsw_qps": round(qps, 1), "exact_qps": round(exact_qps, 1),
                     "speedup": round(qps / exact_qps, 1)})
        print(json.dumps(rows[-1]))
    result = {"date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
              "cpus": __import__("os").cpu_count(), "items": len(items), "dim": items.shape[1],
              "m": args.m, "ef_construction": args.ef_construction,
              "build_s_2_threads": round(build_s, 1), "queries": len(queries),
              "bundle": b.version, "results": rows}
    del rng
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
