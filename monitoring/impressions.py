"""The impression log: every served feed item and every moderation call, as partitioned
parquet, written off the request path.

    {root}/{kind}/date=YYYY-MM-DD/hour=HH/{replica}-{first ts}-{seq}.parquet

`root` is a local directory by default and any fsspec URL in a cluster (s3://bucket/prefix
with s3fs installed; credentials from the usual environment, or `storage_options`). The
layout is Hive-style, so pyarrow, pandas, DuckDB or Spark read it as one dataset, and the
drift monitor reads only the hours a window covers.

What a request pays: appending its columns to an in-memory buffer (a lock and a list
append). A writer thread turns the buffer into parquet every `flush_interval_s`, or sooner
when `flush_rows` records wait. Files are written under a `_`-prefixed name and renamed
when complete on a local filesystem (readers skip `_` files), so a reader never sees half a
file; object stores publish an object whole.

What can be lost, and how it shows:
- Without a spool, a crash (or SIGKILL) of a replica loses the records buffered in it: at
  most `max_buffered_rows`, and in steady state about `flush_interval_s` of that replica's
  traffic. A normal shutdown writes them (`close`). With a spool (`spool_dir`,
  monitoring/wal.py; the serving app's default), every record is on local disk before it
  is buffered, and the next replica to start on that disk writes what a killed one left.
- When storage is slower than traffic and the buffer holds `max_buffered_rows`, new
  records are dropped, not queued without bound.
- A write that still fails after `retries` retries loses its batch.
Every record is counted once as written, dropped or failed
(`funnel_impression_records_total{kind, outcome}`), and the buffer's size is a gauge, so
any loss is visible on a dashboard and alerted on (docs/runbooks/impression-log.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from funnel.contracts.model_io import RANKER_DENSE, TASKS
from monitoring import metrics
from monitoring.wal import Segment, WriteAheadSpool

log = logging.getLogger("funnel.impressions")
KINDS = ("feed", "moderation", "events")

FEED_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("position", pa.int32()),
    ("score", pa.float64()),
    *[(f"p_{t}", pa.float32()) for t in TASKS],
    *[(name, pa.float32()) for name in RANKER_DENSE],
    ("topic", pa.string()), ("modality", pa.string()), ("sources", pa.string()),
    ("exploration", pa.bool_()),
    ("ranker_variant", pa.string()), ("retrieval_variant", pa.string()),
    ("bundle_version", pa.string()), ("ranker_version", pa.string()),
    ("retrieval_version", pa.string()), ("degraded", pa.string()),
    ("cold_start", pa.bool_()), ("replica", pa.string()),
    # interleaved requests: the team that contributed the item (0: the primary's list,
    # 1: the candidate's) and the candidate variant; null when not interleaved
    ("team", pa.int8()), ("interleaved_variant", pa.string()),
])


EVENTS_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("request_id", pa.string()), ("user_id", pa.int64()),
    ("item_id", pa.int64()), ("event", pa.string()), ("value", pa.float64()),
    ("ts", pa.timestamp("us", tz="UTC")), ("received_ts", pa.timestamp("us", tz="UTC")),
    ("replica", pa.string()),
])


def moderation_schema(labels: Sequence[str]) -> pa.Schema:
    """One row per `/v1/moderate` call; a score and an outcome column per policy label."""
    return pa.schema([
        ("request_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
        ("content_id", pa.string()), ("content", pa.string()), ("decision", pa.string()),
        *[(f"score_{lb}", pa.float64()) for lb in labels],
        *[(f"outcome_{lb}", pa.string()) for lb in labels],
        ("degraded", pa.string()), ("policy_version", pa.string()),
        ("text_model_version", pa.string()), ("image_model_version", pa.string()),
        ("variant", pa.string()), ("review_id", pa.int64()), ("replica", pa.string()),
    ])


class ImpressionLogError(ValueError):
    """A bad impression-log setting (the URL, a size)."""


class ImpressionLog:
    """A buffered, partitioned parquet writer for one kind of record."""

    def __init__(self, url: str, *, kind: str, schema: pa.Schema, replica: str,
                 flush_rows: int = 2000, flush_interval_s: float = 2.0,
                 max_buffered_rows: int = 50_000, retries: int = 2,
                 storage_options: Mapping[str, Any] | None = None,
                 spool_dir: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        import fsspec

        if kind not in KINDS:
            raise ImpressionLogError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        if max_buffered_rows < flush_rows:
            raise ImpressionLogError(f"max_buffered_rows ({max_buffered_rows}) must be at least"
                                     f" flush_rows ({flush_rows})")
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except (ValueError, ImportError) as e:  # unknown protocol, backend not installed
            raise ImpressionLogError(f"url: cannot open {url!r}: {e}") from e
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))
        self.kind, self.schema = kind, schema
        self.replica = "".join(c if c.isalnum() or c in "-_." else "-" for c in replica)
        self.flush_rows, self.flush_interval_s = flush_rows, flush_interval_s
        self.max_buffered_rows, self.retries = max_buffered_rows, retries
        self._clock = clock
        self._lock = threading.Lock()
        self._chunks: list[dict[str, Any]] = []
        self._buffered = 0
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()
        self._last_error = ""
        self.counts = {"written": 0, "dropped": 0, "failed": 0}
        # the write-ahead spool (monitoring/wal.py): records survive a killed replica
        self._spool: WriteAheadSpool | None = None
        self._held: list[Segment] = []  # segments taken over at start, released when written
        self._kept: list[Segment] = []  # segments of batches that failed: left for a restart
        if spool_dir:
            self._spool = WriteAheadSpool(spool_dir, kind=kind, replica=self.replica)
            self._recover()

    def _recover(self) -> None:
        assert self._spool is not None
        rec, held = self._spool.recover()
        self._held = held
        for columns, rows in rec.chunks:
            self._chunks.append({"__rows": rows, **columns})
            self._buffered += rows
        if rec.records or rec.torn:
            metrics.SPOOL_RECOVERED.labels(self.kind, "recovered").inc(rec.records)
            metrics.SPOOL_RECOVERED.labels(self.kind, "torn").inc(rec.torn)
            self._start()  # written within flush_interval_s, traffic or not
            log.warning("impression log (%s): %d record(s) recovered from %d spool segment(s) "
                        "a stopped replica left; %d line(s) cut short by the stop (never "
                        "acknowledged) skipped", self.kind, rec.records, len(held), rec.torn)

    # ---- the request path ----------------------------------------------------------------
    def append(self, columns: dict[str, Any], rows: int, *, durable: bool = False) -> bool:
        """Buffer `rows` records given as columns (lists or arrays of length `rows`, or a
        scalar repeated). False, and the records counted as dropped, when the buffer is full.

        With a spool, the records are also written to it first (they survive a killed
        replica); `durable=True` returns only once they are fsync'd (raises
        `monitoring.wal.SpoolError` if the disk fails: the caller must not acknowledge)."""
        if rows <= 0:
            return True
        seq = 0
        with self._lock:
            if self._buffered + rows > self.max_buffered_rows:
                self._count("dropped", rows)
                return False
            if self._spool is not None:
                seq = self._spool.write(columns, rows)
            self._chunks.append({"__rows": rows, **columns})
            self._buffered += rows
            buffered = self._buffered
        metrics.IMPRESSIONS_BUFFERED.labels(self.kind).set(buffered)
        if self._thread is None:
            self._start()
        if buffered >= self.flush_rows:
            self._wake.set()
        if durable and self._spool is not None:
            self._spool.wait_durable(seq)
        return True

    # ---- the writer ----------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"impressions-{self.kind}")
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what is buffered now; returns the records written."""
        with self._writing:  # one writer at a time (the thread, close, a test)
            with self._lock:
                chunks, self._chunks = self._chunks, []
                rows = self._buffered
                self._buffered = 0
                sealed: list[Segment] = []
                if self._spool is not None and chunks:
                    sealed, self._held = self._held + self._spool.rotate(), []
            metrics.IMPRESSIONS_BUFFERED.labels(self.kind).set(0)
            if not chunks:
                return 0
            try:
                table = self._table(chunks)
            except Exception as e:  # a record the schema cannot hold: a bug, counted
                self._failed(rows, f"building the batch: {type(e).__name__}: {e}")
                return 0
            written = 0
            for part in self._partitions(table):
                written += self._write(part)
            if self._spool is not None:
                if written == rows:
                    self._spool.release(sealed)
                else:  # kept on disk: written again when a replica next starts here
                    self._kept.extend(sealed)
            return written

    def _table(self, chunks: list[dict[str, Any]]) -> pa.Table:
        """Column by column, each request's values become an Arrow array (numpy arrays
        without a Python loop), so building a batch costs little of the replica's GIL."""
        arrays = []
        for f in self.schema:
            parts = []
            for c in chunks:
                v, n = c.get(f.name), c["__rows"]
                if v is None:
                    parts.append(pa.nulls(n, f.type))
                elif isinstance(v, np.ndarray | list | tuple):
                    parts.append(pa.array(v, type=f.type))
                else:  # one value for every row of the chunk
                    parts.append(pa.repeat(pa.scalar(v, type=f.type), n))
            arrays.append(pa.chunked_array(parts, type=f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema).combine_chunks()

    @staticmethod
    def _partitions(table: pa.Table) -> list[tuple[str, str, pa.Table]]:
        ts = table.column("ts").to_numpy().astype("datetime64[h]")
        hours = np.unique(ts)
        if len(hours) == 1:
            return [(*_date_hour(hours[0]), table)]
        out = []
        for h in hours:
            mask = pa.array(ts == h)
            out.append((*_date_hour(h), table.filter(mask)))
        return out

    def _write(self, part: tuple[str, str, pa.Table]) -> int:
        date, hour, table = part
        rows = table.num_rows
        self._seq += 1
        first = int(table.column("ts")[0].value) if rows else 0
        name = f"{self.replica}-{first}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        directory = f"{self.root}/{self.kind}/date={date}/hour={hour}"
        path = f"{directory}/{name}"
        error = ""
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                self.fs.makedirs(directory, exist_ok=True)
                if self.local:
                    tmp = f"{directory}/_{name}"
                    with self.fs.open(tmp, "wb") as f:
                        pq.write_table(table, f, compression="zstd")
                    self.fs.mv(tmp, path)
                else:
                    with self.fs.open(path, "wb") as f:
                        pq.write_table(table, f, compression="zstd")
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                if attempt < self.retries and not self._stop.is_set():
                    time.sleep(min(0.2 * 2 ** attempt, 2.0))
                continue
            metrics.IMPRESSION_FLUSH_SECONDS.labels(self.kind).observe(
                time.perf_counter() - t0)
            self._count("written", rows)
            if self._last_error:
                log.info("impression log (%s): writing again after: %s", self.kind,
                         self._last_error)
                self._last_error = ""
            return rows
        self._failed(rows, f"writing {path}: {error}")
        return 0

    def _failed(self, rows: int, why: str) -> None:
        self._count("failed", rows)
        if why != self._last_error:  # once per distinct error, not once per batch
            log.error("impression log (%s): %d records lost: %s", self.kind, rows, why)
        self._last_error = why

    def _count(self, outcome: str, rows: int) -> None:
        self.counts[outcome] += rows
        metrics.IMPRESSIONS.labels(self.kind, outcome).inc(rows)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writer and write what is buffered (a replica's normal shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        if self._spool is not None:
            self._spool.close()
            for seg in self._kept:  # their files stay: the next start writes them
                seg.close()

    @property
    def buffered(self) -> int:
        return self._buffered


def _date_hour(h: np.datetime64) -> tuple[str, str]:
    d = datetime.fromtimestamp(int(h.astype("datetime64[s]").astype(np.int64)), UTC)
    return d.strftime("%Y-%m-%d"), d.strftime("%H")
