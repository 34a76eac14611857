"""Every Prometheus metric Funnel's serving processes export, declared once.

Naming follows Prometheus conventions (`funnel_` prefix, base units, `_total` counters,
`_seconds` histograms); every label has a bounded set of values, listed below, and the
known values are initialised at import so that `rate()` and the alert rules see a zero
before the first event, not a missing series.

Processes. A node runs several Funnel processes (the ingress replicas, the moderation
models, the rollout controller). `funnel serve` (and the Helm chart) set
`PROMETHEUS_MULTIPROC_DIR` to a fresh directory for all of them before they start; each
process then writes its samples there (prometheus_client's multiprocess mode), and
`render()` in any of them returns the node's totals. Without the variable, `render()`
returns the calling process's own registry (tests, `funnel drift`).

Label values:
- route: the matched route template (`/v1/feed`, `/v2/models/{name}/infer`, ...), a gRPC
  method as `grpc:<Method>`, or `unmatched`. code: the HTTP status, or the gRPC status name.
- stage (feed timings): features, candidates, merge_filter, rank, ranker_call, rerank, total.
- source: ann, social, trending, fresh. reason: the filter names (serve.filters).
- degraded stage: ranker, source:<name>, moderation_text, moderation_image, features.
- decision / outcome: allow, review, block. label: the bundle's moderation labels + image
  labels. kind (impression log): feed, moderation, events. event: click, like, comment,
  share, hide, report, dwell.
- variant: the rollout variant names of the applied config (bounded by the config).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from funnel.contracts import names

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# request latencies: the feed's SLO is p99 <= 150 ms, so the buckets are dense around it
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15,
                 0.25, 0.5, 1.0)
COUNT_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)

FEED_STAGES = ("features", "candidates", "merge_filter", "rank", "ranker_call", "rerank",
               "interleaving", "total")
SOURCES = names.SOURCES
DECISIONS = ("allow", "review", "block")
DEGRADED_STAGES = names.DEGRADED_STAGES
IMPRESSION_KINDS = ("feed", "moderation", "events")
EVENT_TYPES = names.EVENT_TYPES
IMPRESSION_OUTCOMES = ("written", "dropped", "failed")

# ---- requests --------------------------------------------------------------------------
REQUESTS = Counter("funnel_requests", "Requests answered, by route and status code",
                   ["route", "code"])
REQUEST_SECONDS = Histogram("funnel_request_duration_seconds",
                            "Time from the request reaching the ingress replica to its "
                            "response, by route", ["route"], buckets=LATENCY_BUCKETS)
SHED = Counter("funnel_shed", "Requests refused by admission control (HTTP 429 / gRPC "
               "RESOURCE_EXHAUSTED) because the replica was at its bound, by route",
               ["route"])
DEGRADED = Counter("funnel_degraded", "Responses served with a stage degraded (a fallback "
                   "in place of the stage), by route and stage", ["route", "stage"])
RESPONSES_DEGRADED = Counter("funnel_responses_degraded", "Responses with at least one "
                             "degraded stage, by route", ["route"])

# ---- the feed --------------------------------------------------------------------------
FEED_STAGE_SECONDS = Histogram("funnel_feed_stage_duration_seconds", "Time spent in each "
                               "stage of a feed request", ["stage"], buckets=STAGE_BUCKETS)
FEED_CANDIDATES = Histogram("funnel_feed_candidates", "Candidates a source returned for one "
                            "feed request", ["source"], buckets=COUNT_BUCKETS)
FEED_FILTERED = Counter("funnel_feed_filtered", "Candidates removed by a filter, by filter",
                        ["reason"])
FEED_ITEMS = Histogram("funnel_feed_items", "Items returned in one feed response",
                       buckets=(0, 1, 5, 10, 20, 50, 100, 200))
FEED_COLD_START = Counter("funnel_feed_cold_start", "Feed requests for users the bundle does "
                          "not know (cold start)")
RANKER_ROWS = Histogram("funnel_ranker_batch_rows", "Rows (candidates) in one ranker call "
                        "from the ingress; Triton's own batching is in its metrics (port "
                        "8002): nv_inference_exec_count vs nv_inference_request_success",
                        ["variant"], buckets=COUNT_BUCKETS)
RANKER_SECONDS = Histogram("funnel_ranker_call_duration_seconds", "Ranker (Triton) call "
                           "latency seen by the ingress, features excluded", ["variant"],
                           buckets=STAGE_BUCKETS)

INTERLEAVED = Counter("funnel_interleaved_requests", "Feed requests sampled for team-draft "
                      "interleaving, by the interleaved ranker variant and outcome: served "
                      "(the merged page), candidate_failed (its ranker failed; the "
                      "primary's page was served)", ["variant", "outcome"])

# ---- moderation ------------------------------------------------------------------------
MODERATION_DECISIONS = Counter("funnel_moderation_decisions", "Moderation decisions, by "
                               "decision and content (text, image, text+image)",
                               ["decision", "content"])
MODERATION_LABELS = Counter("funnel_moderation_label_outcomes", "Per-label outcome of every "
                            "moderation call: which threshold the label's score crossed",
                            ["label", "outcome"])

REVIEW_SPOOL = Counter("funnel_review_spool_records", "Moderation decisions parked on local "
                       "disk while the review database was away (parked), and later written "
                       "to it (written)", ["outcome"])
for _o in ("parked", "written"):
    REVIEW_SPOOL.labels(_o)

# ---- the impression log ----------------------------------------------------------------
IMPRESSIONS = Counter("funnel_impression_records", "Impression-log records by outcome: "
                      "written to storage, dropped (buffer full), failed (the write "
                      "raised; the batch is lost)", ["kind", "outcome"])
IMPRESSIONS_BUFFERED = Gauge("funnel_impression_buffered_records", "Records waiting in "
                             "memory for the next write (what a crash would lose)", ["kind"],
                             multiprocess_mode="livesum")
SPOOL_RECOVERED = Counter("funnel_impression_spool_recovered_records", "Records a stopped "
                          "replica left in its write-ahead spool, taken over at start "
                          "(recovered: written to the log like new records; torn: a line cut "
                          "short by the stop, never acknowledged)", ["kind", "outcome"])
IMPRESSION_FLUSH_SECONDS = Histogram("funnel_impression_flush_duration_seconds", "Time to "
                                     "write one batch of records", ["kind"],
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                              2.5, 5.0, 10.0))

# ---- outcome events --------------------------------------------------------------------
BUNDLE_PULLS = Counter("funnel_bundle_pulls", "Bundle versions pulled from the model "
                      "registry into this node's bundle root, by result (ok, failed: an "
                      "unknown version, a file that did not match its checksum, the store "
                      "away; nothing of a failed pull is loaded)", ["result"])
EVENTS = Counter("funnel_events", "Outcome events received (POST /v1/events), by type and "
                 "outcome: accepted (logged), duplicate (an id this replica already logged)",
                 ["event", "outcome"])

# ---- the online feature store (serve/features) ------------------------------------------
FEATURE_OPS = Counter("funnel_feature_store_ops", "Feature-store calls by operation (read: "
                      "one feed's round trip; write: events or served items; meta) and "
                      "outcome (ok; error: Redis failed or passed its timeout; skipped: not "
                      "tried during the retry pause after an error)", ["op", "outcome"])
FEATURE_EVENTS = Counter("funnel_feature_store_events", "Events applied to the feature "
                         "store (applied), or found already applied by their id (already: "
                         "a retry or a replay)", ["outcome"])
FEATURE_REBUILT = Counter("funnel_feature_store_rebuilt_events", "Events replayed from the "
                          "impression log into the feature store, by why (outage: written "
                          "while Redis was away; empty: Redis came back without its data; "
                          "command: funnel features rebuild) and outcome (applied, already)",
                          ["reason", "outcome"])
FEATURE_LAG_SECONDS = Histogram("funnel_feature_store_lag_seconds", "Event time to visible "
                                "in the feature store (the write acknowledged by Redis)",
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                         5.0, 10.0, 30.0, 60.0, 300.0))
FEATURE_MEMORY = Gauge("funnel_feature_store_memory_bytes", "Redis memory: used and limit "
                       "(the whole server; limit 0: no maxmemory), user_key and item_key (mean "
                       "size of a sampled key)", ["kind"],
                       multiprocess_mode="max")
# ---- cost (serve/cost.py, docs/cost.md) --------------------------------------------------
COST_CORE_SECONDS = Counter("funnel_cost_core_seconds", "CPU core-seconds attributed to "
                            "requests, by stage (ingress, source:<name>, ranker, "
                            "moderation_text, moderation_image, shadow), model (the bundle "
                            "version of the model that ran; '' for no model), variant (the "
                            "rollout variant the request was served by) and route (feed, "
                            "moderate, shadow)", ["stage", "model", "variant", "route"])
COST_GPU_SECONDS = Counter("funnel_cost_gpu_seconds", "GPU-seconds attributed to requests "
                           "(the ranker's Triton compute on a GPU instance, shared by rows), "
                           "by stage, model, variant and route",
                           ["stage", "model", "variant", "route"])
COST_REQUESTS = Counter("funnel_cost_requests", "Requests whose CPU was attributed, by route "
                        "and variant (a feed's: its ranker variant)", ["route", "variant"])
COST_PROCESS_CPU = Counter("funnel_cost_process_cpu_seconds", "CPU seconds (user + system) "
                           "of the stack's processes on this node, read from /proc, by "
                           "component (ingress, moderation, scorer, controller, proxy, "
                           "triton, ray, launcher, other): the total that attributed time "
                           "and overhead add up to", ["component"])
COST_PROCESS_MEMORY = Gauge("funnel_cost_process_memory_bytes", "Resident memory of the "
                            "stack's processes on this node, by component",
                            ["component"], multiprocess_mode="livesum")
COST_CAPACITY_CORES = Gauge("funnel_cost_capacity_cores", "Cores the stack may use on the "
                            "controller's node (its container's CPU limit, else its CPUs): "
                            "capacity minus the processes' CPU is idle",
                            multiprocess_mode="livemax")
COST_PRICE = Gauge("funnel_cost_price_usd", "The prices cost is computed with (args.cost or "
                   "OpenCost's), by resource: cpu_core_hour, memory_gib_hour, gpu_hour",
                   ["resource"], multiprocess_mode="livemax")
COST_ROUTES = ("feed", "moderate", "shadow")
COST_COMPONENTS = ("ingress", "moderation", "scorer", "controller", "proxy", "triton", "ray",
                   "launcher", "other")
for _c in COST_COMPONENTS:
    COST_PROCESS_CPU.labels(_c)
for _r in COST_ROUTES:
    COST_REQUESTS.labels(_r, "primary")

for _op in ("read", "write", "meta"):
    for _o in ("ok", "error", "skipped"):
        FEATURE_OPS.labels(_op, _o)
for _o in ("applied", "already"):
    FEATURE_EVENTS.labels(_o)
    for _why in ("outage", "empty", "command"):
        FEATURE_REBUILT.labels(_why, _o)
for _k in ("used", "limit", "user_key", "item_key"):
    FEATURE_MEMORY.labels(_k)

for _e in EVENT_TYPES:
    for _o in ("accepted", "duplicate"):
        EVENTS.labels(_e, _o)
for _s in FEED_STAGES:
    FEED_STAGE_SECONDS.labels(_s)
for _s in SOURCES:
    FEED_CANDIDATES.labels(_s)
for _d in DECISIONS:
    for _c in ("text", "image", "text+image"):
        MODERATION_DECISIONS.labels(_d, _c)
for _k in IMPRESSION_KINDS:
    for _o in IMPRESSION_OUTCOMES:
        IMPRESSIONS.labels(_k, _o)
    IMPRESSIONS_BUFFERED.labels(_k)
    for _o in ("recovered", "torn"):
        SPOOL_RECOVERED.labels(_k, _o)
for _r in ("/v1/feed", "/v1/moderate", "/v1/events"):
    RESPONSES_DEGRADED.labels(_r)
    REQUEST_SECONDS.labels(_r)
    for _st in DEGRADED_STAGES:
        DEGRADED.labels(_r, _st)
    for _code in ("200", "400", "413", "422", "429", "500", "503"):
        REQUESTS.labels(_r, _code)
SHED.labels("/v1/feed")
FEED_COLD_START.inc(0)
for _res in ("ok", "failed"):
    BUNDLE_PULLS.labels(_res)


def init_labels(*, filters: Iterable[str] = (), labels: Iterable[str] = (),
                variants: Iterable[str] = ("primary",)) -> None:
    """Initialise the label values only the loaded bundle and config know (filters,
    moderation labels, ranker variants), so their series exist before the first event."""
    for f in filters:
        FEED_FILTERED.labels(f)
    for lb in labels:
        for o in DECISIONS:
            MODERATION_LABELS.labels(lb, o)
    for v in variants:
        RANKER_ROWS.labels(v)
        RANKER_SECONDS.labels(v)


def observe_feed(*, route: str, timings_ms: dict[str, float], candidates: dict[str, int],
                 filtered: dict[str, int], degraded: Iterable[str], items: int,
                 cold_start: bool, ranker_rows: int, ranker_variant: str) -> None:
    """One served feed (HTTP or gRPC)."""
    for stage in FEED_STAGES:
        ms = timings_ms.get(stage)
        if ms is not None:
            FEED_STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    for source, n in candidates.items():
        FEED_CANDIDATES.labels(source).observe(n)
    for reason, n in filtered.items():
        if n:
            FEED_FILTERED.labels(reason).inc(n)
    FEED_ITEMS.observe(items)
    if cold_start:
        FEED_COLD_START.inc()
    if "ranker_call" in timings_ms:
        RANKER_ROWS.labels(ranker_variant).observe(ranker_rows)
        RANKER_SECONDS.labels(ranker_variant).observe(timings_ms["ranker_call"] / 1000.0)
    observe_degraded(route, degraded)


def observe_degraded(route: str, degraded: Iterable[str]) -> None:
    stages = list(degraded)
    for s in stages:
        DEGRADED.labels(route, s).inc()
    if stages:
        RESPONSES_DEGRADED.labels(route).inc()


def observe_moderation(*, route: str, decision: str, content: str,
                       label_outcomes: dict[str, str], degraded: Iterable[str]) -> None:
    MODERATION_DECISIONS.labels(decision, content).inc()
    for label, outcome in label_outcomes.items():
        MODERATION_LABELS.labels(label, outcome).inc()
    observe_degraded(route, degraded)


def set_prices(cpu_core_hour: float, memory_gib_hour: float, gpu_hour: float) -> None:
    for resource, usd in (("cpu_core_hour", cpu_core_hour),
                          ("memory_gib_hour", memory_gib_hour), ("gpu_hour", gpu_hour)):
        COST_PRICE.labels(resource).set(usd)


def observe_cost(route: str, variant: str, core_s: dict[tuple[str, str], float],
                 *, gpu_s: dict[tuple[str, str], float] | None = None,
                 count: bool = True) -> None:
    """One request's attributed core-seconds (and GPU-seconds) by (stage, model)
    (serve.cost.RequestCost); `count` False: CPU charged apart from the request's count (a
    moderation batch's share)."""
    for (stage, model), sec in core_s.items():
        COST_CORE_SECONDS.labels(stage, model, variant, route).inc(sec)
    for (stage, model), sec in (gpu_s or {}).items():
        COST_GPU_SECONDS.labels(stage, model, variant, route).inc(sec)
    if count:
        COST_REQUESTS.labels(route, variant).inc()


def observe_request(route: str, code: int | str, seconds: float) -> None:
    REQUESTS.labels(route, str(code)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(extra: Iterable[Collector] = ()) -> bytes:
    """The exposition text: the node's Funnel processes (multiprocess mode) or this
    process's registry, plus `extra` collectors (the rollout's, the review queue's)."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        registry.register(_Funnel(multiprocess.MultiProcessCollector(None, path=path)))
    else:
        registry = REGISTRY
    extra = list(extra)
    if not extra:
        return generate_latest(registry)
    combined = CollectorRegistry()
    combined.register(_Forward(registry))
    for c in extra:
        combined.register(c)
    return generate_latest(combined)


class _Forward(Collector):
    """Another registry's metrics, for rendering it together with extra collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._r = registry

    def collect(self) -> Iterable[Metric]:
        return self._r.collect()

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only: no name clash check at registration


class _Funnel(Collector):
    """Funnel's families only: where the variable is set for a whole pod, Ray's own
    processes write their prometheus_client metrics into the same directory (Ray exports
    those itself, on its metrics port)."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        return (m for m in self._inner.collect() if m.name.startswith("funnel_"))

    def describe(self) -> Iterable[Metric]:
        return []


def mark_process_dead(pid: int | None = None) -> None:
    """Drop this process's live gauges from the node's totals (at replica shutdown)."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), path)


class ReviewBacklog(Collector):
    """The review queue's depth and the age of its oldest pending item, read from the
    database at scrape time (one aggregate query), so every replica reports the same."""

    def __init__(self, depth: int | None, oldest_age_s: float | None,
                 spool: tuple[int, float] | None = None) -> None:
        self.depth, self.oldest_age_s = depth, oldest_age_s
        self.spool = spool  # this replica's parked decisions: (records, oldest age s)

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("funnel_review_queue_up", "1 when the review database "
                               "answered this scrape's backlog query")
        up.add_metric([], 0.0 if self.depth is None else 1.0)
        yield up
        if self.spool is not None:
            yield GaugeMetricFamily("funnel_review_spool_depth", "Moderation decisions parked "
                                    "on this replica's disk, waiting for the review database",
                                    value=self.spool[0])
            yield GaugeMetricFamily("funnel_review_spool_oldest_age_seconds", "Age of the "
                                    "oldest parked decision (0 when none)", value=self.spool[1])
        if self.depth is None:
            return
        yield GaugeMetricFamily("funnel_review_queue_depth", "Items waiting for a human "
                                "reviewer", value=self.depth)
        yield GaugeMetricFamily("funnel_review_queue_oldest_age_seconds", "Age of the oldest "
                                "item waiting for review (0 when none waits)",
                                value=self.oldest_age_s or 0.0)

    def describe(self) -> Iterable[Metric]:
        return []
