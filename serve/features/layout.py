"""The online feature store's key layout, sizes and decay arithmetic: pure, no Redis.

Every key starts with `prefix` (default `funnel:f`), so one Redis can hold several
deployments' features side by side (a staging and a production Funnel use two prefixes).

- `{p}:u:{user}:h`, `:s`, `:r`: sorted sets of the user's clicked posts (newest
  `history_len`), seen posts (last `seen_days`, newest `seen_cap`) and reported authors
  (newest `reported_cap`), scored by event time, each with a TTL;
- `{p}:i:{item}`: a hash of forward-decayed counts per event type and epoch;
- `{p}:t:{epoch}`: a sorted set of items by forward-decayed engagement (trending's input),
  the best `trending_cap` kept;
- `{p}:e:{event id}`: makes an event count once (TTL past the events' 7-day age limit);
- `{p}:meta`: `filled_at`, when the store was last (re)built.

docs/features.md has the table with the sizes, TTLs and measured memory.

Time-decayed counts use forward decay: an event of weight w at time t adds
`w * 2 ** ((t - epoch) / half_life)` to a sum whose epoch is the start of the event's
`epoch_s` period (a week by default); the sum's value at `now` is that total times
`2 ** ((epoch - now) / half_life)`. A write is one increment (no read-modify-write, no
timer), replays in any order add up to the same total, and a week of 6-hour half-lives keeps
the factor under 2**28, far inside a double's range. Readers add the current and the
previous epoch's sums, each brought to `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Key names and the bounds every write applies."""

    prefix: str = "funnel:f"
    history_len: int = 50
    history_ttl_s: int = 30 * 86_400
    seen_days: float = 7.0
    seen_cap: int = 1000
    reported_cap: int = 200
    reported_ttl_s: int = 180 * 86_400
    half_life_h: float = 6.0
    epoch_s: int = 7 * 86_400
    trending_cap: int = 10_000
    event_ttl_s: int = 8 * 86_400  # past the events endpoint's 7-day age limit

    @classmethod
    def from_settings(cls, f: Any, *, history: np.ndarray, half_life_h: float) -> Layout:
        """The layout of `args.features` (`serve.config.FeatureStoreSettings`) for a bundle
        whose user tower takes `history` (the fitted history table: its width is the
        history length) and a feed whose trending half-life is `half_life_h`."""
        return cls(prefix=f.prefix, history_len=int(history.shape[1]) if history.size else 50,
                   seen_days=f.seen_days, seen_cap=f.seen_cap, reported_cap=f.reported_cap,
                   half_life_h=half_life_h, trending_cap=f.trending_cap,
                   event_ttl_s=f.event_ttl_s)

    def history(self, user_id: int) -> str:
        return f"{self.prefix}:u:{user_id}:h"

    def seen(self, user_id: int) -> str:
        return f"{self.prefix}:u:{user_id}:s"

    def reported(self, user_id: int) -> str:
        return f"{self.prefix}:u:{user_id}:r"

    def item(self, item_id: int) -> str:
        return f"{self.prefix}:i:{item_id}"

    def trending(self, epoch: int) -> str:
        return f"{self.prefix}:t:{epoch}"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}:e:{event_id}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    # ---- decay -----------------------------------------------------------------------------
    @property
    def half_life_s(self) -> float:
        return self.half_life_h * 3600.0

    @property
    def seen_ttl_s(self) -> int:
        return int(self.seen_days * 86_400)

    @property
    def epoch_ttl_s(self) -> int:
        """An epoch's sums are read until the next epoch ends."""
        return 2 * self.epoch_s

    def epoch_of(self, t_s: float) -> int:
        return int(t_s // self.epoch_s) * self.epoch_s

    def forward(self, weight: float, t_s: float) -> tuple[int, float]:
        """(epoch, the increment) an event of `weight` at `t_s` adds to its epoch's sum."""
        epoch = self.epoch_of(t_s)
        return epoch, weight * 2.0 ** ((t_s - epoch) / self.half_life_s)

    def to_now(self, total: float | np.ndarray, epoch: int, now_s: float
               ) -> float | np.ndarray:
        """An epoch's forward-decayed sum, as the decayed value at `now_s`."""
        return total * 2.0 ** ((epoch - now_s) / self.half_life_s)

    def epochs_at(self, now_s: float) -> tuple[int, int]:
        """(current, previous) epochs a reader adds up at `now_s`."""
        cur = self.epoch_of(now_s)
        return cur, cur - self.epoch_s


def merge_trending(catalog_ids: np.ndarray, catalog_scores: np.ndarray,
                   live_ids: np.ndarray, live_scores: np.ndarray, limit: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's trending list plus the live decayed engagement (same units: weighted
    engagement events decayed to each list's own now), summed per item, best first, at most
    `limit`. Ties keep the bundle's order."""
    if not len(live_ids):
        return catalog_ids[:limit], catalog_scores[:limit]
    ids = np.concatenate([catalog_ids, live_ids]).astype(np.int64, copy=False)
    scores = np.concatenate([catalog_scores, live_scores]).astype(np.float64, copy=False)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    total = np.bincount(inverse, weights=scores, minlength=len(uniq))
    order = np.lexsort((first, -total))[:limit]
    return uniq[order], total[order]
