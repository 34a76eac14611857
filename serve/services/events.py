"""The events use case: outcomes of served items, deduplicated by event id and logged for
experiment analysis (joined to impressions there)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from monitoring import metrics
from serve.events import Deduper, event_columns, event_key


class EventService:
    def __init__(self, *, impressions: Any = None, replica: str = "",
                 dedupe: Deduper | None = None) -> None:
        self.impressions = impressions
        self.replica = replica
        self.dedupe = dedupe or Deduper()

    def ingest(self, events: Sequence[Any]) -> tuple[int, int]:
        """Log the events not seen before; (accepted, duplicates)."""
        fresh, keys = [], []
        for ev in events:
            key = event_key(ev)
            first = self.dedupe.first_time(key)
            metrics.EVENTS.labels(ev.event, "accepted" if first else "duplicate").inc()
            if first:
                fresh.append(ev)
                keys.append(key)
        if self.impressions is not None and fresh:
            cols, n = event_columns(fresh, keys, received_us=time.time_ns() // 1000,
                                    replica=self.replica)
            self.impressions.append(cols, n)
        return len(fresh), len(events) - len(fresh)
