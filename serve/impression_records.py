"""Impression-log records from what the ingress served (the writer: monitoring/impressions).

A feed gives one record per returned item: the item's position and scores, the ranker's
features for it exactly as the model received them (the rows of the request's ranker
inputs), and the variants and versions that served it. Columns stay numpy arrays; the
writer turns them into Arrow off the request path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from funnel.contracts.model_io import RANKER_DENSE, TASKS
from serve.pipeline import FeedResult

TEAMS = {"control": 0, "candidate": 1}  # monitoring.interleaving's TEAM_A / TEAM_B


def feed_columns(result: FeedResult, *, request_id: str, user_id: int, ts_us: int,
                 versions: Mapping[str, str], variants: Mapping[str, str],
                 replica: str, modalities: Sequence[str] = ()) -> tuple[dict[str, Any], int]:
    """(columns, rows) for one served feed; `modalities`: the fitted vocabulary the ranker
    inputs index (index 0: unknown)."""
    items = result.items
    n = len(items)
    if n == 0:
        return {}, 0
    ids = np.fromiter((i.item_id for i in items), np.int64, n)
    cols: dict[str, Any] = {
        "request_id": request_id, "ts": ts_us, "user_id": user_id, "item_id": ids,
        "position": np.fromiter((i.rank for i in items), np.int32, n),
        "score": np.fromiter((i.score for i in items), np.float64, n),
        "sources": [",".join(i.sources) for i in items],
        "exploration": [bool(i.explain.get("exploration", False)) for i in items],
        "ranker_variant": variants.get("ranker", "primary"),
        "retrieval_variant": variants.get("retrieval", "primary"),
        "bundle_version": versions.get("bundle"), "ranker_version": versions.get("ranker"),
        "retrieval_version": versions.get("retrieval"),
        "degraded": ",".join(result.degraded), "cold_start": result.cold_start,
        "replica": replica,
    }
    teams = [i.explain.get("interleaving") for i in items]
    if any(teams):
        cols["team"] = [TEAMS.get(str(t.get("team"))) if isinstance(t, dict) else None
                        for t in teams]
        first = next(t for t in teams if isinstance(t, dict))
        cols["interleaved_variant"] = first.get("candidate")
    probs = [i.explain.get("probs") for i in items]
    for t in TASKS:
        cols[f"p_{t}"] = [p.get(t) if isinstance(p, dict) else None for p in probs]
    trace = result.trace
    if trace is not None:
        topic_of = dict(zip(trace.kept_ids.tolist(), trace.items.names("topic").tolist(),
                            strict=True))
        cols["topic"] = [topic_of.get(i) for i in ids.tolist()]
        # the inputs the served ranker got: run() builds one set (shadows add theirs later)
        inputs = next(iter(trace.inputs.values()), None)
        names = trace.dense_features or RANKER_DENSE
        dense = inputs.get("dense") if inputs is not None else None
        if dense is not None and len(dense) == len(trace.kept_ids):
            row_of = {int(k): j for j, k in enumerate(trace.kept_ids.tolist())}
            rows = [row_of.get(i, -1) for i in ids.tolist()]
            if min(rows) >= 0 and np.asarray(dense).shape[1] == len(names):
                d = np.asarray(dense)[rows]
                for j, name in enumerate(names):  # a feature the bundle lacks stays null
                    cols[name] = d[:, j]
                mod = inputs.get("modality") if inputs is not None else None
                if mod is not None and len(modalities):
                    idx = np.asarray(mod).reshape(-1)[rows].tolist()
                    cols["modality"] = [modalities[k - 1] if 0 < k <= len(modalities)
                                        else None for k in idx]
    return cols, n


def moderation_columns(*, request_id: str, ts_us: int, content_id: str, content: str,
                       decision: str, scores: Mapping[str, float],
                       outcomes: Mapping[str, str], labels: tuple[str, ...],
                       degraded: tuple[str, ...], policy_version: str,
                       model_versions: Mapping[str, str], variant: str,
                       review_id: int | None, replica: str) -> tuple[dict[str, Any], int]:
    """(columns, 1) for one moderation call."""
    cols: dict[str, Any] = {
        "request_id": request_id, "ts": ts_us, "content_id": content_id, "content": content,
        "decision": decision, "degraded": ",".join(degraded), "policy_version": policy_version,
        "text_model_version": model_versions.get("moderation_text"),
        "image_model_version": model_versions.get("moderation_image"), "variant": variant,
        "review_id": review_id, "replica": replica,
    }
    for lb in labels:
        cols[f"score_{lb}"] = float(scores[lb]) if lb in scores else None
        cols[f"outcome_{lb}"] = outcomes.get(lb)
    return cols, 1
