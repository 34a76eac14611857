"""The feed pipeline: sources -> merge -> filters -> ranker -> re-ranking.

Framework-free (asyncio, numpy, pandas; no Ray, no FastAPI): the Serve ingress, the
in-process benchmark floor and the tests all call `FeedPipeline.run`. Every stage that can
fail degrades instead of failing the request:

- a candidate source that errors or passes its timeout contributes nothing, and the response
  lists `source:<name>` in `degraded`;
- when the ranker (Triton) errors or is slow, items keep retrieval order (the two-tower
  inner product; merge order for a cold-start user) and `degraded` lists `ranker`. After a
  ranker failure the pipeline skips Triton for `retry_after_s`, so an outage costs one
  timeout rather than one per request, and normal ranking resumes on its own.

The ranker returns one logit per task; the ranker version's bundle calibration (when it has
one) turns them into probabilities, which feed both the weighted score and `explain.probs`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from funnel.contracts.model_io import TASKS
from serve.catalog import Catalog
from serve.config import FeedSettings
from serve.errors import RankerUnavailable
from serve.filters import FilterContext, apply_filters, build_filters
from serve.merge import merge_candidates
from serve.moderation.verdicts import LiveVerdicts
from serve.offpath import yield_to_requests
from serve.rerank import RerankParams, rerank
from serve.sources import AnnSource, CandidateSource, SourceQuery
from serve.types import Candidate, FeedItem, ItemInfo, Merged, Scored
from training.calibration import Calibration
from training.features import FeatureTransform

if TYPE_CHECKING:  # the model runtimes (torch, faiss) load with a bundle, not with this
    from serve.ranker.client import Ranker
    from serve.retrieval import TwoTowerRetrieval


@dataclass(frozen=True)
class RankerModel:
    """One ranker version: its client (Triton model), the feature transform of its bundle
    (a ranker's inputs are built by the features it was trained with) and its bundle's
    calibration (None: a bundle without one, served as sigmoid of the logits)."""

    name: str
    version: str
    ranker: Ranker
    features: FeatureTransform
    calibration: Calibration | None = None


def task_probs(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Per-task probabilities [n, tasks] from the ranker's logits."""
    if calibration is not None:
        return calibration.probs(logits)
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class Models:
    """The model versions one request is served by (the rollout's assignment)."""

    retrieval: TwoTowerRetrieval
    ranker: RankerModel
    retrieval_variant: str = "primary"
    ranker_variant: str = "primary"


@dataclass(frozen=True)
class Trace:
    """What a request's stages produced, kept for comparisons off the critical path (a shadow
    scores the same candidates; a canary's list is compared with the primary's)."""

    user_id: int
    user: pd.DataFrame
    known: bool
    now_s: float
    request_id: str
    limit: int
    ann_ids: tuple[int, ...]
    ann_scores: tuple[float, ...]
    kept: list[Merged]
    rscore: np.ndarray
    infos: dict[int, ItemInfo]
    vecs: np.ndarray
    kept_ids: np.ndarray
    # the served ranker's final (weighted) score of each kept item, in `kept` order; empty
    # when the ranker was degraded. Comparisons rank by these, not by re-ranked pages
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), compare=False)
    # ranker inputs by id(FeatureTransform): a shadow whose bundle has the same fitted
    # features (Variants shares the object) scores without building them again
    inputs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, compare=False)
    # the served ranker's dense inputs by name, in column order (its bundle's layout)
    dense_features: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class FeedQuery:
    user_id: int
    limit: int
    request_id: str
    exclude_ids: frozenset[int] = frozenset()
    locale: str | None = None
    timestamp_s: float | None = None


@dataclass(frozen=True)
class FeedResult:
    items: list[FeedItem]
    degraded: list[str]
    cold_start: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    trace: Trace | None = None
    candidates: dict[str, int] = field(default_factory=dict)  # per source, before merging


def _rng_for(request_id: str) -> np.random.Generator:
    """Exploration randomness seeded by the request id: replayable from the log."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8],
                                                "little"))


class FeedPipeline:
    """One bundle's feed: see the module docstring for the stages and how each degrades."""

    def __init__(self, *, catalog: Catalog, retrieval: TwoTowerRetrieval, ranker: Ranker,
                 sources: Mapping[str, CandidateSource], settings: FeedSettings,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 live_verdicts: LiveVerdicts | None = None,
                 calibration: Calibration | None = None) -> None:
        self.catalog = catalog
        self.live_verdicts = live_verdicts
        self.retrieval = retrieval
        self.features = retrieval.features
        self.ranker = ranker
        self.sources = dict(sources)
        self.settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._filters = build_filters(settings.filters.enabled)
        self._weights = np.asarray([settings.ranker.weights.get(t, 0.0) for t in TASKS],
                                   dtype=np.float32)
        r = settings.rerank
        self._rerank = RerankParams(
            author_cap=r.author_cap, topic_cap=r.topic_cap, mmr_lambda=r.mmr_lambda,
            freshness_weight=r.freshness_weight, freshness_half_life_h=r.freshness_half_life_h,
            explore_slots=r.explore_slots, explore_min_rank=r.explore_min_rank)
        # per ranker client: a failing canary must not switch off the primary
        self._ranker_down_until: dict[int, float] = {}
        self.primary_models = Models(retrieval=retrieval, ranker=RankerModel(
            "primary", "", ranker, retrieval.features, calibration))
        self._ann: dict[int, AnnSource] = {}

    def _source(self, name: str, retrieval: TwoTowerRetrieval) -> CandidateSource:
        """The `ann` source of the request's retrieval version; the others are shared."""
        if name != "ann" or retrieval is self.retrieval:
            return self.sources[name]
        src = self._ann.get(id(retrieval))
        if src is None:
            src = self._ann[id(retrieval)] = AnnSource(retrieval)
        return src

    def now_s(self, q: FeedQuery) -> float:
        if q.timestamp_s is not None:
            return q.timestamp_s
        return self.catalog.as_of_s if self.settings.clock == "catalog" else self._clock()

    # ---- stages --------------------------------------------------------------------------
    async def _candidates(self, query: SourceQuery, degraded: list[str],
                          retrieval: TwoTowerRetrieval) -> dict[str, list[Candidate]]:
        names = [n for n, s in self.settings.sources.items()
                 if s.enabled and n in self.sources
                 and (query.known_user or self.sources[n].cold_start)]

        async def one(name: str) -> list[Candidate]:
            s = self.settings.sources[name]
            return await asyncio.wait_for(
                asyncio.to_thread(self._source(name, retrieval).generate, query, s.quota),
                timeout=s.timeout_ms / 1000.0)

        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        out: dict[str, list[Candidate]] = {}
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                degraded.append(f"source:{name}")
            else:
                out[name] = res
        return out

    def ranker_inputs(self, user_id: int, user: pd.DataFrame, items: list[Merged] | np.ndarray,
                      retrieval_score: np.ndarray, now_s: float,
                      features: FeatureTransform | None = None) -> dict[str, np.ndarray]:
        """The ranker's inputs for (user, each item, now), from the shared feature module (the
        ranker version's own fitted transform when given). `items`: the merged candidates,
        or their ids."""
        ids = (items.astype(np.int64, copy=False) if isinstance(items, np.ndarray)
               else np.asarray([m.item_id for m in items], dtype=np.int64))
        rows = self.catalog.item_frame(ids)
        n = len(rows)
        followees = self.catalog.followees(user_id)
        rows = rows.assign(
            user_id=np.full(n, user_id, dtype=np.int64),
            age_band=np.repeat(user["age_band"].to_numpy(), n),
            country=np.repeat(user["country"].to_numpy(), n),
            timestamp=pd.Timestamp(now_s, unit="s", tz="UTC"),
            follows_author=np.isin(rows["author_id"].to_numpy(), followees))
        ft = features or self.features
        topic_idx = ft.vocab_index("posts.topic", rows["topic"].to_numpy())
        counts = ft.final_counts(rows["user_id"].to_numpy(), rows["post_id"].to_numpy(),
                                 rows["author_id"].to_numpy(), topic_idx)
        return ft.ranker_inputs(rows, counts, retrieval_score)

    async def model_scores(self, user_id: int, user: pd.DataFrame | None,
                           items: list[Merged] | np.ndarray, rscore: np.ndarray, now_s: float,
                           model: RankerModel, timings: dict[str, float],
                           cache: dict[int, dict[str, np.ndarray]] | None = None
                           ) -> tuple[np.ndarray, np.ndarray] | None:
        """`model`'s (final weighted score [n], per-task probabilities [n, tasks]) for the
        items, or None when the ranker is unavailable (a failure starts its `retry_after_s`
        pause). `timings` gets `ranker_call`: the wait for the model alone, features
        excluded. `cache` holds ranker inputs by id(FeatureTransform); `user` (the user's
        catalog row) is looked up when None and the inputs must be built."""
        m = model
        if self._monotonic() < self._ranker_down_until.get(id(m.ranker), 0.0):
            return None
        try:
            key = id(m.features)
            inputs = cache.get(key) if cache is not None else None
            if inputs is None:
                if user is None:
                    user = self.catalog.user_frame(user_id)
                inputs = self.ranker_inputs(user_id, user, items, rscore, now_s, m.features)
                if cache is not None:
                    cache[key] = inputs
            await yield_to_requests()  # off-path (a shadow): wait for an idle replica
            t0 = time.perf_counter()
            try:
                logits = await m.ranker.logits(inputs)
            finally:
                timings["ranker_call"] = round((time.perf_counter() - t0) * 1000, 3)
        except RankerUnavailable:
            self._ranker_down_until[id(m.ranker)] = (self._monotonic()
                                                     + self.settings.ranker.retry_after_s)
            return None
        probs = task_probs(logits, m.calibration)
        return (probs @ self._weights).astype(np.float32, copy=False), probs

    async def _rank(self, user_id: int, user: pd.DataFrame, items: list[Merged],
                    rscore: np.ndarray, now_s: float, degraded: list[str],
                    timings: dict[str, float], model: RankerModel | None = None,
                    cache: dict[int, dict[str, np.ndarray]] | None = None
                    ) -> tuple[list[Scored], dict[int, np.ndarray]]:
        """Scored items, and each item's per-task probabilities (empty when degraded)."""
        if not items:
            return [], {}
        out = await self.model_scores(user_id, user, items, rscore, now_s,
                                      model or self.primary_models.ranker, timings, cache)
        if out is not None:
            final, probs = out
            # per-task probabilities go into `explain` for the page only (see run)
            return ([Scored(m, float(final[i])) for i, m in enumerate(items)],
                    {m.item_id: probs[i] for i, m in enumerate(items)})
        degraded.append("ranker")
        if rscore.any():
            return [Scored(m, float(rscore[i])) for i, m in enumerate(items)], {}
        # cold start, no user vector: keep merge order
        return [Scored(m, 1.0 / (1.0 + i)) for i, m in enumerate(items)], {}

    @staticmethod
    def _with_probs(item: FeedItem, probs: np.ndarray | None) -> FeedItem:
        if probs is None or item.explain.get("exploration"):
            return item
        explain = {**item.explain, "probs": {t: round(float(probs[j]), 5)
                                             for j, t in enumerate(TASKS)}}
        return FeedItem(item.item_id, item.rank, item.score, item.sources, explain)

    # ---- the request ---------------------------------------------------------------------
    async def run(self, q: FeedQuery, models: Models | None = None) -> FeedResult:
        """The feed for `q`, served by `models` (the primary versions by default)."""
        m = models or self.primary_models
        retrieval = m.retrieval
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round((now - since) * 1000, 3)
            return now

        degraded: list[str] = []
        now_s = self.now_s(q)
        known = self.catalog.has_user(q.user_id)
        user = self.catalog.user_frame(q.user_id)
        user_vec = retrieval.user_vector(user) if known else None
        query = SourceQuery(user_id=q.user_id, known_user=known, user_vec=user_vec, now_s=now_s)
        per_source = await self._candidates(query, degraded, retrieval)
        t = lap("candidates", t0)

        quotas = {n: s.quota for n, s in self.settings.sources.items()}
        merged = merge_candidates(per_source, quotas=quotas,
                                  limit=self.settings.max_candidates)
        ids = np.asarray([m.item_id for m in merged], dtype=np.int64)
        infos = self.catalog.infos(ids)
        fs = self.settings.filters
        languages = None
        if fs.locale == "user_language":
            lang = (q.locale or str(user["language"].iloc[0])).split("-")[0].lower()
            languages = frozenset({lang})
        ctx = FilterContext(exclude_ids=q.exclude_ids,
                            seen_ids=frozenset(self.catalog.seen(q.user_id).tolist()),
                            blocked_authors=frozenset(
                                self.catalog.reported_authors(q.user_id).tolist()),
                            languages=languages, review_policy=fs.review_policy,
                            live_verdicts=self.live_verdicts)
        kept, removed = apply_filters(merged, infos, ctx, self._filters)
        t = lap("merge_filter", t)

        kept_ids = np.asarray([m.item_id for m in kept], dtype=np.int64)
        vecs = retrieval.item_vectors(kept_ids)
        rscore = (vecs @ user_vec if user_vec is not None
                  else np.zeros(len(kept), np.float32)).astype(np.float32)
        kept = [Merged(m.item_id, m.sources, m.source_scores, float(rscore[i]))
                for i, m in enumerate(kept)]
        inputs_cache: dict[int, dict[str, np.ndarray]] = {}
        scored, probs = await self._rank(q.user_id, user, kept, rscore, now_s, degraded,
                                         timings, m.ranker, inputs_cache)
        t = lap("rank", t)

        items = self._page(scored, probs, infos, kept_ids, vecs, now_s, q.limit, q.request_id)
        lap("rerank", t)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
        ann = per_source.get("ann", [])
        trace = Trace(user_id=q.user_id, user=user, known=known, now_s=now_s,
                      request_id=q.request_id, limit=q.limit,
                      ann_ids=tuple(c.item_id for c in ann),
                      ann_scores=tuple(c.score for c in ann), kept=kept, rscore=rscore,
                      infos=infos, vecs=vecs, kept_ids=kept_ids,
                      scores=(np.zeros(0, np.float32) if "ranker" in degraded else
                              np.fromiter((x.score for x in scored), np.float32, len(scored))),
                      inputs=inputs_cache, dense_features=m.ranker.features.dense_features)
        return FeedResult(items=items, degraded=degraded, cold_start=not known,
                          timings_ms=timings, filtered=removed, trace=trace,
                          candidates={n: len(c) for n, c in per_source.items()})

    def _page(self, scored: list[Scored], probs: dict[int, np.ndarray],
              infos: dict[int, ItemInfo], kept_ids: np.ndarray, vecs: np.ndarray,
              now_s: float, limit: int, request_id: str) -> list[FeedItem]:
        emb = {int(i): vecs[j] for j, i in enumerate(kept_ids)}
        return [self._with_probs(i, probs.get(i.item_id)) for i in rerank(
            scored, infos, emb, limit=limit, now_s=now_s, rng=_rng_for(request_id),
            params=self._rerank)]

    async def rerank_with(self, trace: Trace, model: RankerModel
                          ) -> tuple[list[FeedItem], list[str], float]:
        """The page `model` would have served for the same candidates (the interleaved
        candidate ranker): (items, degraded, ranker call ms). Same exploration seed, so the
        lists differ only by the ranker."""
        degraded: list[str] = []
        timings: dict[str, float] = {}
        scored, probs = await self._rank(trace.user_id, trace.user, trace.kept, trace.rscore,
                                         trace.now_s, degraded, timings, model, trace.inputs)
        if degraded:  # the model failed: no page to compute
            return [], degraded, timings.get("ranker_call", 0.0)
        items = self._page(scored, probs, trace.infos, trace.kept_ids, trace.vecs,
                           trace.now_s, trace.limit, trace.request_id)
        return items, degraded, timings.get("ranker_call", 0.0)
