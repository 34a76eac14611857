"""Serving configuration: the `args` of the Ray Serve application.

The file `funnel serve` reads (serve/configs/local.yaml) is a real Ray Serve config; Funnel's
own settings sit under `applications[].args` and are parsed here, once, by `build_app`.
Unknown keys are rejected and every constraint names the field and the allowed range, so a
typo in a values file fails at deploy time instead of serving with a default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from funnel.contracts import names
from funnel.contracts.model_io import TASKS
from serve.errors import ServeConfigError
from training.config import read_yaml

SOURCE_NAMES = names.SOURCES
FILTER_NAMES = names.FILTERS


def _only_known(names: Iterable[str], allowed: Sequence[str], what: str) -> Any:
    """`names` unchanged if every one is in `allowed`; else ValueError listing both."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; allowed: {list(allowed)}")
    return names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(_Strict):
    enabled: bool = True
    quota: int = Field(100, ge=0, le=2000, description="most candidates taken from the source")
    timeout_ms: float = Field(50.0, gt=0, le=10_000)


def _default_sources() -> dict[str, SourceSettings]:
    return {"ann": SourceSettings(quota=200), "social": SourceSettings(quota=100),
            "trending": SourceSettings(quota=100), "fresh": SourceSettings(quota=50)}


class RankerSettings(_Strict):
    backend: Literal["triton", "local"] = Field(
        "triton", description="triton: the ranker on Triton at `url`, whose dynamic batcher "
        "groups concurrent requests; local: each feed replica runs the bundle's TorchScript "
        "ranker in-process (no Triton: a laptop, a CPU-only dev box, a test)")
    url: str = Field("127.0.0.1:8011", description="Triton gRPC address, host:port")
    model_name: str = "ranker"
    timeout_ms: float = Field(150.0, gt=0, le=10_000)
    weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 0.5, "comment": 0.3, "share": 0.3,
                                 "hide": -1.0})
    # After a failure, skip Triton for this long (answer in retrieval order at once) before
    # trying again, so a dead Triton costs one timeout, not one per request.
    retry_after_s: float = Field(1.0, ge=0, le=60)

    @field_validator("weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        return _only_known(v, TASKS, "task")


class RerankSettings(_Strict):
    author_cap: int = Field(2, ge=1)
    topic_cap: int = Field(4, ge=1)
    mmr_lambda: float = Field(0.8, ge=0, le=1)
    freshness_weight: float = Field(0.1, ge=0)
    freshness_half_life_h: float = Field(24.0, gt=0)
    explore_slots: int = Field(1, ge=0, le=10)
    explore_min_rank: int = Field(5, ge=1)


class FilterSettings(_Strict):
    enabled: list[str] = Field(default_factory=lambda: list(FILTER_NAMES))
    review_policy: Literal["hold", "allow"] = "hold"
    locale: Literal["any", "user_language"] = "any"

    @field_validator("enabled")
    @classmethod
    def _known_filters(cls, v: list[str]) -> list[str]:
        _only_known(v, FILTER_NAMES, "filter")
        if len(set(v)) != len(v):
            raise ValueError(f"a filter is listed twice: {v}")
        return v


class AdmissionSettings(_Strict):
    """Admission control of one ingress replica (`serve.admission`; docs/performance.md)."""

    max_inflight: int = Field(
        16, ge=0, le=10_000, description="feed requests one replica works on at once; past "
        "it a request is refused at once (HTTP 429 / gRPC RESOURCE_EXHAUSTED). 0: no bound")
    retry_after_s: float = Field(1.0, gt=0, le=60, description="the Retry-After a refused "
                                 "request is given")


class FeedSettings(_Strict):
    sources: dict[str, SourceSettings] = Field(default_factory=_default_sources)
    max_candidates: int = Field(400, ge=1, le=5000, description="after merge, before filters")
    ranker: RankerSettings = Field(default_factory=RankerSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    filters: FilterSettings = Field(default_factory=FilterSettings)
    clock: Literal["catalog", "wall"] = Field(
        "catalog", description="'catalog': now = the snapshot's newest event (demo data); "
        "'wall': the real clock")
    trending_half_life_h: float = Field(6.0, gt=0)
    ann_ef_search: int | None = Field(None, ge=1, le=4096)
    # Per-request model work is small (one user, a few hundred candidates). Intra-op thread
    # pools cost more than they win: after 200 ms idle, waking torch's and BLAS's pools made
    # the ranker stage 35 ms instead of 5 ms on 2 cores. Scale with replicas, not threads.
    intra_op_threads: int = Field(1, ge=1, le=64)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: dict[str, SourceSettings]) -> dict[str, SourceSettings]:
        return _only_known(v, SOURCE_NAMES, "source")


class TritonSettings(_Strict):
    """How `funnel serve` launches Triton (nvidia-pytriton's tritonserver) for the ranker."""

    host: str = "127.0.0.1"
    http_port: int = Field(8010, ge=1, le=65535)
    grpc_port: int = Field(8011, ge=1, le=65535)
    metrics_port: int = Field(8012, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # python_backend: the model runs in Triton's Python-backend stub (one process hop);
    # pytriton: bound through PyTriton's API, a second hop (~4 ms a call; see BENCHMARKS.md)
    runtime: Literal["python_backend", "pytriton"] = "python_backend"
    max_batch_size: int = Field(1024, ge=1, le=65536)
    dynamic_batching: bool = True
    # 0: a lone request is not held back; under load, requests that queue while the model
    # runs still form the next batch (BENCHMARKS.md: Triton batching)
    max_queue_delay_us: int = Field(0, ge=0, le=1_000_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    instances: int = Field(1, ge=1, le=16)
    intra_op_threads: int = Field(1, ge=1, le=64, description="torch threads on CPU")


DEFAULT_POLICY = str(Path(__file__).resolve().parent / "configs" / "moderation-policy.yaml")


class ModerationSettings(_Strict):
    """`/v1/moderate`: the models' deployment, the policy file, the request limits."""

    enabled: bool = True
    policy: str = Field(DEFAULT_POLICY, description="moderation policy YAML (thresholds)")
    # The body carries a base64 image of up to 5 MiB decoded (~6.7 MiB encoded)
    max_body_bytes: int = Field(8 << 20, ge=1024, le=64 << 20)
    timeout_ms: float = Field(5000.0, gt=0, le=60_000,
                              description="wait for model scores; after it: degraded review")
    text_max_batch_size: int = Field(32, ge=1, le=1024)
    image_max_batch_size: int = Field(8, ge=1, le=256)
    # A call that finds the model idle waits this long for others; calls that arrive while
    # the model runs always join the next batch (serve/batcher.py). 0: no wait.
    batch_wait_timeout_ms: float = Field(0.0, ge=0, le=1000)
    intra_op_threads: int = Field(1, ge=1, le=64)


class ReviewSettings(_Strict):
    """The human-review queue's database and the admin routes' token."""

    # SQLite file (embedded) by default; a PostgreSQL URL in a cluster. The environment
    # variable named by `database_url_env`, when set, wins: a URL with a password belongs in a
    # Secret, not in a config file.
    database_url: str = "sqlite:///funnel-review.sqlite3"
    database_url_env: str = "FUNNEL_REVIEW_DATABASE_URL"
    store_class: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="another review store, as 'package.module:Class' (constructed with the "
        "database URL, implementing serve.review.base.ReviewStore); null: the SQL store for "
        "sqlite:// and postgresql:// URLs")
    admin_token_env: str = "FUNNEL_ADMIN_TOKEN"
    verdict_poll_s: float = Field(2.0, gt=0, le=3600,
                                  description="how often the feed reads new verdicts")
    max_list_limit: int = Field(200, ge=1, le=10_000)
    # Where moderation parks decisions while the database is away (serve/review/spool.py);
    # null: no spool, and a decision the database cannot take fails its request with 503.
    spool_path: str | None = Field("funnel-review-spool.sqlite3",
                                   description="local SQLite file of parked decisions")
    spool_drain_interval_s: float = Field(1.0, gt=0, le=3600,
                                          description="how often parked decisions are "
                                          "written to the database")


class RolloutSettings(_Strict):
    """Canary and shadow rollout (serve/rollout): the config applied at start and how the
    replicas and the controller exchange routing and live numbers."""

    # A rollout YAML file, or the rollout config inline (the Helm chart renders it inline).
    # Later changes: `funnel rollout apply`, or a new `user_config` of RolloutController.
    config: str | dict[str, Any] | None = None
    bundle_root: str | None = Field(None, description="directory of bundle versions; default "
                                    "the parent of `bundle`")
    report_interval_s: float = Field(0.5, gt=0, le=60,
                                     description="replica -> controller: numbers and routing")
    # feed comparisons (shadow variants, canary checks) run in the ShadowScorer deployment,
    # a process of their own at a lower CPU priority; false: in each ingress replica
    shadow_scorer: bool = True
    shadow_nice: int = Field(10, ge=0, le=19, description="added to the ShadowScorer "
                             "process's nice value: the serving path gets the CPU first")
    # true: the ShadowScorer's threads, and the Triton model process of a ranker version only
    # shadows use, run in Linux's idle scheduling class (SCHED_IDLE): only on CPU time
    # nothing else wants, preempted at once when a serving thread wakes
    shadow_idle_class: bool = True
    shadow_handoff_limit: int = Field(64, ge=1, le=100_000, description="comparisons one "
                                      "ingress replica has batched or on their way to the "
                                      "ShadowScorer; more are dropped (counted)")
    # comparisons go to the ShadowScorer in batches: a Serve call costs milliseconds of CPU
    # on each side whatever it carries (BENCHMARKS.md: rollout)
    shadow_batch_size: int = Field(32, ge=1, le=10_000)
    shadow_batch_interval_s: float = Field(1.0, gt=0, le=60)
    shadow_queue_size: int = Field(4, ge=1, le=100_000,
                                   description="pending shadow/compare jobs; more are dropped")
    shadow_concurrency: int = Field(2, ge=1, le=64)
    # a shadow job waits (at most this long) for a moment with no client request in flight
    # in the replica, so its CPU does not land inside one; 0: run at once
    shadow_idle_wait_s: float = Field(2.0, ge=0, le=60)
    allow_fault_injection: bool = False
    triton_unload_grace_s: float = Field(30.0, ge=0, le=3600)


class RegistrySettings(_Strict):
    """The model registry bundle versions are pulled from (docs/registry.md): when a rollout
    names a version the bundle root lacks, it is pulled into the root and checked byte for
    byte first. No URL: versions come from the bundle root alone. The environment variables
    named by `url_env` / `database_url_env`, when set, win (the Helm chart sets them from its
    registry Secret)."""

    url: str | None = Field(None, description="object store: a directory or an fsspec URL "
                            "(s3://bucket/prefix)")
    url_env: str = "FUNNEL_REGISTRY_URL"
    database_url: str | None = Field(None, description="the index: sqlite:///FILE or "
                                     "postgresql://...; default SQLite beside a local store")
    database_url_env: str = "FUNNEL_REGISTRY_DATABASE_URL"


class ImpressionSettings(_Strict):
    """The impression log (monitoring/impressions.py): one record per served feed item and
    per moderation call, as partitioned parquet, written off the request path."""

    enabled: bool = True
    # a local directory (relative: to where `funnel serve` starts) or any fsspec URL, e.g.
    # s3://bucket/funnel/impressions (needs the `s3` extra); the environment variable named
    # by `url_env`, when set, wins (the Helm chart sets it)
    url: str = "impressions"
    url_env: str = "FUNNEL_IMPRESSIONS_URL"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    flush_rows: int = Field(2000, ge=1, le=1_000_000,
                            description="write when this many records wait")
    flush_interval_s: float = Field(2.0, gt=0, le=3600,
                                    description="write at least this often")
    max_buffered_rows: int = Field(50_000, ge=1, le=10_000_000, description="records held "
                                   "in memory per replica and kind; beyond, dropped (counted)")
    retries: int = Field(2, ge=0, le=10)
    # the write-ahead spool (monitoring/wal.py): each record on local disk before it is
    # buffered, so a killed replica loses nothing acknowledged (POST /v1/events answers 202
    # once its events are fsync'd); null: no spool, a killed replica loses its buffer
    spool_dir: str | None = Field("funnel-spool", description="a local directory (relative: "
                                  "to where `funnel serve` starts), on the pod's volume")

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> ImpressionSettings:
        if self.max_buffered_rows < self.flush_rows:
            raise ValueError(f"max_buffered_rows ({self.max_buffered_rows}) must be at least "
                             f"flush_rows ({self.flush_rows})")
        return self


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class FeatureStoreSettings(_Strict):
    """The online feature store on Redis (serve/features, docs/features.md): what users did
    seconds ago (clicks, seen posts, reported authors, live engagement) merged over the
    bundle's features. Off unless a URL is given here or in the `url_env` variable."""

    url: str | None = Field(None, description="redis://[user:password@]host:port/db or "
                            "rediss://...; the variable named by url_env wins (the Helm "
                            "chart sets it from a Secret)")
    url_env: str = "FUNNEL_FEATURES_REDIS_URL"
    prefix: str = Field("funnel:f", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9:_.-]+$")
    timeout_ms: float = Field(20.0, gt=0, le=5000, description="one round trip; slower "
                              "counts as a failure (the feed degrades to the bundle's features)")
    retry_after_s: float = Field(1.0, ge=0, le=60, description="after a failure, do not call "
                                 "Redis for this long")
    seen_days: float = Field(7.0, gt=0, le=90)
    seen_cap: int = Field(1000, ge=1, le=100_000)
    reported_cap: int = Field(200, ge=1, le=10_000)
    trending_cap: int = Field(10_000, ge=100, le=1_000_000)
    event_ttl_s: int = Field(8 * 86_400, ge=3600, le=30 * 86_400, description="how long "
                             "an event's id is kept to count it once (about 90 B each); "
                             "the events endpoint takes events up to 7 days old")
    trending_refresh_s: float = Field(1.0, gt=0, le=300, description="how often a replica "
                                      "reads the live trending lists (with a feed's read)")
    mark_served_seen: bool = Field(True, description="served items count as seen (the seen "
                                   "filter then skips them on the next page)")
    rebuild_on_start: bool = Field(True, description="a Redis found empty is refilled from "
                                   "the impression log's last `seen_days`")
    late_margin_s: float = Field(3600.0, ge=0, le=7 * 86_400, description="after an outage, "
                                 "the replay reads events timed this long before it began "
                                 "(events that reach the server late)")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(REDIS_SCHEMES):
            raise ValueError(f"a Redis URL starts with one of {', '.join(REDIS_SCHEMES)}")
        return v

    def resolved_url(self) -> str | None:
        """The URL in effect: the variable's when set, else `url`. Raises
        ServeConfigError naming the variable when its value is not a Redis URL."""
        import os

        env = os.environ.get(self.url_env)
        if env and not env.startswith(REDIS_SCHEMES):
            raise ServeConfigError(f"{self.url_env}: not a Redis URL (it starts with one of "
                                   f"{', '.join(REDIS_SCHEMES)})")
        return env or self.url


class CostSettings(_Strict):
    """Cost per request (docs/cost.md): the prices that turn attributed core-seconds into
    dollars, and how often the inputs are read. The default prices are OpenCost's defaults
    (its `configs/default.json`, GCP us-central1 on-demand): $0.031611 per core-hour,
    $0.004237 per GiB-hour, $0.95 per GPU-hour. `opencost_url`: an OpenCost `/metrics`
    endpoint whose `node_cpu_hourly_cost`, `node_ram_hourly_cost` and `node_gpu_hourly_cost`
    (averaged over nodes) replace them."""

    enabled: bool = Field(True, description="measure and record each request's cost "
                          "(docs/cost.md: about 0.1 ms of CPU per feed)")
    cpu_core_hour_usd: float = Field(0.031611, ge=0, le=1000)
    memory_gib_hour_usd: float = Field(0.004237, ge=0, le=1000)
    gpu_hour_usd: float = Field(0.95, ge=0, le=10_000)
    opencost_url: str | None = Field(None, max_length=2048)
    triton_poll_s: float = Field(5.0, gt=0, le=300,
                                 description="how often Triton's statistics are read")
    process_poll_s: float = Field(5.0, gt=0, le=300,
                                  description="how often the node's processes are read")


class ConsoleSettings(_Strict):
    """The browser console under /console (docs/console.md): the review queue for human
    moderators and on-call's drift and rollout pages. Sign-in is per person (`funnel users`);
    the session cookie is signed with the secret in `session_secret_env`, which every replica
    must share (the chart keeps it in a Secret)."""

    enabled: bool = True
    session_secret_env: str = "FUNNEL_CONSOLE_SECRET"
    session_max_age_s: int = Field(8 * 3600, ge=60, le=30 * 86400,
                                   description="a session's lifetime; sign in again after")
    secure_cookie: Literal["auto", "always", "never"] = Field(
        "auto", description="the cookie's Secure flag: auto sets it when the request came "
        "over TLS (https, or X-Forwarded-Proto: https from the ingress)")
    identity_header: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="behind an authenticating proxy (e.g. oauth2-proxy): the header naming "
        "the signed-in user (e.g. X-Auth-Request-User), trusted only when set here; the name "
        "must be an enabled `funnel users` account, whose role applies")
    drift_reports_url: str | None = Field(
        None, max_length=2048, description="where `funnel drift watch` writes its window "
        "reports (a directory or fsspec URL); the environment variable in "
        "drift_reports_url_env wins")
    drift_reports_url_env: str = "FUNNEL_DRIFT_REPORTS_URL"
    login_max_failures: int = Field(5, ge=1, le=1000, description="failed sign-ins per "
                                    "account and per client address within login_window_s")
    login_window_s: float = Field(300.0, gt=0, le=86400)
    page_size: int = Field(50, ge=1, le=500, description="queue rows per page")


class AppArgs(_Strict):
    """Everything under `applications[].args` of the Serve config."""

    bundle: str = "artifacts/latest"
    feed: FeedSettings = Field(default_factory=FeedSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    impressions: ImpressionSettings = Field(default_factory=ImpressionSettings)
    features: FeatureStoreSettings = Field(default_factory=FeatureStoreSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)


def parse_app_args(raw: dict[str, Any] | None) -> AppArgs:
    """Validate app args; ServeConfigError names each bad field and what is allowed."""
    try:
        return AppArgs.model_validate(raw or {})
    except ValidationError as e:
        raise ServeConfigError("invalid serve config: " + "; ".join(
            f"args.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            f" (got {err.get('input')!r})" for err in e.errors())) from e


def load_serve_config(path: str | Path) -> tuple[dict[str, Any], AppArgs]:
    """Read a Ray Serve config file; returns it and the parsed args of its first app."""
    p = Path(path)
    doc = read_yaml(p, what="serve config", error=ServeConfigError)
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict):
        raise ServeConfigError(f"{p}: a Ray Serve config needs 'applications: [...]' with at "
                               "least one application")
    return doc, parse_app_args(apps[0].get("args"))
