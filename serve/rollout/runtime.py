"""The rollout inside an ingress replica: pick each request's variants, count what they did,
and compare lists off the critical path.

- `models_for(user_id)`: sticky assignment per stage -> the `Models` the pipeline runs with.
- `after_feed(...)`: counts the request for its variants (the guardrails' numbers), then
  hands off, without waiting, the comparisons (`Comparison`): shadows score the same
  candidates (ranker) or search the same user (retrieval) with their own version; a sampled
  share of canary requests is compared with what the primary would have served. With a
  `ShadowScorer` deployment (serve/rollout/scorer.py, the default) they go there in batches
  (`RemoteComparisons`), and the scorer runs them with a runtime of its own (`accept`);
  without one they run on this replica's queues.
- `ShadowRunner` (serve/rollout/scheduling.py): one queue per (stage, variant), bounded and
  worked by a fixed number of tasks; a job that finds it full is dropped and counted
  (`dropped`), so a slow or failing shadow costs the client nothing but the CPU its bounded
  jobs use, and cannot starve another variant's comparisons. Jobs run when the replica
  serves no request (`IdleGate`), so that CPU lands between requests, not inside them.
- `run_reports`: every `report_interval_s`, the counts go to the controller and the routing
  table comes back; a new table's bundle versions are loaded (checksums first) before any
  request is routed to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from monitoring import metrics
from monitoring.interleaving import TEAM_A, TEAM_B, team_draft
from serve.config import RolloutSettings
from serve.offpath import lower_this_thread
from serve.pipeline import FeedPipeline, FeedResult, Models
from serve.rollout.comparing import mean as _mean
from serve.rollout.comparing import record, run_comparison
from serve.rollout.comparing import top_mean as _top_mean
from serve.rollout.comparisons import Comparison, RemoteComparisons
from serve.rollout.router import Assignment, Router
from serve.rollout.scheduling import IdleGate, ShadowRunner
from serve.rollout.stats import Tally
from serve.rollout.variants import Variants
from serve.types import FeedItem

log = logging.getLogger("funnel.rollout")
STAGE_ERROR = {"ranker": "ranker", "retrieval": "source:ann",
               "moderation": "moderation_text"}
TEAM_NAMES = {TEAM_A: "control", TEAM_B: "candidate"}  # explain / the log's `team`
MAX_UNSENT_ROWS = 1000  # rows kept for the next report while the controller is away


def _ids(items: Sequence[FeedItem]) -> list[int]:
    return [i.item_id for i in items]


class RolloutRuntime:
    def __init__(self, *, pipeline: FeedPipeline, variants: Variants, controller: Any,
                 replica_id: str, settings: RolloutSettings,
                 rng: random.Random | None = None, shadow_scorer: Any = None,
                 serving: bool = True) -> None:
        self.pipeline = pipeline
        self.variants = variants
        self._controller = controller
        self.replica_id = replica_id
        self.settings = settings
        self.router = Router(rng=rng)
        self.tally = Tally()
        # one bounded queue per (stage, variant): a slow shadow fills its own queue and
        # cannot starve the comparisons a canary's guardrails wait for
        self.runners: dict[tuple[str, str], ShadowRunner] = {}
        self.gate = IdleGate(max_wait_s=settings.shadow_idle_wait_s)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="funnel-variant-loader",
                                          initializer=lower_this_thread)
        self.last_report_error = ""
        self.last_adopt_error = ""  # why the newest table is not in force here ("" : it is)
        # the controller's last failed pull from the registry (it comes with each table)
        self.controller_pull_failure: dict[str, str] | None = None
        self.pending_start = False
        self._unsent: list[dict[str, Any]] = []
        self._report_lock = asyncio.Lock()
        # False: the ShadowScorer's runtime, which serves no client (the controller does not
        # count it among the replicas that share a canary's error budget)
        self.serving_replica = serving
        # feed comparisons go to the ShadowScorer deployment when there is one
        self.remote = RemoteComparisons(
            shadow_scorer, max_pending=settings.shadow_handoff_limit,
            on_drop=self.tally.dropped, batch_size=settings.shadow_batch_size,
            batch_interval_s=settings.shadow_batch_interval_s,
            gate=self.gate) if shadow_scorer is not None else None

    # ---- the table -----------------------------------------------------------------------
    async def report_once(self) -> None:
        """One report; serialised, so that two callers (the loop, an admin route) cannot
        both account for the same failures."""
        async with self._report_lock:
            await self._report()

    async def _report(self) -> None:
        rows = self._unsent + self.tally.drain()
        sent = self.router.unreported()
        self._unsent = []
        try:
            table = await self._controller.report.remote(self.replica_id, rows,
                                                         self.serving_replica)
        except Exception as e:  # controller restarting: keep serving the table we have
            if str(e) != self.last_report_error:
                log.warning("rollout: report to the controller failed: %s", e)
            self.last_report_error = str(e)
            self._unsent = rows[-MAX_UNSENT_ROWS:]  # sent with the next report
            return
        self.last_report_error = ""
        self.pending_start = bool(table.get("pending_start"))
        self.controller_pull_failure = table.get("bundle_pull_failure")
        if int(table.get("revision", -1)) != self.router.revision:
            # until the new table is in force, the old one's (larger) budget share applies,
            # so the failures just reported stay counted here meanwhile
            if await self.adopt(table):
                self.router.reported(sent)
        else:  # same variants; the canary's budget share moves with every report
            self.router.update(table)
            self.router.reported(sent)

    async def adopt(self, table: dict[str, Any]) -> bool:
        """Load what `table` names, then route by it (True). A version that fails to load
        here keeps the previous table in force (False; retried with the next report)."""
        probe = Router()
        probe.update(table)
        wanted = {s: probe.versions(s) for s in probe.stages}
        loop = asyncio.get_running_loop()
        try:
            for stage, keys in wanted.items():
                # verifying a bundle's checksums and aligning its tables to the catalog
                # cost seconds of CPU: on a thread of the idle class, so a rollout applied
                # under load does not take cores from the requests (BENCHMARKS.md, soak)
                await loop.run_in_executor(self._loader, self.variants.load, stage, keys)
        except Exception as e:
            log.error("rollout: revision %s not adopted, loading failed: %s",
                      table.get("revision"), e)
            self.last_adopt_error = f"revision {table.get('revision')} not adopted: {e}"
            return False
        self.last_adopt_error = ""
        self.router.update(table)
        self.variants.retain(wanted)
        log.info("rollout: replica %s routes by revision %d", self.replica_id,
                 self.router.revision)
        return True

    async def run_reports(self) -> None:
        while True:
            await self.report_once()
            await asyncio.sleep(self.settings.report_interval_s)

    # ---- per request ---------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around a client request: off-path jobs wait for the replica to be idle."""
        self.gate.started()
        try:
            yield
        finally:
            self.gate.finished()

    def models_for(self, user_id: int) -> tuple[Models, dict[str, Assignment | None]]:
        a = {"retrieval": self.router.assign("retrieval", user_id),
             "ranker": self.router.assign("ranker", user_id)}
        for x in a.values():
            self.router.begin(x)
        models = Models(retrieval=self.variants.retrieval(a["retrieval"]),
                        ranker=self.variants.ranker(a["ranker"]),
                        retrieval_variant=a["retrieval"].variant if a["retrieval"]
                        else "primary",
                        ranker_variant=a["ranker"].variant if a["ranker"] else "primary")
        return models, a

    def abandon(self, assignments: dict[str, Assignment | None]) -> None:
        """The request ended before the pipeline answered (cancelled): free its slots."""
        for x in assignments.values():
            self.router.end(x, failed=False)

    def after_feed(self, assignments: dict[str, Assignment | None], result: FeedResult
                   ) -> None:
        """Count the request for its variants and queue its comparisons (never waits)."""
        for stage, a in assignments.items():
            failed = STAGE_ERROR[stage] in result.degraded
            self.router.end(a, failed=failed)
            if a is None:
                continue
            if stage == "ranker":
                latency = result.timings_ms.get("ranker_call")
                score = None if failed or result.trace is None else _top_mean(
                    result.trace.scores, result.trace.limit)
            else:
                if result.trace is None or not result.trace.known:
                    continue  # cold start: no ANN, nothing to judge a retrieval by
                latency = result.timings_ms.get("candidates")
                score = None if failed else _mean(list(result.trace.ann_scores[:10]))
            self.tally.served(stage, a.variant, latency_ms=latency, error=failed, score=score)
            if failed or result.trace is None:
                continue
            others: list[Assignment | None] = (
                [None] if not a.primary and a.compare else
                list(self.router.shadows(stage)) if a.primary else [])
            for other in others:
                try:
                    self._compare(self._comparison(stage, a, other, result))
                except Exception:  # a comparison's bug must not fail the client's request
                    log.warning("rollout: comparison not queued", exc_info=True)
                    self.tally.compare_failed(stage, other.variant if other else a.variant)

    def charged(self, assignments: dict[str, Assignment | None], core_s: float) -> None:
        """A served request's attributed CPU (every stage of it), for each variant that
        served it: the `cost_ratio` guardrail compares variants' CPU per request."""
        for stage, a in assignments.items():
            if a is not None:
                self.tally.cost(stage, a.variant, core_s)

    async def interleave(self, served: Assignment | None, result: FeedResult) -> FeedResult:
        """The page to serve: `result`'s, or, for a sampled share of the primary's requests
        when the stage declares interleaving, a team-draft merge of it with the interleaved
        variant's list for the same candidates. Each item's `explain.interleaving` names its
        team (control: the primary's list, candidate: the variant's) and both variants; the
        impression log keeps the team per row. The coin is seeded by the request id (a
        replayed request gets the same page). The variant's ranker call is on the request
        path; if it fails, the primary's page is served and `degraded` says `interleaving`."""
        trace = result.trace
        if trace is None or not result.items or "ranker" in result.degraded:
            return result
        a = self.router.interleave("ranker", trace.request_id, served)
        if a is None:
            return result
        assert served is not None  # interleave() returns None without a served primary
        t0 = time.perf_counter()
        try:
            other, degraded, call_ms = await self.pipeline.rerank_with(
                trace, self.variants.ranker(a))
        except Exception:  # a missing variant, a bug: the primary's page still serves
            log.warning("interleaving with %s failed", a.variant, exc_info=True)
            other, degraded, call_ms = [], ["ranker"], 0.0
        timings = {**result.timings_ms,
                   "interleaving": round((time.perf_counter() - t0) * 1000, 3)}
        if degraded or not other:
            metrics.INTERLEAVED.labels(a.variant, "candidate_failed").inc()
            return replace(result, degraded=[*result.degraded, "interleaving"],
                           timings_ms=timings)
        metrics.INTERLEAVED.labels(a.variant, "served").inc()
        metrics.RANKER_SECONDS.labels(a.variant).observe(call_ms / 1000.0)
        lists = (result.items, other)
        names = (served.variant, a.variant)
        il = team_draft(_ids(result.items), _ids(other),
                        length=min(trace.limit, max(len(result.items), len(other))),
                        rng=random.Random(trace.request_id))
        by_team = [{i.item_id: i for i in lst} for lst in lists]
        items = []
        for pos, (item_id, team) in enumerate(zip(il.items, il.teams, strict=True), start=1):
            src = by_team[team][int(item_id)]  # type: ignore[call-overload]
            explain = {**src.explain, "interleaving": {
                "team": TEAM_NAMES[team], "control": names[0], "candidate": names[1]}}
            items.append(FeedItem(src.item_id, pos, src.score, src.sources, explain))
        return replace(result, items=items, timings_ms=timings)

    def after_moderation(self, a: Assignment | None, *, text: str | None,
                         scores: dict[str, float], degraded: tuple[str, ...],
                         latency_ms: float, text_labels: tuple[str, ...],
                         score_text: Callable[[str, str], Awaitable[Mapping[str, float]]]
                         ) -> None:
        """Count a `/v1/moderate` call for its text-model variant and queue comparisons:
        the labels ranked by score, the variant's against the primary's, on the labels both
        heads emit (a canary head's extra label is served, but has nothing to compare with;
        `text_labels` are the serving head's)."""
        failed = STAGE_ERROR["moderation"] in degraded
        self.router.end(a, failed=failed)
        if a is None or text is None:
            return  # image-only: the text model's variants were not involved
        own = {lb: scores[lb] for lb in text_labels if lb in scores}
        self.tally.served("moderation", a.variant, latency_ms=latency_ms, error=failed,
                          score=None if failed or not own else max(own.values()))
        if failed:
            return
        ks = self.router.overlap_ks("moderation")
        primary_version = self.router.stages["moderation"]["variants"][0]["bundle_version"]

        async def compare(other: Assignment | None) -> None:
            version = other.bundle_version if other else primary_version
            t0 = time.perf_counter()
            try:
                got = await score_text(text, version)
            except Exception:
                if other is not None:
                    self.tally.served("moderation", other.variant, latency_ms=None,
                                      error=True)
                raise
            ms = (time.perf_counter() - t0) * 1000
            theirs = {lb: float(got[lb]) for lb in text_labels if lb in got}
            if other is not None:
                self.tally.served("moderation", other.variant, latency_ms=ms, error=False,
                                  score=max(theirs.values()) if theirs else None)
            primary, variant = (own, theirs) if other is not None else (theirs, own)
            shared = [lb for lb in text_labels if lb in primary and lb in variant]
            primary = {lb: primary[lb] for lb in shared}
            variant = {lb: variant[lb] for lb in shared}
            p_ms, v_ms = (latency_ms, ms) if other is not None else (ms, latency_ms)
            rank = lambda d: sorted(d, key=lambda lb: -d[lb])  # noqa: E731
            record(self.tally, "moderation", other.variant if other else a.variant,
                   rank(primary), rank(variant), ks,
                   score_delta=_mean([variant[lb] - primary[lb] for lb in shared]),
                   latency_delta=v_ms - p_ms)

        if not a.primary and a.compare:
            self._queue("moderation", a.variant, lambda: compare(None))
        if a.primary:
            for s in self.router.shadows("moderation"):
                self._queue("moderation", s.variant, lambda s=s: compare(s))  # type: ignore[misc]

    def _queue(self, stage: str, variant: str, job: Callable[[], Awaitable[None]]) -> bool:
        """Queue `job` on the (stage, variant)'s bounded runner; False: full, dropped and
        counted."""
        runner = self.runners.get((stage, variant))
        if runner is None:
            size = self.settings.shadow_queue_size
            if not self.serving_replica:  # the ShadowScorer: comparisons arrive a batch at once
                size = max(size, self.settings.shadow_batch_size)
            runner = self.runners[(stage, variant)] = ShadowRunner(
                size=size,
                concurrency=self.settings.shadow_concurrency, gate=self.gate)
        if not runner.submit(job, lambda: self.tally.compare_failed(stage, variant)):
            self.tally.dropped(stage, variant)
            return False
        return True

    def _compare(self, c: Comparison) -> None:
        """Run `c` off the critical path: in the ShadowScorer when there is one, else on this
        replica's queue (never waits, never raises)."""
        if self.remote is not None:
            if not self.remote.submit(c):
                self.tally.dropped(c.stage, c.variant)
            return
        self.accept(c)

    def accept(self, c: Comparison) -> bool:
        """Queue a comparison here (the ShadowScorer's entry point); False: dropped (queue
        full), counted."""
        return self._queue(c.stage, c.variant, lambda: self.run_comparison(c))

    def _comparison(self, stage: str, served: Assignment, shadow: Assignment | None,
                    result: FeedResult) -> Comparison:
        trace = result.trace
        assert trace is not None
        inputs: dict[str, np.ndarray] = {}
        if stage == "ranker" and len(trace.inputs) == 1:  # the served ranker's own inputs
            inputs = next(iter(trace.inputs.values()))
        return Comparison(
            stage=stage, served=served, shadow=shadow, ks=tuple(self.router.overlap_ks(stage)),
            user_id=trace.user_id, now_s=trace.now_s, limit=trace.limit,
            revision=self.router.revision,
            served_ms=result.timings_ms.get("ranker_call", 0.0) if stage == "ranker" else 0.0,
            kept_ids=trace.kept_ids, rscore=trace.rscore, scores=trace.scores, inputs=inputs)

    async def run_comparison(self, c: Comparison) -> None:
        """Run one comparison, its CPU charged to the `shadow` route (serve/cost.py)."""
        from serve import cost

        ledger = cost.shadow_cost(c.shadow.variant if c.shadow is not None
                                  else c.served.variant)
        try:
            with cost.charging(ledger):
                await run_comparison(self, c)
        finally:
            ledger.price_rows(self.pipeline.triton_rates)
            ledger.finish()

    async def drain(self) -> None:
        """Wait until every queued comparison has run, or, with a ShadowScorer, has been
        handed to it (tests, shutdown)."""
        if self.remote is not None:
            await self.remote.drain()
        for r in list(self.runners.values()):
            await r.drain()

    async def close(self) -> None:
        for r in self.runners.values():
            r.stop()
        with contextlib.suppress(Exception):
            await self.report_once()


def replica_name() -> str:
    """This Serve replica's id (a short random one outside a replica, in tests)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a Serve replica (tests)
        return uuid.uuid4().hex[:8]


def build_rollout_runtime(owner: Any, handle: Any, *, shadow_scorer: Any = None,
                          serving: bool = True) -> RolloutRuntime:
    """A replica's side of the rollout: variants loaded next to `owner`'s primary pipeline
    (`owner` has `args`, `pipeline`, `versions`, `replica`), routed by the controller's
    table. `shadow_scorer`: the ShadowScorer handle feed comparisons go to. Used by the
    ingress (serve/app.py) and by the ShadowScorer (serve/rollout/scorer.py)."""
    from funnel.contracts.bundle import read_manifest
    from serve.bundles import bundle_versions
    from serve.ranker.client import make_ranker
    from serve.rollout.variants import features_fingerprint

    a = owner.args
    r = a.feed.ranker
    variants = Variants(
        owner.pipeline, primary_version=owner.versions["bundle"],
        primary_fingerprint=features_fingerprint(read_manifest(a.bundle)),
        bundles=bundle_versions(a),
        make_ranker=lambda name, bundle: make_ranker(r, bundle=bundle, model_name=name),
        ef_search=a.feed.ann_ef_search)
    return RolloutRuntime(pipeline=owner.pipeline, variants=variants, controller=handle,
                          replica_id=owner.replica, settings=a.rollout,
                          shadow_scorer=shadow_scorer, serving=serving)
