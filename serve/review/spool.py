"""Model decisions parked on local disk while the review database is away, written later.

When `ReviewStore.record_model_decision` fails because the database does not answer,
moderation does not fail the request: the decision (with its review item, if any) is parked
here, in a local SQLite file, and the ingress drains the spool into the database every
`spool_drain_interval_s`, oldest first, once the database answers again.

Nothing is lost and nothing is written twice:
- a record leaves the spool only after the database committed it;
- each record carries an idempotency key, written with it (`moderation_decisions.
  idempotency_key`, unique), so a retry after a commit whose answer was lost, or two
  replicas draining one spool file, returns the first write's item id and adds nothing;
- a drain stops at the first failure, so records reach the database in the order they
  were made (the feed replays the decision log in id order);
- while records are parked, new decisions are parked behind them (same reason).

The spool is a file on the replica's disk: it survives a replica restart on the same disk,
not the loss of the disk (the Helm chart puts it on the pod's volume; see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.errors import ReviewStoreError

log = logging.getLogger("funnel.review")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL,
    parked_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
)
"""


@dataclass(frozen=True)
class SpoolDepth:
    records: int
    oldest_age_s: float  # 0 when empty


@dataclass(frozen=True)
class DrainResult:
    written: int
    remaining: int
    error: str | None  # why the drain stopped early (the database still away), else None


class ReviewSpool:
    """A FIFO of (idempotency key, record) in one SQLite file. Thread-safe: a connection per
    call, SQLite's own locking between threads, replicas and processes."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()  # one drain at a time in this process
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as c:
                c.execute("PRAGMA journal_mode=WAL")
                c.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise ReviewStoreError(f"cannot open the review spool {self.path}: {e}") from e
        self.pending = self.depth().records > 0

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            c.execute("PRAGMA synchronous=FULL")  # parked means on disk
            yield c
        finally:
            c.close()

    def park(self, key: str, record: Mapping[str, Any]) -> None:
        """Keep one record until the database takes it. Raises ReviewStoreError if the spool
        itself cannot be written (then the request fails: it must not be lost silently)."""
        try:
            with self._conn() as c:
                c.execute("INSERT OR IGNORE INTO parked (key, record, parked_at) "
                          "VALUES (?, ?, ?)", (key, json.dumps(record), self._clock()))
        except (sqlite3.Error, OSError, TypeError, ValueError) as e:
            raise ReviewStoreError(f"review database unavailable and the spool "
                                   f"{self.path} cannot be written: {e}") from e
        self.pending = True

    def depth(self) -> SpoolDepth:
        with self._conn() as c:
            n, oldest = c.execute("SELECT count(*), min(parked_at) FROM parked").fetchone()
        return SpoolDepth(int(n), max(0.0, self._clock() - oldest) if oldest else 0.0)

    def drain(self, write: Callable[[str, dict[str, Any]], object], *,
              limit: int = 1000) -> DrainResult:
        """Write up to `limit` records, oldest first, with `write(key, record)`; a record is
        removed once `write` returned. Stops at the first error (order is kept; the record
        stays, its attempts counted)."""
        written = 0
        error = None
        with self._lock, self._conn() as c:
            rows = c.execute("SELECT seq, key, record FROM parked ORDER BY seq LIMIT ?",
                             (limit,)).fetchall()
            for seq, key, record in rows:
                try:
                    write(key, json.loads(record))
                except Exception as e:  # the database still away, or a record it refuses
                    error = f"{type(e).__name__}: {e}"
                    c.execute("UPDATE parked SET attempts = attempts + 1, last_error = ? "
                              "WHERE seq = ?", (error[:500], seq))
                    break
                c.execute("DELETE FROM parked WHERE seq = ?", (seq,))
                written += 1
            remaining = int(c.execute("SELECT count(*) FROM parked").fetchone()[0])
        self.pending = remaining > 0
        if error is not None:
            log.warning("review spool: %d record(s) still parked: %s", remaining, error)
        elif written:
            log.info("review spool: wrote %d parked record(s) to the review database", written)
        return DrainResult(written=written, remaining=remaining, error=error)
