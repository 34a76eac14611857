"""Live moderation verdicts for the feed, replayed from the decision log.

The bundle's catalog carries a verdict per post from training time. After that, two things
change a post's verdict: the model's decision when the post is (re)scored by /v1/moderate,
and a reviewer's decision on its review item. Each feed replica replays the decision log
(`moderation_decisions`, by increasing id) into this table, and the moderation filter asks
`effective(post_id, catalog_verdict)`:

- a reviewer's latest decision is final (a person looked at it: allow or block);
- otherwise the more severe of the catalog verdict and the model's latest decision, so a
  live score can hold back or block a post but never un-block one nobody has reviewed.

Pure logic: content ids that are not decimal post ids (e.g. comments, images) are kept but
never match a feed item.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve.moderation.policy import Decision, more_severe


@dataclass(frozen=True)
class VerdictEvent:
    id: int
    content_id: str
    source: Literal["model", "reviewer"]
    decision: Decision


class LiveVerdicts:
    def __init__(self) -> None:
        self._model: dict[int, Decision] = {}
        self._reviewer: dict[int, Decision] = {}
        self.last_id = 0

    def apply(self, events: Iterable[VerdictEvent]) -> int:
        """Replay events (ids ascending; ones already applied are skipped). Returns how many
        were new."""
        n = 0
        for e in events:
            if e.id <= self.last_id:
                continue
            self.last_id = e.id
            n += 1
            if not e.content_id.isdigit():
                continue
            target = self._reviewer if e.source == "reviewer" else self._model
            target[int(e.content_id)] = e.decision
        return n

    def effective(self, item_id: int, catalog_verdict: str) -> str:
        reviewed = self._reviewer.get(item_id)
        if reviewed is not None:
            return reviewed
        live = self._model.get(item_id)
        if live is None or catalog_verdict not in ("allow", "review", "block"):
            return catalog_verdict  # unknown catalog verdicts stay unknown: the filter drops
        return more_severe(catalog_verdict, live)  # type: ignore[arg-type]

    def effective_many(self, item_ids: np.ndarray, catalog_verdicts: np.ndarray) -> np.ndarray:
        """`effective` for a column of items (object array of verdict names); only the items
        a live verdict names cost a Python step."""
        out = np.array(catalog_verdicts, dtype=object, copy=True)
        model, reviewer = self._model, self._reviewer
        for k, i in enumerate(np.asarray(item_ids).tolist()):
            if i in reviewer or i in model:
                out[k] = self.effective(i, str(out[k]))
        return out

    def __len__(self) -> int:
        return len(self._model.keys() | self._reviewer.keys())
