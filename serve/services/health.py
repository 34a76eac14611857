"""Readiness and the Prometheus scrape of one replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from monitoring import metrics

log = logging.getLogger("funnel.serve")


class HealthService:
    """`ready()` -> (ready, checks); `scrape()` -> the Prometheus exposition text.

    `moderation_ready` answers whether the moderation models' replica is up (None: this
    deployment has no moderation); `controller_status` the rollout controller's status
    (None: no rollout); `on_request` starts the replica's background work."""

    def __init__(self, *, pipeline: Any, store: Any, spool: Any = None, rollout: Any = None,
                 moderation_ready: Callable[[], Awaitable[bool]] | None = None,
                 controller_status: Callable[[], Awaitable[Any]] | None = None,
                 on_request: Callable[[], None] = lambda: None) -> None:
        self.pipeline = pipeline
        self.store = store
        self.spool = spool
        self.rollout = rollout
        self.moderation_ready = moderation_ready
        self.controller_status = controller_status
        self._on_request = on_request

    async def ready(self) -> tuple[bool, dict[str, bool]]:
        ranker_ready = getattr(self.pipeline.ranker, "ready", None)
        checks = {
            "bundle": True,
            "index": self.pipeline.retrieval.index.ntotal > 0,
            "triton": bool(await ranker_ready()) if ranker_ready else True,
        }
        if self.moderation_ready is not None:
            checks["moderation"] = await self.moderation_ready()
        if self.rollout is not None:
            # routing by the controller's table, its start-up config applied (until then
            # every stage would serve the primary, whatever the config says)
            if self.rollout.router.revision < 0 or self.rollout.pending_start:
                self._on_request()
                await self.rollout.report_once()
            checks["rollout"] = (self.rollout.router.revision >= 0
                                 and not self.rollout.pending_start)
        return all(checks.values()), checks

    def details(self) -> dict[str, str]:
        """What on-call should know that does not make the replica unready: a routing table
        this replica could not adopt (it keeps serving the previous one), a bundle version
        that could not be pulled from the registry (here, or by the rollout controller)."""
        out: dict[str, str] = {}
        if self.rollout is None:
            return out
        if self.rollout.last_adopt_error:
            out["rollout"] = self.rollout.last_adopt_error
        # this replica's own failed pull, else the controller's (it came with the last table)
        failure = self.rollout.variants.bundles.failure() or \
            self.rollout.controller_pull_failure
        if failure:
            out["registry"] = f"bundle {failure['version']} not pulled: {failure['error']}"
        return out

    async def scrape(self) -> bytes:
        """This node's Funnel processes (requests, stages, moderation, the impression log),
        the review queue (from its database) and the rollout's cluster-wide numbers (from
        the controller)."""
        from monitoring.rollout_metrics import collector as rollout_collector

        extra: list[Any] = []
        if self.controller_status is not None:
            self._on_request()
            with contextlib.suppress(Exception):  # controller away: the rest still renders
                extra.append(rollout_collector(await self.controller_status()))
        try:
            depth, oldest = await asyncio.to_thread(self.store.backlog)
            age = (time.time() - oldest.timestamp()) if oldest is not None else 0.0
            backlog: tuple[int | None, float | None] = (depth, max(0.0, age))
        except Exception as e:  # the database is down: say so in the scrape
            log.warning("metrics: review backlog query failed: %s", e)
            backlog = (None, None)
        spool = None
        if self.spool is not None:
            with contextlib.suppress(Exception):
                d = await asyncio.to_thread(self.spool.depth)
                spool = (d.records, d.oldest_age_s)
        extra.append(metrics.ReviewBacklog(*backlog, spool=spool))
        return metrics.render(extra)
