"""The replica's background work: keeping the feed's moderation verdicts current from the
review store's decision log, writing decisions parked in the spool while the database was
away, and the rollout's reports to its controller. Started lazily on the first request
(a Serve replica's constructor has no running event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from typing import Any

from funnel.contracts.errors import FunnelError
from monitoring import metrics
from serve.cost import meter_loop, poll_triton_rates
from serve.review.base import ReviewStore

log = logging.getLogger("funnel.serve")


class Verdicts:
    """The feed's `LiveVerdicts`, fed from the store's decision log."""

    def __init__(self, store: ReviewStore) -> None:
        from serve.moderation.verdicts import LiveVerdicts

        self.store = store
        self.live = LiveVerdicts()
        self.live.apply(self._new_events())

    def _new_events(self) -> list[Any]:
        from serve.moderation.verdicts import VerdictEvent

        return [VerdictEvent(id=e.id, content_id=e.content_id, source=e.source,
                             decision=e.decision)
                for e in self.store.decision_log(after_id=self.live.last_id)]

    async def refresh(self) -> None:
        try:
            self.live.apply(await asyncio.to_thread(self._new_events))
        except FunnelError as e:  # database briefly away: keep the verdicts we have
            log.warning("cannot read new moderation verdicts: %s", e)


class BackgroundTasks:
    def __init__(self, *, verdicts: Verdicts, poll_s: float, spool: Any = None,
                 spool_drain_s: float = 1.0, rollout: Any = None,
                 triton: Any = None, rates: Any = None, triton_poll_s: float = 5.0) -> None:
        self.verdicts = verdicts
        self.poll_s = poll_s
        self.spool = spool
        self.spool_drain_s = spool_drain_s
        self.rollout = rollout
        # the cost of the ranker's rows: Triton's compute time per row, polled
        # (serve.cost.TritonRates; `triton`: a TritonRanker to ask, None: no Triton)
        self.triton = triton
        self.rates = rates
        self.triton_poll_s = triton_poll_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(self) -> None:
        """Start whichever task is not running (first request, or one that died)."""
        wanted = {"verdicts": self._poll_verdicts}
        if self.spool is not None:
            wanted["spool"] = self._drain_spool
        if self.rollout is not None:
            wanted["rollout"] = self.rollout.run_reports
        if self.triton is not None and self.rates is not None:
            wanted["triton_rates"] = self._poll_triton_rates
        loop = asyncio.get_running_loop()
        meter_loop(loop)  # each request's CPU on this loop, step by step (serve/cost.py)
        for name, run in wanted.items():
            task = self._tasks.get(name)
            if task is None or task.done():
                # a context of its own: not the first request's (whose cost ledger it is)
                self._tasks[name] = loop.create_task(run(), context=contextvars.Context())

    def cancel(self) -> None:
        for task in self._tasks.values():
            with contextlib.suppress(Exception):
                task.cancel()

    async def _poll_verdicts(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.verdicts.refresh()

    async def _poll_triton_rates(self) -> None:
        await poll_triton_rates(self.triton, self.rates, self.triton_poll_s)

    async def _drain_spool(self) -> None:
        """Write decisions parked while the database was away (serve/review/spool.py)."""
        from serve.moderation.service import write_record

        spool, store = self.spool, self.verdicts.store
        while True:
            await asyncio.sleep(self.spool_drain_s)
            if not spool.pending:
                continue
            try:
                done = await asyncio.to_thread(
                    spool.drain, lambda key, rec: write_record(store, key, rec))
            except Exception as e:  # the spool file itself: keep trying, say so
                log.error("review spool: drain failed: %r", e)
                continue
            metrics.REVIEW_SPOOL.labels("written").inc(done.written)
