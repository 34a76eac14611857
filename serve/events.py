"""Outcome events (`POST /v1/events`) without the web framework: ids, time checks,
duplicate suppression, and the records the impression log keeps.

Events are joined to served impressions by (request_id, item_id) when experiments are
analysed (`funnel experiment report`), not here: the replica that takes an event need not
be the one that served the feed. An event whose impression is not in the log is counted
and kept aside by that join, never dropped silently.

Duplicates: an event's id is its `event_id`, or, without one, a hash of its fields (a
client retrying the same event sends the same fields). Each replica remembers the last
`capacity` ids and answers a repeat as a duplicate without logging it again; the join
drops any repeat that reached two replicas, so an id counts once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from serve.api import EventIn

FUTURE_TOLERANCE_S = 300.0  # client clocks run ahead; more than this is a bad timestamp
MAX_AGE_S = 7 * 86_400.0  # older outcomes belong to a backfill, not to this endpoint


def event_key(e: EventIn) -> str:
    if e.event_id:
        return e.event_id
    ts = _utc(e.timestamp).isoformat()
    raw = f"{e.request_id}|{e.user_id}|{e.item_id}|{e.event}|{e.value}|{ts}"
    return "h:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def event_time_s(e: EventIn) -> float:
    """The event's time, unix seconds."""
    return _utc(e.timestamp).timestamp()


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def time_problems(events: Sequence[EventIn], now: datetime, *, prefix: str
                  ) -> list[dict[str, Any]]:
    """422 details for timestamps ahead of `now` by more than the tolerance, or too old."""
    out = []
    for i, e in enumerate(events):
        dt = (_utc(e.timestamp) - now).total_seconds()
        field = f"{prefix}[{i}].timestamp" if prefix else "timestamp"
        if dt > FUTURE_TOLERANCE_S:
            out.append({"field": field, "given": e.timestamp.isoformat(),
                        "message": f"{dt:.0f} s in the future; at most "
                                   f"{FUTURE_TOLERANCE_S:.0f} s ahead of the server's clock"})
        elif -dt > MAX_AGE_S:
            out.append({"field": field, "given": e.timestamp.isoformat(),
                        "message": f"older than {MAX_AGE_S / 86_400:.0f} days"})
    return out


class Deduper:
    """The last `capacity` event ids, oldest forgotten first."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        """Take back `first_time` (the event was not stored: its retry is new)."""
        self._seen.pop(key, None)


def event_columns(events: Sequence[EventIn], keys: Sequence[str], *, received_us: int,
                  replica: str) -> tuple[dict[str, Any], int]:
    """(columns, rows) for the impression log's `events` kind; `ts` is the event's time."""
    return {
        "event_id": list(keys), "request_id": [e.request_id for e in events],
        "user_id": [e.user_id for e in events], "item_id": [e.item_id for e in events],
        "event": [e.event for e in events], "value": [e.value for e in events],
        "ts": [int(_utc(e.timestamp).timestamp() * 1_000_000) for e in events],
        "received_ts": received_us, "replica": replica,
    }, len(events)
