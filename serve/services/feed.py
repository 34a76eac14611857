"""The feed use case: a request through the rollout's variants and the pipeline, observed
(metrics and the impression log) and shaped into the response. HTTP and gRPC share it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from monitoring import metrics
from serve import cost
from serve.admission import AdmissionGate
from serve.api import FeedItemOut, FeedRequest, FeedResponse
from serve.errors import Overloaded


class FeedService:
    """`run(request, request_id)` -> (response, per-stage milliseconds).

    `pipeline` is a `serve.pipeline.FeedPipeline`; `rollout` the replica's
    `serve.rollout.runtime.RolloutRuntime` (None: every stage serves the bundle);
    `impressions` the feed's impression-log writer (None: off); `online` the feature store
    the served items are marked seen in (None: off)."""

    def __init__(self, *, pipeline: Any, versions: dict[str, str], rollout: Any = None,
                 impressions: Any = None, replica: str = "",
                 on_request: Callable[[], None] = lambda: None, online: Any = None,
                 mark_served_seen: bool = True) -> None:
        self.pipeline = pipeline
        self.online = online if mark_served_seen else None
        self.versions = versions
        self.rollout = rollout
        self.impressions = impressions
        self.replica = replica
        self._on_request = on_request
        self._modalities = tuple(pipeline.features.vocabs.get("posts.modality", ()))
        a = pipeline.settings.admission
        self.gate = AdmissionGate(a.max_inflight, a.retry_after_s)

    async def run(self, req: FeedRequest, rid: str) -> tuple[FeedResponse, dict[str, float]]:
        """Raises Overloaded when the replica's admission gate is full (counted)."""
        try:
            self.gate.enter()
        except Overloaded:
            metrics.SHED.labels(route="/v1/feed").inc()
            raise
        # the HTTP edge starts the request's cost ledger (serve/cost.py); gRPC gets one here
        try:
            with (self.rollout.serving() if self.rollout else contextlib.nullcontext(),
                  cost.request("feed") as c):
                return await self._run_once(req, rid, c)
        finally:
            self.gate.leave()

    async def _run_once(self, req: FeedRequest, rid: str, c: cost.RequestCost
                        ) -> tuple[FeedResponse, dict[str, float]]:
        from serve.pipeline import FeedQuery

        cpu = cost.Lap(c)
        self._on_request()
        ts = req.context.timestamp.timestamp() if req.context.timestamp else None
        query = FeedQuery(
            user_id=req.user_id, limit=req.limit, request_id=rid,
            exclude_ids=frozenset(req.exclude_item_ids), locale=req.context.locale,
            timestamp_s=ts)
        versions, variants = dict(self.versions), {"retrieval": "primary", "ranker": "primary"}
        assigned: dict[str, Any] = {}
        if self.rollout is None:
            cpu.charge(cost.INGRESS)
            result = await self.pipeline.run(query)
        else:
            models, assigned = self.rollout.models_for(req.user_id)
            cpu.charge(cost.INGRESS)
            try:
                result = await self.pipeline.run(query, models)
            except BaseException:
                self.rollout.abandon(assigned)
                raise
            cpu.mark()
            self.rollout.after_feed(assigned, result)  # counts and compares the primary's page
            cpu.charge(cost.INGRESS)
            result = await self.rollout.interleave(assigned["ranker"], result)
            for stage, a in assigned.items():
                if a is not None:
                    variants[stage], versions[stage] = a.variant, a.bundle_version
        cpu.mark()
        c.variant = variants["ranker"]
        self.observe(result, rid, req.user_id, versions, variants)
        body = FeedResponse(
            request_id=rid, user_id=req.user_id,
            items=[FeedItemOut(item_id=i.item_id, rank=i.rank, score=round(i.score, 6),
                               sources=list(i.sources), explain=dict(i.explain))
                   for i in result.items],
            model_versions=versions, variants=variants,
            degraded=result.degraded, cold_start=result.cold_start)
        cpu.charge(cost.INGRESS)
        c.price_rows(getattr(self.pipeline, "triton_rates", None))
        if self.rollout is not None:
            self.rollout.charged(assigned, c.total_s)
        return body, result.timings_ms

    def observe(self, result: Any, rid: str, user_id: int, versions: dict[str, str],
                variants: dict[str, str]) -> None:
        """Metrics and the impression log for one served feed."""
        metrics.observe_feed(
            route="/v1/feed", timings_ms=result.timings_ms, candidates=result.candidates,
            filtered=result.filtered, degraded=result.degraded, items=len(result.items),
            cold_start=result.cold_start,
            ranker_rows=len(result.trace.kept) if result.trace is not None else 0,
            ranker_variant=variants.get("ranker", "primary"))
        if self.impressions is not None:
            from serve.impression_records import feed_columns

            cols, n = feed_columns(result, request_id=rid, user_id=user_id,
                                   ts_us=time.time_ns() // 1000, versions=versions,
                                   variants=variants, replica=self.replica,
                                   modalities=self._modalities)
            self.impressions.append(cols, n)
        if self.online is not None and result.items:
            from serve.errors import FeatureStoreUnavailable

            # served items count as seen; Redis away: the replay from the log does it
            with contextlib.suppress(FeatureStoreUnavailable):
                self.online.mark_seen(user_id, [i.item_id for i in result.items], time.time())
