"""Reviewer decisions as moderation training labels (`funnel review export` writes them,
`funnel train --review-labels` reads them).

Parquet, one row per decided review item:

| column | type | meaning |
|---|---|---|
| content_id | string | the moderated content's id |
| text | string (nullable) | the text that was scored; rows without text train nothing |
| decision | string | `allow` or `block`, the reviewer's |
| reviewer | string | who decided |
| decided_at | timestamp (UTC) | when |
| policy_version | string | the policy that sent the item to review |
| label_<name> | int8 (0/1) | one column per harm label |

A `block` marks the labels the policy flagged (score >= review_at) as positive; an `allow`
marks every label negative: the reviewer saw the flagged labels and rejected them. Training
adds these rows to the moderation head's training split only (never to validation or test,
so metrics stay comparable between runs).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from funnel.contracts.errors import DatasetError
from training.data.schema import HARM_LABELS

BASE_COLUMNS = ("content_id", "text", "decision", "reviewer", "decided_at", "policy_version")
LABEL_COLUMNS = tuple(f"label_{h}" for h in HARM_LABELS)


def read_review_labels(path: str | Path) -> pd.DataFrame:
    """The labelled rows that have text; DatasetError names a missing column or bad value."""
    p = Path(path)
    try:
        df = pd.read_parquet(p)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{p}: cannot read review labels (parquet expected): {e}") from e
    missing = [c for c in (*BASE_COLUMNS, *LABEL_COLUMNS) if c not in df.columns]
    if missing:
        raise DatasetError(f"{p}: review labels lack column {missing[0]!r}; expected "
                           f"{list(BASE_COLUMNS) + list(LABEL_COLUMNS)}")
    bad = sorted(set(df["decision"].dropna().astype(str)) - {"allow", "block"})
    if bad:
        raise DatasetError(f"{p}: decision {bad[0]!r} is not allowed; allowed: allow, block")
    for c in LABEL_COLUMNS:
        if not df[c].isin([0, 1]).all():
            raise DatasetError(f"{p}: column {c!r} must hold 0 or 1")
    has_text = [isinstance(t, str) and t.strip() != "" for t in df["text"]]
    return df.loc[has_text].reset_index(drop=True)
