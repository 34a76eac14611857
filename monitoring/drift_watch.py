"""The drift monitor's long-running mode: a run per interval, and its Prometheus gauges.

Windows are aligned to the interval: with `every=1h` the loop wakes at the top of each hour
(plus `settle_s`, so the replicas' last buffered records of the hour are written) and
compares the hour that just ended; the first run happens at start, on the last complete
interval. A failed run is logged and counted, and the loop goes on.

Metrics (own registry; the alert rules use these names):
- funnel_drift_score{group, column, method}: the column's drift score in the last window.
- funnel_drift_column_drifted{group, column}: 1 when that score reached its threshold.
- funnel_drift_share{group}: the share of the group's columns that drifted.
- funnel_drift_dataset_drifted{group}: 1 when that share reached `drift_share`.
- funnel_drift_window_rows{group}: live rows compared for the group in the last window (for
  a group with insufficient data, the rows the window had).
- funnel_drift_insufficient_data{group}: 1 when the group had fewer than `min_rows` rows in
  the window or the reference, so it was not judged: it then has no score, drifted, share or
  dataset-drifted series, and no drift alert can fire on it; 0 otherwise.
- funnel_drift_last_success_timestamp_seconds: end of the last run that did not fail
  (an empty window counts: the monitor worked, the log was empty); 0 before the first.
- funnel_drift_run_duration_seconds: how long the last run took.
- funnel_drift_runs_total{outcome}: runs by outcome, ok | empty | failed.
The per-column and per-group series are replaced at every successful run (a column no
longer compared disappears), and removed after an empty window: no stale score keeps an
alert firing or silent; `funnel_drift_window_rows` then reads 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from monitoring.drift import GROUPS, DriftRun

log = logging.getLogger("funnel.drift")
OUTCOMES = ("ok", "empty", "failed")


class DriftMetrics:
    """The drift gauges, in a registry of their own (not the serving processes')."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.score = Gauge("funnel_drift_score", "Drift score of a column in the last window "
                           "(Wasserstein normed by the reference's std, or PSI)",
                           ["group", "column", "method"], registry=r)
        self.column_drifted = Gauge("funnel_drift_column_drifted", "1 when the column's drift "
                                    "score reached its threshold in the last window",
                                    ["group", "column"], registry=r)
        self.share = Gauge("funnel_drift_share", "Share of the group's columns that drifted "
                           "in the last window", ["group"], registry=r)
        self.dataset_drifted = Gauge("funnel_drift_dataset_drifted", "1 when the group's "
                                     "drifted share reached drift_share", ["group"],
                                     registry=r)
        self.window_rows = Gauge("funnel_drift_window_rows", "Live rows compared for the "
                                 "group in the last window", ["group"], registry=r)
        self.insufficient = Gauge("funnel_drift_insufficient_data", "1 when the group had "
                                  "fewer than min_rows rows in the last window or the "
                                  "reference: not judged, no drift series", ["group"],
                                  registry=r)
        self.last_success = Gauge("funnel_drift_last_success_timestamp_seconds", "When the "
                                  "last run that did not fail ended (Unix time)", registry=r)
        self.duration = Gauge("funnel_drift_run_duration_seconds", "Duration of the last run",
                              registry=r)
        self.runs = Counter("funnel_drift_runs", "Drift runs by outcome (ok, empty, failed)",
                            ["outcome"], registry=r)
        for o in OUTCOMES:
            self.runs.labels(o)
        for g in GROUPS:
            self.window_rows.labels(g)
            self.insufficient.labels(g)

    def observe(self, run: DriftRun, *, duration_s: float, now_s: float) -> None:
        for gauge in (self.score, self.column_drifted, self.share, self.dataset_drifted):
            gauge.clear()
        for c in run.columns:
            self.score.labels(c.group, c.column, c.method).set(c.score)
            self.column_drifted.labels(c.group, c.column).set(int(c.drifted))
        for name, res in run.groups.items():
            if res.status != "ok" or res.drifted_share is None:
                continue  # no verdict: leave the alerted series out
            self.share.labels(name).set(res.drifted_share)
            self.dataset_drifted.labels(name).set(int(res.dataset_drifted))
        for g in GROUPS:
            got = run.groups.get(g)
            self.window_rows.labels(g).set(got.rows if got is not None else 0)
            self.insufficient.labels(g).set(int(got is not None and got.status != "ok"))
        self.runs.labels(run.status).inc()
        self.duration.set(duration_s)
        self.last_success.set(now_s)

    def failed(self, *, duration_s: float) -> None:
        self.runs.labels("failed").inc()
        self.duration.set(duration_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def last_complete_end(now: datetime, every: timedelta) -> datetime:
    """The latest multiple of `every` (since the Unix epoch) at or before `now`."""
    step = every.total_seconds()
    return datetime.fromtimestamp((now.timestamp() // step) * step, UTC)


def watch(*, run_window: Callable[[datetime], DriftRun], every: timedelta,
          metrics: DriftMetrics, stop: threading.Event, settle_s: float = 30.0,
          clock: Callable[[], float] = time.time,
          say: Callable[[str], None] = lambda _m: None) -> int:
    """Run `run_window(end)` for each interval until `stop` is set; returns runs made."""
    runs = 0
    last_end: datetime | None = None
    while not stop.is_set():
        end = last_complete_end(datetime.fromtimestamp(clock() - settle_s, UTC), every)
        if end != last_end:
            t0 = time.perf_counter()
            try:
                run = run_window(end)
            except Exception as e:  # a failed window is counted; the next one still runs
                metrics.failed(duration_s=time.perf_counter() - t0)
                log.exception("drift run for the window ending %s failed", end.isoformat())
                say(f"window ending {end.isoformat()}: failed: {type(e).__name__}: {e}")
            else:
                metrics.observe(run, duration_s=time.perf_counter() - t0, now_s=clock())
                say(f"window ending {end.isoformat()}: " + (
                    ", ".join(f"{g} {r.drifted_columns}/{r.columns} drifted" if r.status == "ok"
                              else f"{g} {r.status} ({r.rows:,} rows)"
                              for g, r in run.groups.items())
                    if run.status == "ok" else "no records in window"))
            last_end, runs = end, runs + 1
        nxt = (end + every).timestamp() + settle_s
        stop.wait(max(1.0, nxt - clock()))
    return runs
