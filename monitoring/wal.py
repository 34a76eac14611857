"""A write-ahead spool in front of the impression log: what a replica acknowledged survives
a SIGKILL of the replica.

Each record appended to an `ImpressionLog` with a spool directory is first written, as one
JSON line, to the replica's current segment file (`{dir}/{kind}/{replica}-{pid}-{n}.jsonl`):
- `write()` puts the line in the operating system's page cache: a killed process loses
  nothing written, a lost machine may lose the last second (served impressions are
  spooled this way; the feed does not wait for the disk);
- `wait_durable(seq)` returns once the line is fsync'd. One syncer thread fsyncs for every
  waiter at once (group commit): N concurrent `POST /v1/events` cost one fsync, not N.
  `POST /v1/events` answers 202 only after this.

When the impression log takes its buffer to write parquet, the spool seals the current
segment in the same critical section (`rotate`), so every line of a sealed segment is in the
batch being written; the segment is deleted once the batch is stored. A segment whose batch
failed to write stays on disk.

At start, a replica takes over every segment no live process holds (each writer holds an
exclusive `flock` on its segments until it deletes them) and hands its lines back to the
impression log, which writes them like new records: a killed replica's acknowledged records
reach the log when the next replica on that disk starts. A line cut short by the kill (the
process died inside `write`) was never acknowledged; it is skipped and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger("funnel.impressions")


class SpoolError(OSError):
    """The spool directory cannot be written: the request that needed it must fail."""


@dataclass(frozen=True)
class Recovered:
    """Records taken over from segments a dead process left."""

    segments: list[Path]
    chunks: list[tuple[dict[str, Any], int]]  # (columns, rows)
    records: int
    torn: int  # lines cut short by the kill: never acknowledged


def _default(v: Any) -> Any:
    """What orjson's numpy support leaves: scalars, and arrays it does not take whole
    (object dtype, not C-contiguous)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot spool a {type(v).__name__}")


class Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class WriteAheadSpool:
    """Segment files for one kind of record of one replica. `write` is called under the
    impression log's lock; `wait_durable` outside it."""

    def __init__(self, directory: str | Path, *, kind: str, replica: str) -> None:
        self.dir = Path(directory) / kind
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create the spool directory {self.dir}: {e}") from e
        self._stem = f"{replica}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._seq = 0  # lines written
        self._synced = 0  # lines fsync'd
        self._sealed: list[Segment] = []
        self._cond = threading.Condition()
        self._want_sync = False
        self._closed = False
        self._sync_error: str | None = None
        self._current = self._open()
        self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                        name=f"spool-{kind}")
        self._syncer.start()

    def _open(self) -> Segment:
        self._n += 1
        try:
            return Segment(self.dir / f"{self._stem}-{self._n:06d}.jsonl")
        except OSError as e:
            raise SpoolError(f"cannot open a spool segment in {self.dir}: {e}") from e

    # ---- the request path ----------------------------------------------------------------
    def write(self, columns: dict[str, Any], rows: int) -> int:
        """Append one chunk of columns; returns its sequence number (for wait_durable)."""
        line = orjson.dumps({"rows": rows, "columns": columns}, default=_default,
                            option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        try:
            os.write(self._current.fd, line)
        except OSError as e:
            raise SpoolError(f"cannot write the spool {self._current.path}: {e}") from e
        self._seq += 1
        return self._seq

    def wait_durable(self, seq: int, timeout_s: float = 10.0) -> None:
        """Block until line `seq` is fsync'd. Raises SpoolError if the disk fails or it
        takes longer than `timeout_s`."""
        with self._cond:
            if self._synced >= seq:
                return
            self._want_sync = True
            self._cond.notify_all()
            ok = self._cond.wait_for(lambda: self._synced >= seq or self._sync_error
                                     is not None or self._closed, timeout_s)
            if self._synced >= seq:
                return
            raise SpoolError(self._sync_error or ("spool closed" if self._closed else
                                                  f"fsync took more than {timeout_s:g} s"
                                                  if not ok else "spool fsync failed"))

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._want_sync or self._closed)
                if self._closed and not self._want_sync:
                    return
                self._want_sync = False
                target, fd = self._seq, self._current.fd
            try:
                os.fsync(fd)
                error = None
            except OSError as e:
                error = f"cannot fsync the spool: {e}"
            with self._cond:
                if error is not None and self._synced >= target:
                    error = None  # the segment was sealed (and fsync'd) meanwhile
                if error is None:
                    self._synced = max(self._synced, target)
                self._sync_error = error
                self._cond.notify_all()

    # ---- the writer ----------------------------------------------------------------------
    def rotate(self) -> list[Segment]:
        """Seal the current segment (every line written so far) and start a new one; called
        in the same critical section that takes the buffer. Returns the sealed segments,
        to `release` once their records are stored."""
        with self._cond:
            old = self._current
            with contextlib.suppress(OSError):
                os.fsync(old.fd)
            self._synced = self._seq
            self._current = self._open()
        return [old]

    def release(self, segments: list[Segment]) -> None:
        """The records of `segments` are stored: delete the files."""
        for seg in segments:
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
            seg.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._syncer.join(2.0)
        self._current.close()
        with contextlib.suppress(FileNotFoundError):
            if self._current.path.stat().st_size == 0:
                self._current.path.unlink()

    # ---- recovery ------------------------------------------------------------------------
    def recover(self) -> tuple[Recovered, list[Segment]]:
        """Take over the segments no live process holds: their records (to append to the
        impression log) and the locked segments (to `release` once written)."""
        held, chunks, records, torn = [], [], 0, 0
        for path in sorted(self.dir.glob("*.jsonl")):
            if path == self._current.path:
                continue
            try:
                seg = Segment(path)
            except BlockingIOError:
                continue  # a live writer's
            except OSError as e:
                log.warning("spool: cannot open %s: %s", path, e)
                continue
            for line in _lines(path):
                try:
                    rec = orjson.loads(line)
                    chunks.append((rec["columns"], int(rec["rows"])))
                    records += int(rec["rows"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    torn += 1
            held.append(seg)
        return Recovered([s.path for s in held], chunks, records, torn), held


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line
