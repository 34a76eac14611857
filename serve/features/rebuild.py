"""Refilling the online feature store from the impression log, the source of truth.

The log keeps every acknowledged event (`events` kind, partitioned by event time) and every
served item (`feed` kind). A replay reads a window of them and applies them through the
same writes serving uses: events by their id (one already applied counts as `already`,
not twice), served items as seen. Three callers:

- after an outage: the replica that saw Redis fail replays the events it received from
  when the outage began (reading event times from `late_margin_s` earlier, for events that
  reached the server late) once Redis answers again;
- Redis found empty (restarted without its data): the last `seen_days` of the log, on
  replica start (`rebuild_on_start`) or when Redis comes back empty; one replica at a time
  (a lock key), the store's `filled_at` set when done;
- `funnel features rebuild --since 2h`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np

from monitoring import metrics
from monitoring.drift_window import Window, read_window
from serve.errors import FeatureStoreUnavailable
from serve.features.store import EventRow, OnlineFeatures

log = logging.getLogger("funnel.features")
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event", "ts", "received_ts"]
BATCH = 500


@dataclass(frozen=True)
class ReplayResult:
    events: int  # read from the log
    applied: int
    already: int  # applied before (by serving, or an earlier replay)
    served_users: int  # users whose served items were marked seen
    seconds: float


def replay(store: OnlineFeatures, fs: Any, root: str, *, start: datetime, end: datetime,
           reason: str, author_of: Callable[[np.ndarray], np.ndarray] | None = None,
           received_since: datetime | None = None, served: bool = True,
           progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Apply the log's events with `start <= ts < end` (and, when given, received at or
    after `received_since`), oldest first, and the served items of the same window as
    seen. Raises FeatureStoreUnavailable if Redis fails midway (what was applied stays;
    running it again applies the rest)."""
    t0 = time.perf_counter()
    window = Window(start, end)
    frame = read_window(fs, root, "events", window, columns=EVENT_COLUMNS).frame
    if received_since is not None and len(frame):
        rec = frame["received_ts"]
        frame = frame[rec >= _as_ts(received_since, rec)]
    frame = frame.sort_values("ts", kind="stable")
    ts_s = _seconds(frame["ts"]) if len(frame) else np.zeros(0)
    items = frame["item_id"].to_numpy(np.int64) if len(frame) else np.zeros(0, np.int64)
    authors = (author_of(items) if author_of is not None and len(items)
               else np.full(len(items), -1, np.int64))
    rows = [EventRow(str(eid), int(u), int(i), str(ev), float(t), int(a) if a >= 0 else None)
            for eid, u, i, ev, t, a in zip(frame["event_id"], frame["user_id"], items,
                                           frame["event"], ts_s, authors, strict=True)]
    applied = already = 0
    for k in range(0, len(rows), BATCH):
        a, b = store.apply_events(rows[k:k + BATCH])
        applied, already = applied + a, already + b
        if progress is not None and (k // BATCH) % 20 == 19:
            progress(f"  {k + BATCH:,} of {len(rows):,} events")
    metrics.FEATURE_REBUILT.labels(reason, "applied").inc(applied)
    metrics.FEATURE_REBUILT.labels(reason, "already").inc(already)
    users = 0
    if served:
        users = _replay_served(store, fs, root, window)
    return ReplayResult(len(rows), applied, already, users, time.perf_counter() - t0)


def _replay_served(store: OnlineFeatures, fs: Any, root: str, window: Window) -> int:
    feed = read_window(fs, root, "feed", window, columns=["user_id", "item_id", "ts"]).frame
    if not len(feed):
        return 0
    feed = feed.assign(ts_s=_seconds(feed["ts"]))
    users = 0
    items, ts = feed["item_id"].to_numpy(np.int64), feed["ts_s"].to_numpy(np.float64)
    for uid, rows in feed.groupby("user_id", sort=False).indices.items():
        store.mark_seen(int(cast(int, uid)), items[rows], float(ts[rows].max()))
        users += 1
    return users


def _seconds(ts: Any) -> np.ndarray:
    """UTC timestamps -> unix seconds (float64), whatever the column's time unit."""
    import pandas as pd

    idx = pd.DatetimeIndex(ts)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return np.asarray((idx - pd.Timestamp(0, tz="UTC")).total_seconds(), dtype=np.float64)


def _as_ts(t: datetime, like: Any) -> Any:
    import pandas as pd

    v = pd.Timestamp(t)
    tz = getattr(like.dtype, "tz", None)
    return v.tz_convert(tz) if tz is not None else v.tz_convert(None)


class Refiller:
    """One replica's side: the replay after an outage and the refill of an empty Redis,
    in a background thread each (never on a request)."""

    def __init__(self, store: OnlineFeatures, log_url: str | None, *, seen_days: float,
                 late_margin_s: float, author_of: Callable[[np.ndarray], np.ndarray] | None,
                 flush_events: Callable[[], Any] = lambda: None,
                 flush_feed: Callable[[], Any] = lambda: None,
                 storage_options: dict[str, Any] | None = None,
                 served_seen: bool = True) -> None:
        self.store, self.log_url = store, log_url
        self.served_seen = served_seen
        self.seen_days, self.late_margin_s = seen_days, late_margin_s
        self.author_of = author_of
        self._flush_events, self._flush_feed = flush_events, flush_feed
        self._storage_options = storage_options or {}
        self.last: ReplayResult | None = None
        store.on_back(self._after_outage)

    def _open(self) -> tuple[Any, str] | None:
        from monitoring.drift_window import LogReadError, open_log

        if self.log_url is None:
            return None
        try:
            return open_log(self.log_url, self._storage_options)
        except LogReadError:
            return None  # nothing logged yet: nothing to replay

    def start(self, check_every_s: float = 10.0, *, refill_empty: bool = True) -> None:
        """From replica start, every `check_every_s`: refill an empty Redis (one replica
        does; the others skip); every sixth time, the memory gauges. A Redis restarted
        between two calls of this replica shows up here, not as an error."""
        import threading

        self._stop = threading.Event()

        def loop() -> None:
            k = 0
            while True:
                if refill_empty:
                    self._refill_if_empty()
                if k % 6 == 0:
                    self._measure_memory()
                k += 1
                if self._stop.wait(check_every_s):
                    return

        self._spawn(loop, "features-refill")

    def _measure_memory(self) -> None:
        try:
            m = self.store.memory()
        except Exception:  # Redis away: the error counters tell
            return
        metrics.FEATURE_MEMORY.labels("used").set(m["used_bytes"])
        metrics.FEATURE_MEMORY.labels("limit").set(m["limit_bytes"])
        metrics.FEATURE_MEMORY.labels("user_key").set(m["user_key_bytes"])
        metrics.FEATURE_MEMORY.labels("item_key").set(m["item_key_bytes"])

    def stop(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _after_outage(self, since_s: float) -> None:
        self._spawn(lambda: self._replay_outage(since_s), "features-replay")

    @staticmethod
    def _spawn(fn: Callable[[], None], name: str) -> None:
        import threading

        threading.Thread(target=fn, daemon=True, name=name).start()

    def _replay_outage(self, since_s: float) -> None:
        try:
            if self.store.filled_at() is None:  # came back empty: a restart without data
                self._refill("empty")
                return
            self._flush_events()
            self._flush_feed()
            opened = self._open()
            if opened is None:
                return
            since = datetime.fromtimestamp(since_s, UTC)
            res = replay(self.store, *opened, reason="outage",
                         start=since - timedelta(seconds=self.late_margin_s),
                         end=datetime.now(UTC) + timedelta(minutes=10),
                         received_since=since - timedelta(seconds=5), author_of=self.author_of,
                         served=self.served_seen)
            self.last = res
            log.info("feature store: replayed %d event(s) received during the outage "
                     "(%d applied, %d already there) and the served items of %d user(s) "
                     "in %.1f s", res.events, res.applied, res.already, res.served_users,
                     res.seconds)
        except FeatureStoreUnavailable:
            pass  # down again: the next recovery replays from the same start
        except Exception:
            log.exception("feature store: the replay after the outage failed")

    def _refill_if_empty(self) -> None:
        try:
            if self.store.filled_at() is None:
                self._refill("empty")
        except FeatureStoreUnavailable:
            pass  # Redis away at start: the outage path refills when it answers
        except Exception:
            log.exception("feature store: the refill failed")

    def _refill(self, reason: str) -> None:
        lock = f"{self.store.layout.prefix}:rebuilding"
        if not self.store.redis.set(lock, "1", nx=True, ex=600):
            return  # another replica is at it
        try:
            self._flush_events()
            self._flush_feed()
            now = datetime.now(UTC)
            opened = self._open()
            if opened is not None:
                res = replay(self.store, *opened, reason=reason,
                             start=now - timedelta(days=self.seen_days),
                             end=now + timedelta(minutes=10), author_of=self.author_of,
                             served=self.served_seen)
                self.last = res
                log.warning("feature store was empty: refilled from the impression log's "
                            "last %g days: %d event(s) applied, served items of %d user(s), "
                            "in %.1f s", self.seen_days, res.applied, res.served_users,
                            res.seconds)
            self.store.mark_filled(time.time())
        finally:
            self.store.redis.delete(lock)
