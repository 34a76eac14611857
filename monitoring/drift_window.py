"""Windows of the impression log: parsing window lengths and times, and reading the rows
of one kind of record in [start, end), sampled so that memory stays bounded.

The log is Hive-partitioned parquet, `{root}/{kind}/date=YYYY-MM-DD/hour=HH/*.parquet`, at any
fsspec URL (monitoring/impressions.py writes it); only the hour partitions a window covers
are listed, and files whose name starts with `_` or `.` (being written) are skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from funnel.contracts.errors import InvalidInputError

log = logging.getLogger("funnel.drift")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class WindowError(InvalidInputError):
    """A window length or end time that cannot be parsed. CLI exit 2."""


class LogReadError(InvalidInputError):
    """The impression log's root cannot be opened or listed. CLI exit 2."""


# ---- windows ---------------------------------------------------------------------------
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '1h', '1h30m', '7d' -> timedelta."""
    m = _DURATION.fullmatch(text.strip())
    if not text.strip() or m is None or not any(m.groups()):
        raise WindowError(f"{text!r} is not a duration; use e.g. 30m, 1h, 1h30m or 1d")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    out = timedelta(days=d, hours=h, minutes=mi, seconds=s)
    if out <= timedelta(0):
        raise WindowError(f"{text!r}: a window must be longer than 0s")
    return out


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(f"{text!r} is not an ISO 8601 time such as "
                          "2026-12-01T10:00:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """[start, end), UTC."""

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, length: timedelta) -> Window:
        end = end.astimezone(UTC)
        return cls(end - length, end)

    @property
    def stamp(self) -> str:
        return self.end.strftime(STAMP_FORMAT)

    def hours(self) -> list[datetime]:
        """The starts of the hour partitions that hold rows of this window."""
        h = self.start.replace(minute=0, second=0, microsecond=0)
        out = []
        while h < self.end:
            out.append(h)
            h += timedelta(hours=1)
        return out


# ---- reading the log -------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSample:
    """Rows of one kind in a window: all of them, or a uniform sample."""

    frame: pd.DataFrame
    rows_in_window: int
    files: int
    unreadable: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        return len(self.frame) < self.rows_in_window


def open_log(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, root path) of an impression-log URL that exists."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        exists = fs.exists(root)
    except (ValueError, ImportError, OSError) as e:
        raise LogReadError(f"cannot open the impression log {url!r}: {e}") from e
    if not exists:
        raise LogReadError(f"no impression log at {url!r} (the serving app's "
                           "args.impressions.url)")
    return fs, root.rstrip("/")


def _ts_micros(table: pa.Table) -> np.ndarray:
    ts = pc.cast(table.column("ts"), pa.timestamp("us", tz="UTC"), safe=False)
    return np.asarray(ts.cast(pa.int64()).to_numpy(zero_copy_only=False))


def _micros(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def read_window(fs: Any, root: str, kind: str, window: Window, *,
                columns: Sequence[str] | None = None, max_rows: int | None = None,
                seed: int = 0) -> WindowSample:
    """Rows of `kind` with `window.start <= ts < window.end`, at most `max_rows` of them.

    Two passes keep memory at O(max_rows + one file): the first counts the window's rows per
    file (from the parquet footer for hours wholly inside the window, from the `ts` column
    at its edges); then a seeded uniform sample of row numbers is drawn and the second pass
    reads only the files that hold sampled rows, and only the wanted columns."""
    lo, hi = _micros(window.start), _micros(window.end)
    files: list[tuple[str, bool]] = []
    for h in window.hours():
        part = f"{root}/{kind}/date={h:%Y-%m-%d}/hour={h:%H}"
        try:
            names = sorted(fs.ls(part, detail=False))
        except FileNotFoundError:
            continue
        inside = h >= window.start and h + timedelta(hours=1) <= window.end
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".parquet") and not base.startswith(("_", ".")):
                files.append((name, inside))
    counts, unreadable = [], []
    for name, inside in files:
        try:
            if inside:
                with fs.open(name, "rb") as f:
                    counts.append(pq.ParquetFile(f).metadata.num_rows)
            else:
                ts = _ts_micros(_read(fs, name, ["ts"]))
                counts.append(int(((ts >= lo) & (ts < hi)).sum()))
        except (OSError, KeyError, pa.ArrowException) as e:
            log.warning("impression log: skipping unreadable %s: %s", name, e)
            unreadable.append(name)
            counts.append(0)
    total = int(sum(counts))
    if max_rows is not None and total > max_rows:
        picked = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
    else:
        picked = np.arange(total)
    parts, offset = [], 0
    for (name, _), n in zip(files, counts, strict=True):
        local = picked[(picked >= offset) & (picked < offset + n)] - offset
        offset += n
        if not len(local):
            continue
        try:
            table = _read(fs, name, columns)
        except (OSError, KeyError, pa.ArrowException) as e:
            log.warning("impression log: skipping unreadable %s: %s", name, e)
            unreadable.append(name)
            continue
        ts = _ts_micros(table)
        table = table.filter(pa.array((ts >= lo) & (ts < hi)))
        parts.append(table.take(pa.array(local[local < table.num_rows])))
    if parts:
        frame = pa.concat_tables(parts, promote_options="default").to_pandas()
    else:
        frame = pd.DataFrame({c: [] for c in columns or ["ts"]})
    return WindowSample(frame=frame, rows_in_window=total, files=len(files),
                        unreadable=tuple(unreadable))


def _read(fs: Any, name: str, columns: Sequence[str] | None) -> pa.Table:
    with fs.open(name, "rb") as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        wanted = None if columns is None else [c for c in dict.fromkeys(["ts", *columns])
                                               if c in have]
        return pf.read(columns=wanted)
