"""One replica's services, composed from the Serve config's args and the handles of the
other deployments (moderation models, rollout controller, shadow scorer). The Serve
deployment (`serve.app.FeedIngress`) calls `build_services` and hands the result to the
HTTP app and the gRPC handlers; a test can build the same parts around fakes."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from monitoring import metrics
from serve.config import AppArgs
from serve.services.admin import AdminAuth
from serve.services.background import BackgroundTasks, Verdicts
from serve.services.events import EventService
from serve.services.feed import FeedService
from serve.services.health import HealthService
from serve.services.moderation import ModerateService
from serve.services.review import ReviewService
from serve.users.accounts import LoginLimiter

log = logging.getLogger("funnel.serve")

MODERATION_DISABLED = ("moderation is disabled in this deployment "
                       "(args.moderation.enabled: false)")


@dataclass
class ReplicaServices:
    args: AppArgs
    replica: str
    versions: dict[str, str]
    pipeline: Any
    feed: FeedService
    events: EventService
    review: ReviewService
    health: HealthService
    admin: AdminAuth
    oip: Any  # serve.oip.OipDataPlane
    background: BackgroundTasks
    moderation: ModerateService | None = None  # None: moderation is off
    rollout: Any = None  # serve.rollout.runtime.RolloutRuntime
    rollout_controller: Any = None  # the controller deployment's handle
    impressions: dict[str, Any] = field(default_factory=dict)
    refiller: Any = None  # serve.features.rebuild.Refiller; None: no feature store
    console: Any = None  # serve.console.app.Console; None: the console is off

    def close(self) -> None:
        """Stop the background work, close the store and write what the logs buffer."""
        self.background.cancel()
        if self.refiller is not None:
            self.refiller.stop()
            self.refiller.store.close()
        with contextlib.suppress(Exception):
            self.review.store.close()
        for log_ in self.impressions.values():
            with contextlib.suppress(Exception):
                log_.close()


def build_impression_logs(args: AppArgs, replica: str, labels: tuple[str, ...]
                          ) -> dict[str, Any]:
    """The replica's impression-log writers (feed, events, moderation); none when off."""
    from monitoring.impressions import (
        EVENTS_SCHEMA,
        FEED_SCHEMA,
        ImpressionLog,
        moderation_schema,
    )

    s = args.impressions
    if not s.enabled:
        return {}
    url = os.environ.get(s.url_env) or s.url
    common: dict[str, Any] = {"replica": replica, "flush_rows": s.flush_rows,
                              "flush_interval_s": s.flush_interval_s,
                              "max_buffered_rows": s.max_buffered_rows,
                              "retries": s.retries, "storage_options": s.storage_options,
                              "spool_dir": s.spool_dir}
    logs = {"feed": ImpressionLog(url, kind="feed", schema=FEED_SCHEMA, **common),
            "events": ImpressionLog(url, kind="events", schema=EVENTS_SCHEMA, **common)}
    if args.moderation.enabled:
        logs["moderation"] = ImpressionLog(url, kind="moderation",
                                           schema=moderation_schema(labels), **common)
    return logs


def build_services(args: AppArgs, *, replica: str, moderation: Any = None,
                   rollout: Any = None, shadow_scorer: Any = None) -> ReplicaServices:
    """Load the bundle and wire every service of one replica. `moderation`, `rollout` and
    `shadow_scorer` are the other deployments' handles (None: that part is off)."""
    from importlib.metadata import version

    from funnel.contracts.bundle import read_manifest
    from serve.cost import set_recording
    from serve.loader import load_pipeline
    from serve.oip import OipDataPlane
    from serve.review.base import open_store
    from serve.rollout.runtime import build_rollout_runtime
    from serve.services.oip_models import build_oip_models

    set_recording(args.cost.enabled)
    pipeline, versions = load_pipeline(args)
    manifest = read_manifest(args.bundle)
    r = args.review
    store = open_store(os.environ.get(r.database_url_env) or r.database_url,
                       store_class=r.store_class)
    spool = None
    if r.spool_path:
        from serve.review.spool import ReviewSpool

        spool = ReviewSpool(r.spool_path)
    users = user_store(store, os.environ.get(r.database_url_env) or r.database_url)
    # one count of failed password checks per account: the console's sign-ins and the API's
    # Basic credentials
    limiter = LoginLimiter(max_failures=args.console.login_max_failures,
                           window_s=args.console.login_window_s)
    admin = AdminAuth(os.environ.get(r.admin_token_env, ""), r.admin_token_env, users=users,
                      identity_header=args.console.identity_header, limiter=limiter)
    if not admin.enabled:
        log.warning("the admin token is not set (%s): admin routes take console accounts "
                    "only (`funnel users add NAME --role admin`)", r.admin_token_env)
    verdicts = Verdicts(store)
    pipeline.live_verdicts = verdicts.live
    runtime = None
    if rollout is not None:
        owner = _Owner(args=args, pipeline=pipeline, versions=versions, replica=replica)
        runtime = build_rollout_runtime(owner, rollout, shadow_scorer=shadow_scorer)
    primary_ranker = pipeline.primary_models.ranker.ranker
    background = BackgroundTasks(
        verdicts=verdicts, poll_s=r.verdict_poll_s, spool=spool,
        spool_drain_s=r.spool_drain_interval_s, rollout=runtime,
        triton=primary_ranker if hasattr(primary_ranker, "compute_stats") else None,
        rates=pipeline.triton_rates, triton_poll_s=args.cost.triton_poll_s)
    ensure = background.ensure

    moderation_ready = None
    core = None
    text_labels: tuple[str, ...] = ()
    if moderation is not None:
        from serve.moderation.policy import dormant_labels
        from serve.moderation.remote import (
            RemoteContentScorer,
            TextLabels,
            handle_ready,
            image_model_version,
            load_serving_policy,
            moderation_labels,
            policy_labels,
        )
        from serve.moderation.service import ModerationService

        text_labels, text_version = moderation_labels(manifest)
        labels_of = TextLabels(moderation, text_labels)
        m = args.moderation
        mpolicy = load_serving_policy(m.policy, manifest)
        dormant = dormant_labels(mpolicy, policy_labels(text_labels))
        if dormant:
            log.info("moderation policy %s: thresholds for %s, which the serving models do "
                     "not score; they apply when a variant's text head does", mpolicy.version,
                     dormant)
        core = ModerationService(
            scorer=RemoteContentScorer(moderation, labels_of),
            policy=mpolicy, store=store,
            model_versions={"moderation_text": text_version,
                            "moderation_image": image_model_version()},
            timeout_s=m.timeout_ms / 1000.0, spool=spool)

        async def moderation_ready() -> bool:
            return await handle_ready(moderation)

    policy = core.policy.labels if core is not None else ()
    impressions = build_impression_logs(args, replica, policy)
    online, refiller = build_online_features(args, pipeline, impressions)
    moderate = None
    if core is not None:
        moderate = ModerateService(
            core=core, text_labels=text_labels,
            scorer_for=lambda v: RemoteContentScorer(moderation, labels_of, v),
            score_text=labels_of.scores, refresh_verdicts=verdicts.refresh, rollout=runtime,
            impressions=impressions.get("moderation"), replica=replica, on_request=ensure)

    async def controller_status() -> Any:
        return await rollout.status.remote()

    oip = OipDataPlane(build_oip_models(
        manifest=manifest, ranker=pipeline.ranker, ranker_backend=args.feed.ranker.backend,
        moderation_handle=moderation, moderation_ready=moderation_ready),
        server_version=version("funnel"))
    metrics.init_labels(filters=args.feed.filters.enabled, labels=policy)
    console = None
    if args.console.enabled and users is not None:
        from serve.console.state import build_console

        thresholds = ({lb: (t.review_at, t.block_at) for lb, t in core.policy.thresholds.items()}
                      if core is not None else {})
        console = build_console(args.console, auth=admin, labels=tuple(policy),
                                thresholds=thresholds)
    elif args.console.enabled:
        log.warning("console: off, its accounts need a SQL review database (review.store_class "
                    "is %s)", r.store_class)
    return ReplicaServices(
        args=args, replica=replica, versions=versions, pipeline=pipeline,
        feed=FeedService(pipeline=pipeline, versions=versions, rollout=runtime,
                         impressions=impressions.get("feed"), replica=replica,
                         on_request=ensure, online=online,
                         mark_served_seen=args.features.mark_served_seen),
        events=EventService(impressions=impressions.get("events"), replica=replica,
                            online=online, author_of=pipeline.catalog.authors_of),
        review=ReviewService(store, refresh_verdicts=verdicts.refresh),
        health=HealthService(pipeline=pipeline, store=store, spool=spool, rollout=runtime,
                             moderation_ready=moderation_ready,
                             controller_status=controller_status if rollout else None,
                             on_request=ensure),
        admin=admin, oip=oip, background=background, moderation=moderate, rollout=runtime,
        rollout_controller=rollout, impressions=impressions, refiller=refiller,
        console=console)


def user_store(review_store: Any, url: str) -> Any:
    """The console's accounts (serve.users.store) in the review database: on the SQL review
    store's own engine; None for another store class on a non-SQL URL."""
    from serve.review.base import SQL_SCHEMES
    from serve.users.store import UserStore

    engine = getattr(review_store, "engine", None)
    if engine is not None:
        return UserStore(engine=engine, migrate=False)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    return UserStore(url) if scheme in SQL_SCHEMES else None


def build_online_features(args: AppArgs, pipeline: Any, impressions: dict[str, Any]
                          ) -> tuple[Any, Any]:
    """The replica's feature-store client, set on the pipeline, and its refiller (started);
    (None, None) when no Redis URL is configured."""
    f = args.features
    url = f.resolved_url()
    if not url:
        return None, None
    from serve.features.layout import Layout
    from serve.features.rebuild import Refiller
    from serve.features.store import OnlineFeatures, redacted

    catalog = pipeline.catalog
    layout = Layout.from_settings(f, history=pipeline.features.user_history,
                                  half_life_h=args.feed.trending_half_life_h)
    online = OnlineFeatures(
        url, layout, timeout_s=f.timeout_ms / 1000.0, retry_after_s=f.retry_after_s,
        trending_refresh_s=f.trending_refresh_s,
        catalog_trending=lambda: catalog.trending, rows_of=catalog.rows_of,
        allowed=catalog.allowed)
    pipeline.online = online
    online.start_trending_refresh()
    s = args.impressions
    events, feed = impressions.get("events"), impressions.get("feed")
    refiller = Refiller(
        online, (os.environ.get(s.url_env) or s.url) if s.enabled else None,
        seen_days=f.seen_days, late_margin_s=f.late_margin_s, author_of=catalog.authors_of,
        flush_events=events.flush if events is not None else lambda: None,
        flush_feed=feed.flush if feed is not None else lambda: None,
        storage_options=dict(s.storage_options), served_seen=f.mark_served_seen)
    refiller.start(refill_empty=f.rebuild_on_start)
    log.info("online feature store: %s (prefix %s)", redacted(url), f.prefix)
    return online, refiller


@dataclass
class _Owner:
    """What `build_rollout_runtime` reads of the replica."""

    args: AppArgs
    pipeline: Any
    versions: dict[str, str]
    replica: str
