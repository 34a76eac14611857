"""How much a retrieval model can beat popularity on a synthetic profile: Recall@50 on the
training pipeline's own split (time split, train+val seen, test held out), for

- `popularity`: the pipeline's baseline (clicks in train+val);
- `topic_popularity`: log(1 + clicks) + a * log P(topic | user), the user's smoothed topic
  share of their own seen clicks, `a` in TOPIC_WEIGHTS (no model: a ceiling for what a
  topic-aware retrieval can add cheaply);
- `hidden_affinity`: log(1 + clicks) + the generator's true affinity (HiddenTruth), an upper
  bound no trained model reaches.

    python -m benchmarks.retrieval_headroom --profile demo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.config import profile_config
from training.data.synthetic import generate_with_truth
from training.evaluation import full_ranking_metrics, popularity_scores
from training.loops import _split_by_user
from training.pipeline import _pairs, make_split

TOPIC_WEIGHTS = (0.25, 0.5, 1.0)
K = 50


def headroom(profile: str, seed: int) -> dict[str, Any]:
    ds, truth = generate_with_truth(profile, seed=seed)
    split = make_split(ds, profile_config(profile))
    users = ds.users.sort_values("user_id").reset_index(drop=True)
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    uix, pix = pd.Index(users["user_id"]), pd.Index(posts["post_id"])
    seen = np.concatenate([_pairs(ds.impressions, split.train, uix, pix),
                           _pairs(ds.impressions, split.val, uix, pix)])
    test = _pairs(ds.impressions, split.test, uix, pix)
    n_users, n_posts = len(users), len(posts)
    train_items, test_items = _split_by_user(seen, n_users), _split_by_user(test, n_users)

    def recall(score: Any) -> float:
        return full_ranking_metrics(score, train_items=train_items, test_items=test_items,
                                    ks=(K,))[f"recall_at_{K}"]

    pop = popularity_scores(seen[:, 1], n_posts)
    log_clicks = np.log1p(np.bincount(seen[:, 1], minlength=n_posts))[None, :]
    topics = pd.factorize(posts["topic"])[0]
    n_topics = int(topics.max()) + 1
    share = np.zeros((n_users, n_topics))
    np.add.at(share, (seen[:, 0], topics[seen[:, 1]]), 1.0)
    share = (share + 0.5) / (share.sum(1, keepdims=True) + 0.5 * n_topics)
    item_index = np.arange(n_posts)

    def affinity(rows: np.ndarray) -> np.ndarray:
        u = np.repeat(rows, n_posts)
        return truth.affinity(u, np.tile(item_index, len(rows))).reshape(len(rows), n_posts)

    out: dict[str, Any] = {
        "popularity": recall(lambda r: np.tile(pop, (len(r), 1))),
        "topic_popularity": {str(a): recall(
            lambda r, a=a: log_clicks + a * np.log(share[r][:, topics]))
            for a in TOPIC_WEIGHTS},
        "hidden_affinity": recall(lambda r: log_clicks + affinity(r)),
        "test_pairs": len(test), "seen_pairs": len(seen), "posts": n_posts,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_headroom",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path,
                   default=Path("benchmarks/results/retrieval_headroom.json"))
    a = p.parse_args(argv)
    started = time.time()
    seeds = {}
    for s in a.seeds:
        seeds[str(s)] = r = headroom(a.profile, s)
        print(f"seed {s}: popularity {r['popularity']:.4f}, topic-popularity "
              + ", ".join(f"a={w} {v:.4f}" for w, v in r["topic_popularity"].items())
              + f", hidden affinity {r['hidden_affinity']:.4f}", flush=True)
    result = {"command": f"python -m benchmarks.retrieval_headroom --profile {a.profile} "
                         f"--seeds {' '.join(map(str, a.seeds))}",
              "machine": f"{platform.machine()}, Python {platform.python_version()}",
              "date": datetime.now(UTC).date().isoformat(), "metric": f"recall@{K}",
              "seconds": round(time.time() - started, 1), "seeds": seeds}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
