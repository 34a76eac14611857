"""`ShadowScorer`: the process where shadow variants run and canary requests are compared.

A shadow's work (its model call, the call's serialisation, the sort and the agreement
measures) and a canary's comparison with the primary do not belong on the replica that
answers the client: in the ingress they share its event loop and its CPU with the requests
they mirror. The ingress therefore hands each feed comparison (`comparisons.Comparison`: the
request's candidates, the served scores and ranker inputs, as plain arrays) to this
deployment and does not wait for it. Hand-offs go in batches (a Serve call costs a few ms of
CPU on each side, whatever it carries), bounded, and a lost one is counted.

Here the comparisons run on the same bounded per-(stage, variant) queues as before, against
the same bundle versions (loaded and checksum-verified here, routed by the controller's
table), and the counts go to the controller like a replica's, flagged as not serving clients
(they do not widen a canary's error-budget split).

The process lowers its own CPU priority (`rollout.shadow_nice`, the nice value added to every
thread, and `rollout.shadow_idle_class`, Linux's SCHED_IDLE): where it shares cores with the
serving path, the kernel runs the serving path first and the scorer on what is left.
In a cluster, give it its own CPUs (`ray_actor_options`, or a worker group of its own). The
ranker variants it calls are still Triton models, served where Triton runs.
`rollout.shadow_scorer: false` runs the comparisons in each ingress replica instead.
Moderation's comparisons stay in the ingress: their model calls already run in the
ModerationModels deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ray import serve

from serve.config import AppArgs, parse_app_args
from serve.offpath import lower_priority

log = logging.getLogger("funnel.rollout")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=1000,
                  health_check_period_s=10)
class ShadowScorer:
    def __init__(self, args: dict[str, Any], controller: Any) -> None:
        from serve.loader import load_pipeline
        from serve.rollout.runtime import build_rollout_runtime, replica_name

        self.args: AppArgs = parse_app_args(args)
        from serve.cost import set_recording

        set_recording(self.args.cost.enabled)
        nice, idle_class = lower_priority(
            self.args.rollout.shadow_nice, idle_class=self.args.rollout.shadow_idle_class)
        self.replica = replica_name()
        self.pipeline, self.versions = load_pipeline(self.args)
        self.rollout = build_rollout_runtime(self, controller, serving=False)
        self._reporter: asyncio.Task[None] | None = None
        self._rates: asyncio.Task[None] | None = None  # Triton's compute per row (cost)
        log.info("shadow scorer %s ready (nice %s%s)", self.replica, nice,
                 ", idle scheduling class" if idle_class else "")

    def _ensure_reporter(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(
                self.rollout.run_reports())
        ranker = self.pipeline.primary_models.ranker.ranker
        if hasattr(ranker, "compute_stats") and (self._rates is None or self._rates.done()):
            from serve.cost import poll_triton_rates

            self._rates = asyncio.get_running_loop().create_task(poll_triton_rates(
                ranker, self.pipeline.triton_rates, self.args.cost.triton_poll_s))

    async def compare_many(self, comparisons: list[Any]) -> int:
        """Queue a batch of comparisons; how many were queued (the rest found their queue
        full: dropped and counted here)."""
        self._ensure_reporter()
        return sum(bool(self.rollout.accept(c)) for c in comparisons)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            for task in (self._reporter, self._rates):
                if task is not None:
                    task.cancel()
        with contextlib.suppress(Exception):
            from monitoring import metrics

            metrics.mark_process_dead()
