"""The events use case: outcomes of served items, deduplicated by event id, made durable in
the impression log's spool (then logged for experiment analysis, joined to impressions
there) and applied to the online feature store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monitoring import metrics
from serve.errors import EventsNotDurable, FeatureStoreUnavailable
from serve.events import Deduper, event_columns, event_key, event_time_s


class EventService:
    """`impressions`: the events' ImpressionLog (None: not logged); `online`: the feature
    store (serve.features.store.OnlineFeatures; None: off); `author_of`: item ids to their
    authors (a report's author goes to the reporter's blocked set)."""

    def __init__(self, *, impressions: Any = None, replica: str = "",
                 dedupe: Deduper | None = None, online: Any = None,
                 author_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.impressions = impressions
        self.replica = replica
        self.dedupe = dedupe or Deduper()
        self.online = online
        self.author_of = author_of
        self._clock = clock

    async def ingest(self, events: Sequence[Any]) -> tuple[int, int]:
        """Log the events not seen before and apply them to the feature store; (accepted,
        duplicates). Returns once they are on disk (fsync'd). Raises EventsNotDurable: none
        of them is acknowledged, and a retry is taken as new."""
        fresh, keys, first = [], [], []
        for ev in events:
            key = event_key(ev)
            first.append(self.dedupe.first_time(key))
            if first[-1]:
                fresh.append(ev)
                keys.append(key)
        if fresh:
            try:
                await asyncio.to_thread(self._store, fresh, keys)
            except EventsNotDurable:
                for k in keys:
                    self.dedupe.forget(k)
                raise
        for ev, f in zip(events, first, strict=True):
            metrics.EVENTS.labels(ev.event, "accepted" if f else "duplicate").inc()
        return len(fresh), len(events) - len(fresh)

    def _store(self, fresh: Sequence[Any], keys: Sequence[str]) -> None:
        from monitoring.wal import SpoolError

        if self.impressions is not None:
            cols, n = event_columns(fresh, keys, received_us=time.time_ns() // 1000,
                                    replica=self.replica)
            try:
                logged = self.impressions.append(cols, n, durable=True)
            except SpoolError as e:
                raise EventsNotDurable(f"events not stored: {e}") from e
            if not logged:
                raise EventsNotDurable("events not stored: the impression log's buffer is "
                                       "full (storage slower than traffic); retry later")
        if self.online is not None:
            self.apply_online(fresh, keys)

    def apply_online(self, fresh: Sequence[Any], keys: Sequence[str]) -> None:
        """The feature store's part; a failure is counted and left to the replay from the
        log when Redis is back (serve/features/rebuild.py), never to the client."""
        from serve.features.store import EventRow

        authors = np.full(len(fresh), -1, np.int64)  # looked up for reports only
        reports = [k for k, e in enumerate(fresh) if e.event == "report"]
        if reports and self.author_of is not None:
            authors[reports] = self.author_of(
                np.asarray([fresh[k].item_id for k in reports], dtype=np.int64))
        rows = [EventRow(k, e.user_id, e.item_id, e.event, event_time_s(e),
                         int(a) if a >= 0 else None)
                for e, k, a in zip(fresh, keys, authors, strict=True)]
        try:
            self.online.apply_events(rows)
        except FeatureStoreUnavailable:
            return
        now = self._clock()
        for r in rows:
            metrics.FEATURE_LAG_SECONDS.observe(max(0.0, now - r.ts_s))
