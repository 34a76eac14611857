"""A serving bundle for a bigger catalog, built from a trained bundle's models.

Training on the `large` profile (1M posts) does not fit a 2-core benchmark run, and serving
latency depends on the catalog's size, not on how well the models were trained. So the
benchmark keeps a trained bundle's models (towers, ranker) and rebuilds everything that
scales with the catalog for the `large` profile: the fitted feature transform (text
embeddings, counters, histories), the item embeddings and their HNSW index, and the serving
catalog. The result is a regular, checksummed bundle whose manifest says what it was derived
from; it is cached, so later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from funnel.contracts.bundle import VerifiedBundle, verify_bundle, write_manifest
from funnel.contracts.errors import BundleError
from funnel.contracts.model_io import ITEM_KEYS
from training.catalog import write_catalog
from training.data.synthetic import generate
from training.export import build_hnsw
from training.features import FeatureTransform

Say = Callable[[str], None]


def build_serving_bundle(base: str | Path, profile: str, out_dir: Path, *, m: int = 32,
                         ef_construction: int = 100, say: Say = print) -> VerifiedBundle:
    b = verify_bundle(base)
    target = out_dir / f"{b.version}-{profile}"
    if (target / "manifest.json").is_file():
        say(f"serving bundle {target} exists; verifying")
        return verify_bundle(target)
    from training.text import MiniLMEncoder

    started = time.time()
    ds = generate(profile, seed=0, progress=lambda msg: say(f"generating {profile}: {msg}"))
    say(f"generated {len(ds.posts):,} posts, {len(ds.impressions):,} impressions; fitting "
        "features")
    ft = FeatureTransform.fit(ds, np.ones(len(ds.impressions), bool), MiniLMEncoder())
    base_ft = FeatureTransform.load(b.file("features/transform.json").parent)
    if (ft.vocabs != base_ft.vocabs or ft.id_buckets != base_ft.id_buckets
            or ft.author_buckets != base_ft.author_buckets):
        raise BundleError(f"{b.path}: its feature vocabularies differ from the {profile} "
                          "profile's; its models cannot embed this catalog")
    tmp = out_dir / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("models", "triton", "reference"):
        shutil.copytree(b.path / sub, tmp / sub)
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    say(f"embedding {len(posts):,} items with the bundle's item tower")
    tower = torch.jit.load(str(b.file("models/item_tower.pt"))).eval()
    arrays = ft.item_features(posts)
    torch.set_num_threads(2)
    chunks = []
    with torch.no_grad():
        for s in range(0, len(posts), 65_536):
            chunks.append(tower(*(torch.from_numpy(arrays[k][s:s + 65_536])
                                  for k in ITEM_KEYS)).numpy())
    vectors = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    say(f"building HNSW (M={m}, efConstruction={ef_construction}) over {len(vectors):,} "
        "vectors")
    import faiss

    index = build_hnsw(vectors, m=m, ef_construction=ef_construction,
                       ef_search=int(b.manifest["config"]["ann"]["ef_search"]))
    (tmp / "index").mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(tmp / "index/items.faiss"))
    np.save(tmp / "index/item_ids.npy", posts["post_id"].to_numpy(np.int64),
            allow_pickle=False)
    ft.save(tmp / "features")
    say("writing the serving catalog")
    write_catalog(tmp / "catalog", ds)
    manifest = {k: v for k, v in b.manifest.items() if k != "files"}
    manifest["version"] = target.name
    manifest["dataset"] = {"name": f"synthetic-{profile}", "users": len(ds.users),
                           "posts": len(ds.posts), "impressions": len(ds.impressions),
                           "follows": len(ds.follows), "has_harm_labels": ds.has_harm_labels}
    manifest["models"] = {**b.manifest["models"],
                          "catalog": {"path": "catalog/", "meta": "catalog/catalog.json"}}
    manifest["lineage"] = {**b.manifest["lineage"], "derived_from": b.version,
                           "derived_for": f"serving benchmark on the {profile} profile",
                           "build_seconds": round(time.time() - started, 1)}
    manifest["metrics"] = {"note": f"models trained on {b.manifest['dataset']['name']}; "
                                   "see the base bundle for their metrics"}
    write_manifest(tmp, manifest)
    tmp.rename(target)
    say(f"serving bundle {target} built in {time.time() - started:.0f}s")
    (out_dir / "latest.json").write_text(json.dumps({"bundle": str(target)}))
    return verify_bundle(target)
