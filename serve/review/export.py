"""`funnel review export`: reviewer decisions -> the training-label parquet
(schema: training/review_labels.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serve.review.base import ReviewStore
from training.review_labels import BASE_COLUMNS, LABEL_COLUMNS


def export_labels(store: ReviewStore, out: str | Path) -> dict[str, int]:
    """Write every decided item as a label row. A `block` with no flagged label (the item was
    held only because a model was unavailable) says nothing about which label applies: it is
    left out and counted. Returns counts."""
    rows, skipped = [], 0
    for item in store.decided():
        if item.status == "block" and not item.flagged_labels:
            skipped += 1
            continue
        positive = set(item.flagged_labels) if item.status == "block" else set()
        rows.append({
            "content_id": item.content_id, "text": item.text, "decision": item.status,
            "reviewer": item.decided_by, "decided_at": item.decided_at,
            "policy_version": item.policy_version,
            **{c: int(c.removeprefix("label_") in positive) for c in LABEL_COLUMNS}})
    df = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *LABEL_COLUMNS])
    df["decided_at"] = pd.to_datetime(df["decided_at"], utc=True)
    for c in LABEL_COLUMNS:
        df[c] = df[c].astype("int8")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(p, index=False)
    return {"rows": len(df), "blocked": int((df["decision"] == "block").sum()),
            "allowed": int((df["decision"] == "allow").sum()),
            "with_text": int(df["text"].notna().sum()), "skipped_no_label": skipped}
