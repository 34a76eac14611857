"""The online feature store on Redis: what serving reads per feed and what events write.

Reads: `OnlineFeatures.read` sends one round trip per feed, a Lua script returning the
user's history, seen and reported sets as three comma-joined strings (parsed by hiredis and
numpy, no Python loop per member); a thread of the replica reads
the live trending lists every `trending_refresh_s` and merges them over the bundle's, so
the feed only picks up the latest merged list. Writes: `apply_events` runs one Lua script
per event in one pipeline; the script sets the event's id key first and does nothing when
it exists, so a replayed or retried event counts once (`layout.py`: keys, bounds, TTLs).

Failure: any Redis error or a reply slower than `timeout_ms` raises
`FeatureStoreUnavailable`, and the store is then not called for `retry_after_s`, so an
outage costs one timeout per replica per `retry_after_s`, not one per request. Serving
answers from the bundle's features meanwhile (`degraded: ["features"]`); the events written
during the outage are replayed from the impression log when Redis answers again
(serve/features/rebuild.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring import metrics
from serve.errors import FeatureStoreUnavailable
from serve.features.layout import Layout, merge_trending
from training.catalog import ENGAGEMENT_WEIGHTS

log = logging.getLogger("funnel.features")

# an event that applies: ARGV 1 event ttl, 2 item, 3 ts, 4 clicked (1/0), 5 history len,
# 6 history ttl, 7 seen cutoff, 8 seen cap, 9 seen ttl, 10 reported author ('' none),
# 11 reported cap, 12 reported ttl, 13 item field, 14 item increment, 15 epoch ttl,
# 16 trending increment (0: none), 17 trending cap, 18 the item field two epochs back,
# 19 the exact time (history's order: clicks within one second keep theirs; the seen and
# reported sets only need whole seconds, which a listpack stores as a small integer)
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local item, ts = ARGV[2], ARGV[3]
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[2], 'GT', ARGV[19], item)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('ZADD', KEYS[3], 'GT', ts, item)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[8]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[9])
if ARGV[10] ~= '' then
  redis.call('ZADD', KEYS[4], 'GT', ts, ARGV[10])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[11]) - 1)
  redis.call('EXPIRE', KEYS[4], ARGV[12])
end
redis.call('HINCRBYFLOAT', KEYS[5], ARGV[13], ARGV[14])
redis.call('HDEL', KEYS[5], ARGV[18])
redis.call('EXPIRE', KEYS[5], ARGV[15])
if tonumber(ARGV[16]) > 0 then
  redis.call('ZINCRBY', KEYS[6], ARGV[16], item)
  local cap = tonumber(ARGV[17])
  if redis.call('ZCARD', KEYS[6]) > cap + math.floor(cap / 10) then
    redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -cap - 1)
  end
  redis.call('EXPIRE', KEYS[6], ARGV[15])
end
return 1
"""

# one user's live features as three comma-joined strings (one reply to parse, in C):
# KEYS history, seen, reported; ARGV history length, the oldest seen time to keep
_READ = """
local h = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local s = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[2], '+inf')
local r = redis.call('ZRANGE', KEYS[3], 0, -1)
return {table.concat(h, ','), table.concat(s, ','), table.concat(r, ',')}
"""

# trending's engagement weights: the ones the bundle's catalog list was built with
TRENDING_WEIGHTS: Mapping[str, float] = ENGAGEMENT_WEIGHTS
HISTORY_EVENTS = frozenset({"click"})


@dataclass(frozen=True)
class EventRow:
    """One event as the store applies it (`author_id`: the item's author, for reports)."""

    event_id: str
    user_id: int
    item_id: int
    event: str
    ts_s: float
    author_id: int | None = None


@dataclass(frozen=True)
class Trending:
    """The merged trending list (bundle + live), as catalog rows too; built once per
    refresh, shared by every request until the next."""

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray


@dataclass(frozen=True)
class FreshFeatures:
    """One user's live features (ids as int64 arrays; history oldest first)."""

    history: np.ndarray
    seen: np.ndarray
    reported: np.ndarray
    trending: Trending | None = None


def _joined(b: bytes) -> np.ndarray:
    """`b"1,2,3"` -> int64 [1, 2, 3] (numpy's text parser, no Python loop)."""
    return np.fromstring(b, dtype=np.int64, sep=",") if b else np.zeros(0, np.int64)


class OnlineFeatures:
    """One replica's client of the feature store (thread-safe: redis-py's pool)."""

    def __init__(self, url: str, layout: Layout, *, timeout_s: float = 0.02,
                 retry_after_s: float = 1.0, trending_refresh_s: float = 1.0,
                 trending_size: int = 2000,
                 catalog_trending: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                 rows_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 allowed: Callable[[np.ndarray], np.ndarray] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 client: Any = None) -> None:
        import redis

        self.layout = layout
        self.url = url
        self.retry_after_s = retry_after_s
        self.trending_refresh_s = trending_refresh_s
        self.trending_size = trending_size
        self._catalog_trending = catalog_trending
        self._rows_of = rows_of
        self._allowed = allowed
        self._clock, self._monotonic = clock, monotonic
        self.redis: Any = client or redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, retry_on_timeout=False)
        self._apply = self.redis.register_script(_APPLY)
        self._read = self.redis.register_script(_READ)
        self._down_until = 0.0
        self._trending: Trending | None = None
        self._lock = threading.Lock()
        self.outage_since: float | None = None  # wall time of the first failure, until back
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._on_back: list[Callable[[float], None]] = []

    # ---- health ----------------------------------------------------------------------------
    def on_back(self, callback: Callable[[float], None]) -> None:
        """Call `callback(outage_started_s)` when Redis answers again after an outage."""
        self._on_back.append(callback)

    def _check(self, op: str) -> None:
        if self._monotonic() < self._down_until:
            metrics.FEATURE_OPS.labels(op, "skipped").inc()
            raise FeatureStoreUnavailable(f"feature store down; retrying after "
                                          f"{self.retry_after_s:g} s")

    def _failed(self, op: str, e: Exception) -> FeatureStoreUnavailable:
        self._down_until = self._monotonic() + self.retry_after_s
        metrics.FEATURE_OPS.labels(op, "error").inc()
        with self._lock:
            first = self.outage_since is None
            if first:
                self.outage_since = self._clock()
        if first:
            log.warning("feature store %s: %s: %s; serving the bundle's features",
                        redacted(self.url), op, _why(e))
        return FeatureStoreUnavailable(f"feature store: {op}: {_why(e)}")

    def _ok(self, op: str) -> None:
        metrics.FEATURE_OPS.labels(op, "ok").inc()
        if self.outage_since is None:
            return
        with self._lock:
            since, self.outage_since = self.outage_since, None
        if since is None:
            return
        log.info("feature store %s answers again (down since %.0f s ago)",
                 redacted(self.url), self._clock() - since)
        for cb in self._on_back:
            try:
                cb(since)
            except Exception:  # a callback's failure must not fail the request
                log.exception("feature store: after-outage callback failed")

    # ---- reads -----------------------------------------------------------------------------
    def read(self, user_id: int, now_s: float | None = None) -> FreshFeatures:
        """The user's live features (empty arrays for a user with none) and the latest
        merged trending list (None until the refresh thread has read one); one round trip.
        Raises FeatureStoreUnavailable."""
        self._check("read")
        lay = self.layout
        now = self._clock() if now_s is None else now_s
        try:
            h, s, r = self._read(keys=[lay.history(user_id), lay.seen(user_id),
                                       lay.reported(user_id)],
                                 args=[lay.history_len, int(now) - lay.seen_ttl_s])
        except Exception as e:  # connection refused, timeout, a server error
            raise self._failed("read", e) from e
        self._ok("read")
        return FreshFeatures(_joined(h), _joined(s), _joined(r), self._trending)

    def _merge(self, cur: list[tuple[bytes, float]], prev: list[tuple[bytes, float]],
               cur_epoch: int, prev_epoch: int, now: float) -> Trending:
        assert self._catalog_trending is not None
        lay = self.layout
        ids = np.fromiter((int(m) for m, _ in cur + prev), np.int64, len(cur) + len(prev))
        raw = np.fromiter((s for _, s in cur + prev), np.float64, len(ids))
        scale = np.concatenate([np.full(len(cur), lay.to_now(1.0, cur_epoch, now)),
                                np.full(len(prev), lay.to_now(1.0, prev_epoch, now))])
        live = raw * scale
        if self._allowed is not None and len(ids):
            keep = self._allowed(ids)
            ids, live = ids[keep], live[keep]
        c_ids, c_scores = self._catalog_trending()
        m_ids, m_scores = merge_trending(c_ids, c_scores, ids, live, self.trending_size)
        rows = self._rows_of(m_ids) if self._rows_of is not None else np.full(len(m_ids), -1)
        return Trending(m_ids, m_scores, rows)

    def start_trending_refresh(self) -> None:
        """Refresh the live trending list every `trending_refresh_s` in a thread of its own,
        so no feed pays for the merge (a few milliseconds on a million-post catalog)."""
        if self._refresher is not None or self._catalog_trending is None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self.refresh_trending()
                self._stop.wait(self.trending_refresh_s)

        self._refresher = threading.Thread(target=loop, daemon=True, name="features-trending")
        self._refresher.start()

    def refresh_trending(self) -> None:
        """Read the live trending lists and merge them over the bundle's (one round trip);
        a failure keeps the last list and counts as a failed read."""
        lay = self.layout
        now = self._clock()
        cur, prev = lay.epochs_at(now)
        if self._monotonic() < self._down_until:
            return
        try:
            p = self.redis.pipeline(transaction=False)
            p.zrevrange(lay.trending(cur), 0, self.trending_size - 1, withscores=True)
            p.zrevrange(lay.trending(prev), 0, self.trending_size - 1, withscores=True)
            a, b = p.execute()
        except Exception as e:
            self._failed("read", e)
            return
        self._ok("read")
        self._trending = self._merge(a, b, cur, prev, now)

    def close(self) -> None:
        self._stop.set()

    # ---- writes ----------------------------------------------------------------------------
    def apply_events(self, rows: Sequence[EventRow], now_s: float | None = None
                     ) -> tuple[int, int]:
        """Apply events (one pipeline); (applied, already applied before). Raises
        FeatureStoreUnavailable."""
        if not rows:
            return 0, 0
        self._check("write")
        lay = self.layout
        now = self._clock() if now_s is None else now_s
        cutoff = now - lay.seen_ttl_s
        try:
            p = self.redis.pipeline(transaction=False)
            for r in rows:
                epoch, inc = lay.forward(1.0, r.ts_s)
                w = TRENDING_WEIGHTS.get(r.event, 0.0)
                author = str(r.author_id) if r.event == "report" and r.author_id is not None \
                    else ""
                self._apply(keys=[lay.event(r.event_id), lay.history(r.user_id),
                                  lay.seen(r.user_id), lay.reported(r.user_id),
                                  lay.item(r.item_id), lay.trending(epoch)],
                            args=[lay.event_ttl_s, r.item_id, int(r.ts_s),
                                  int(r.event in HISTORY_EVENTS), lay.history_len,
                                  lay.history_ttl_s, int(cutoff), lay.seen_cap,
                                  lay.seen_ttl_s, author, lay.reported_cap,
                                  lay.reported_ttl_s, f"{r.event}:{epoch}", repr(inc),
                                  lay.epoch_ttl_s, repr(w * inc), lay.trending_cap,
                                  f"{r.event}:{epoch - 2 * lay.epoch_s}",
                                  repr(float(r.ts_s))],
                            client=p)
            out = p.execute()
        except Exception as e:
            raise self._failed("write", e) from e
        self._ok("write")
        applied = int(sum(int(x) for x in out))
        metrics.FEATURE_EVENTS.labels("applied").inc(applied)
        metrics.FEATURE_EVENTS.labels("already").inc(len(rows) - applied)
        return applied, len(rows) - applied

    def mark_seen(self, user_id: int, item_ids: Sequence[int] | np.ndarray, ts_s: float
                  ) -> None:
        """Served items count as seen (ZADD is idempotent: no event id needed)."""
        if not len(item_ids):
            return
        self._check("write")
        lay = self.layout
        key = lay.seen(user_id)
        try:
            p = self.redis.pipeline(transaction=False)
            t = int(ts_s)  # whole seconds: a small integer packs into a few bytes
            p.zadd(key, {str(int(i)): t for i in item_ids}, gt=True)
            p.zremrangebyscore(key, "-inf", f"({t - lay.seen_ttl_s}")
            p.zremrangebyrank(key, 0, -lay.seen_cap - 1)
            p.expire(key, lay.seen_ttl_s)
            p.execute()
        except Exception as e:
            raise self._failed("write", e) from e
        self._ok("write")

    # ---- the store as a whole --------------------------------------------------------------
    def filled_at(self) -> float | None:
        """When the store was last (re)built, None when it holds nothing (a Redis restarted
        empty). Raises FeatureStoreUnavailable."""
        try:
            v = self.redis.hget(self.layout.meta, "filled_at")
        except Exception as e:
            raise self._failed("meta", e) from e
        return float(v) if v is not None else None

    def mark_filled(self, at_s: float) -> None:
        self.redis.hset(self.layout.meta, mapping={"filled_at": repr(at_s)})

    def memory(self, sample: int = 200) -> dict[str, float]:
        """Redis's used memory and the mean size of a sample of user and item keys, for the
        memory gauges (SCAN + MEMORY USAGE; off the request path)."""
        info = self.redis.info("memory")
        out: dict[str, float] = {"used_bytes": float(info.get("used_memory", 0)),
                                 "limit_bytes": float(info.get("maxmemory", 0))}
        for kind, pattern in (("user", f"{self.layout.prefix}:u:*"),
                              ("item", f"{self.layout.prefix}:i:*")):
            sizes = []
            for key in self.redis.scan_iter(match=pattern, count=500):
                sizes.append(self.redis.memory_usage(key) or 0)
                if len(sizes) >= sample:
                    break
            out[f"{kind}_key_bytes"] = float(np.mean(sizes)) if sizes else 0.0
        return out


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def redacted(url: str) -> str:
    """The URL without its password (never log credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
