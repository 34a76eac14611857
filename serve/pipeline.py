"""The feed pipeline: sources -> merge -> filters -> ranker -> re-ranking.

Framework-free (asyncio and numpy; no Ray, no FastAPI; no pandas per request): the Serve
ingress, the in-process benchmark floor and the tests all call `FeedPipeline.run`. Every
stage works on whole numpy columns (candidate ids, their catalog columns, scores): the
catalog, the feature transform and the vocabularies are turned into arrays when the bundle
loads, so a request builds no DataFrame and no Python object per candidate
(docs/performance.md).

Every stage that can fail degrades instead of failing the request:

- a candidate source that errors or passes its timeout contributes nothing, and the response
  lists `source:<name>` in `degraded`. The timeout counts the source's own running time:
  waiting for a thread or a core is not charged to it;
- when the ranker (Triton) errors or is slow, items keep retrieval order (the two-tower
  inner product; merge order for a cold-start user) and `degraded` lists `ranker`. After a
  ranker failure the pipeline skips Triton for `retry_after_s`, so an outage costs one
  timeout rather than one per request, and normal ranking resumes on its own;
- when the online feature store (Redis, `online`) errors or is slow, the request uses the
  bundle's history, seen and reported sets and trending list, and `degraded` lists
  `features` (the store pauses its calls the same way).

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

from funnel.contracts.model_io import TASKS
from serve import cost
from serve.catalog import Catalog
from serve.config import FeedSettings
from serve.errors import FeatureStoreUnavailable, RankerUnavailable
from serve.filters import FilterContext, apply_filters, build_filters
from serve.merge import merge_candidates
from serve.moderation.verdicts import LiveVerdicts
from serve.offpath import yield_to_requests
from serve.rerank import RerankInput, RerankParams, rerank
from serve.sources import AnnSource, CandidateSource, SourceQuery
from serve.types import Candidates, FeedItem, Items, Merged, UserRow
from training.calibration import Calibration
from training.features import CatalogAlignment, FeatureTransform, UserAlignment, unix_ns

if TYPE_CHECKING:  # the model runtimes (torch, faiss) load with a bundle, not with this
    from serve.features.store import OnlineFeatures
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


@dataclass(frozen=True, eq=False)
class CatalogView:
    """One feature transform's lookups in a catalog's row order: the vocabulary index of each
    catalog topic and modality code, and the transform's per-post tables aligned to catalog
    rows. Built once per (catalog, transform) at load time; a request then indexes it."""

    features: FeatureTransform
    topic: np.ndarray
    modality: np.ndarray
    alignment: CatalogAlignment
    users: UserAlignment

    @classmethod
    def build(cls, catalog: Catalog, ft: FeatureTransform) -> CatalogView:
        cats = catalog.categories
        return cls(ft, ft.vocab_index("posts.topic", cats["topic"]),
                   ft.vocab_index("posts.modality", cats["modality"]),
                   ft.align(catalog.post_ids, catalog.authors),
                   ft.align_users(catalog.user_ids, catalog.user_columns))


def ranker_inputs(catalog: Catalog, view: CatalogView, user: UserRow, items: Items,
                  retrieval_score: np.ndarray, now_s: float) -> dict[str, np.ndarray]:
    """The ranker's inputs for (user, each item, now), from the shared feature module (the
    view's transform: the ranker version's own)."""
    followees = catalog.followees(user.user_id)
    return view.features.serving_inputs(
        user_id=user.user_id, age_band=user.age_band, now_ns=unix_ns(now_s),
        post_ids=items.ids, author_ids=items.author_id, topic_idx=view.topic[items.topic],
        modality_idx=view.modality[items.modality], created_ns=items.created_ns,
        follows_author=np.isin(items.author_id, followees),
        retrieval_score=retrieval_score, catalog_rows=items.rows, alignment=view.alignment)


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
    user: UserRow
    known: bool
    now_s: float
    request_id: str
    limit: int
    ann_ids: np.ndarray
    ann_scores: np.ndarray
    kept: Merged  # the candidates the filters kept, in merge order
    rscore: np.ndarray
    items: Items  # their catalog columns
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
                 calibration: Calibration | None = None, version: str = "") -> None:
        self.catalog = catalog
        self.live_verdicts = live_verdicts
        # the online feature store (serve.features.store.OnlineFeatures); None: the bundle's
        # features only
        self.online: OnlineFeatures | None = None
        self.triton_rates = cost.TritonRates()  # Triton compute per row (serve/cost.py)
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
        self._quotas = {n: s.quota for n, s in settings.sources.items()}
        self._views: dict[int, CatalogView] = {}
        self._positions: dict[int, tuple[TwoTowerRetrieval, np.ndarray]] = {}
        self._view(self.features)  # at load, not on the first request
        self._index_positions(retrieval)
        self.primary_models = Models(retrieval=retrieval, ranker=RankerModel(
            "primary", version, ranker, retrieval.features, calibration))
        self._ann: dict[int, AnnSource] = {}

    def _source(self, name: str, retrieval: TwoTowerRetrieval) -> CandidateSource:
        """The `ann` source of the request's retrieval version; the others are shared."""
        if name != "ann" or retrieval is self.retrieval:
            return self.sources[name]
        src = self._ann.get(id(retrieval))
        if src is None:
            src = self._ann[id(retrieval)] = AnnSource(retrieval, self.catalog)
        return src

    def now_s(self, q: FeedQuery) -> float:
        if q.timestamp_s is not None:
            return q.timestamp_s
        return self.catalog.as_of_s if self.settings.clock == "catalog" else self._clock()

    # ---- stages --------------------------------------------------------------------------
    async def _candidates(self, query: SourceQuery, degraded: list[str],
                          retrieval: TwoTowerRetrieval) -> dict[str, Candidates]:
        names = [n for n, s in self.settings.sources.items()
                 if s.enabled and n in self.sources
                 and (query.known_user or self.sources[n].cold_start)]

        async def one(name: str) -> Candidates:
            s = self.settings.sources[name]
            return await run_source(self._source(name, retrieval), query, s.quota,
                                    s.timeout_ms / 1000.0)

        # inline sources run here, in order (no task each); the others concurrently
        inline = [n for n in names if getattr(self._source(n, retrieval), "inline", False)]
        pooled = [n for n in names if n not in inline]
        results: dict[str, Candidates | BaseException] = {}
        waiting = None
        if pooled:
            waiting = asyncio.gather(*(one(n) for n in pooled), return_exceptions=True)
            await asyncio.sleep(0)  # let them reach their threads before the inline work
        for name in inline:
            try:
                with cost.section(cost.source_stage(name)):
                    results[name] = self._source(name, retrieval).generate(
                        query, self.settings.sources[name].quota)
            except Exception as e:  # a failing source degrades, the feed goes on
                results[name] = e
        if waiting is not None:
            results.update(zip(pooled, await waiting, strict=True))
        out: dict[str, Candidates] = {}
        for name in names:  # the configured order: the merge's round-robin follows it
            res = results[name]
            if isinstance(res, BaseException):
                degraded.append(f"source:{name}")
            else:
                out[name] = res
        return out

    def _view(self, ft: FeatureTransform) -> CatalogView:
        """`ft`'s vocabularies and per-post tables in catalog order: built once per feature
        transform (the primary's when the pipeline is made, a variant's on its first
        request), then a request indexes them by catalog row."""
        view = self._views.get(id(ft))
        if view is None or view.features is not ft:
            view = self._views[id(ft)] = CatalogView.build(self.catalog, ft)
        return view

    def prepare(self, *, features: FeatureTransform | None = None,
                retrieval: TwoTowerRetrieval | None = None) -> None:
        """Build what a version's requests index (its features' catalog view; its index's
        catalog positions and ANN source) now, off the request path: a rollout calls this
        from the thread that loads a variant, so its first requests do not stall the
        replica's event loop for the second a million-post alignment takes."""
        if features is not None:
            self._view(features)
        if retrieval is not None:
            self._view(retrieval.features)
            self._index_positions(retrieval)
            self._source("ann", retrieval)

    def _index_positions(self, retrieval: TwoTowerRetrieval) -> np.ndarray:
        """Each catalog row's position in `retrieval`'s index (-1: not indexed)."""
        pos = self._positions.get(id(retrieval))
        if pos is None or pos[0] is not retrieval:
            pos = self._positions[id(retrieval)] = (
                retrieval, self.catalog.row_map(retrieval.sorted_item_ids))
        return pos[1]

    def ranker_inputs(self, user: UserRow, items: Items, retrieval_score: np.ndarray,
                      now_s: float, features: FeatureTransform | None = None
                      ) -> dict[str, np.ndarray]:
        """The ranker's inputs for (user, each item, now), from the shared feature module (the
        ranker version's own fitted transform when given)."""
        return ranker_inputs(self.catalog, self._view(features or self.features), user, items,
                             retrieval_score, now_s)

    async def model_scores(self, user_id: int, user: UserRow | None,
                           items: Items | np.ndarray, rscore: np.ndarray, now_s: float,
                           model: RankerModel, timings: dict[str, float],
                           cache: dict[int, dict[str, np.ndarray]] | None = None
                           ) -> tuple[np.ndarray, np.ndarray] | None:
        """`model`'s (final weighted score [n], per-task probabilities [n, tasks]) for the
        items, or None when the ranker is unavailable (a failure starts its `retry_after_s`
        pause). `timings` gets `ranker_call`: the wait for the model alone, features
        excluded. `cache` holds ranker inputs by id(FeatureTransform); `user` (the user's
        catalog row) is looked up when None, and `items` when given as ids, if the inputs
        must be built."""
        m = model
        if self._monotonic() < self._ranker_down_until.get(id(m.ranker), 0.0):
            return None
        try:
            key = id(m.features)
            inputs = cache.get(key) if cache is not None else None
            if inputs is None:
                with cost.section(cost.INGRESS):
                    if user is None:
                        user = self.catalog.user(user_id)
                    if isinstance(items, np.ndarray):
                        items = self.catalog.items(items)
                    inputs = self.ranker_inputs(user, items, rscore, now_s, m.features)
                if cache is not None:
                    cache[key] = inputs
            await yield_to_requests()  # off-path (a shadow): wait for an idle replica
            c = cost.current()
            if c is not None:
                c.ranker_model = m.version  # the ranker client charges its rows to it
            t0 = time.perf_counter()
            try:
                logits = await m.ranker.logits(inputs)
            finally:
                timings["ranker_call"] = round((time.perf_counter() - t0) * 1000, 3)
        except RankerUnavailable:
            self._ranker_down_until[id(m.ranker)] = (self._monotonic()
                                                     + self.settings.ranker.retry_after_s)
            return None
        with cost.section(cost.INGRESS):
            probs = task_probs(logits, m.calibration)
            return (probs @ self._weights).astype(np.float32, copy=False), probs

    async def _rank(self, user: UserRow, items: Items, rscore: np.ndarray, now_s: float,
                    degraded: list[str], timings: dict[str, float],
                    model: RankerModel | None = None,
                    cache: dict[int, dict[str, np.ndarray]] | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Each item's score (float64) and per-task probabilities (None when degraded: then
        retrieval scores, or merge order for a cold-start user)."""
        n = len(items)
        if not n:
            return np.zeros(0, np.float64), None
        out = await self.model_scores(user.user_id, user, items, rscore, now_s,
                                      model or self.primary_models.ranker, timings, cache)
        if out is not None:
            final, probs = out
            return final.astype(np.float64), probs
        degraded.append("ranker")
        if rscore.any():
            return rscore.astype(np.float64), None
        # cold start, no user vector: keep merge order
        return 1.0 / (1.0 + np.arange(n, dtype=np.float64)), None

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
        cpu = cost.Lap()  # this thread's CPU between the awaits is the ingress's
        now_s = self.now_s(q)
        user = self.catalog.user(q.user_id)
        known = user.known
        fresh = None
        t = t0
        if self.online is not None:  # one round trip; the bundle's features if it fails
            try:
                fresh = self.online.read(q.user_id)
            except FeatureStoreUnavailable:
                degraded.append("features")
            t = lap("features", t0)
        user_vec = (retrieval.user_vector(user, self._view(retrieval.features).users,
                                          fresh.history if fresh is not None else None)
                    if known else None)
        query = SourceQuery(user_id=q.user_id, known_user=known, user_vec=user_vec, now_s=now_s,
                            trending=fresh.trending if fresh is not None else None)
        cpu.charge(cost.INGRESS)
        per_source = await self._candidates(query, degraded, retrieval)
        t = lap("candidates", t)
        cpu.mark()

        merged = merge_candidates(per_source, quotas=self._quotas,
                                  limit=self.settings.max_candidates)
        items = self.catalog.items(merged.ids, merged.catalog_rows)
        fs = self.settings.filters
        languages = None
        if fs.locale == "user_language":
            lang = (q.locale or user.language).split("-")[0].lower()
            languages = frozenset({lang})
        seen, reported = self.catalog.seen(q.user_id), self.catalog.reported_authors(q.user_id)
        if fresh is not None:
            seen = np.concatenate([seen, fresh.seen]) if len(fresh.seen) else seen
            if len(fresh.reported):
                reported = np.concatenate([reported, fresh.reported])
        ctx = FilterContext(exclude_ids=q.exclude_ids, seen_ids=seen,
                            blocked_authors=reported,
                            languages=languages, review_policy=fs.review_policy,
                            live_verdicts=self.live_verdicts)
        keep, removed = apply_filters(items, ctx, self._filters)
        kept, kept_items = merged.take(keep), items.take(keep)
        t = lap("merge_filter", t)

        kept_ids = kept.ids
        vecs = retrieval.vectors_at(self._index_positions(retrieval)[kept_items.rows])
        rscore = (vecs @ user_vec if user_vec is not None
                  else np.zeros(len(kept), np.float32)).astype(np.float32)
        kept = Merged(kept.ids, kept.source_mask, kept.sources, rscore.astype(np.float64),
                      kept.catalog_rows)
        inputs_cache: dict[int, dict[str, np.ndarray]] = {}
        cpu.charge(cost.INGRESS)
        scores, probs = await self._rank(user, kept_items, rscore, now_s, degraded, timings,
                                         m.ranker, inputs_cache)
        t = lap("rank", t)

        with cost.section(cost.INGRESS):
            page = self._page(scores, probs, kept, kept_items, vecs, now_s, q.limit,
                              q.request_id)
        lap("rerank", t)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
        ann = per_source.get("ann", Candidates.empty())
        trace = Trace(user_id=q.user_id, user=user, known=known, now_s=now_s,
                      request_id=q.request_id, limit=q.limit, ann_ids=ann.ids,
                      ann_scores=ann.scores, kept=kept, rscore=rscore, items=kept_items,
                      vecs=vecs, kept_ids=kept_ids,
                      scores=(np.zeros(0, np.float32) if "ranker" in degraded else
                              scores.astype(np.float32)),
                      inputs=inputs_cache, dense_features=m.ranker.features.dense_features)
        return FeedResult(items=page, degraded=degraded, cold_start=not known,
                          timings_ms=timings, filtered=removed, trace=trace,
                          candidates={n: len(c) for n, c in per_source.items()})

    def _page(self, scores: np.ndarray, probs: np.ndarray | None, kept: Merged,
              items: Items, vecs: np.ndarray, now_s: float, limit: int,
              request_id: str) -> list[FeedItem]:
        picks = rerank(RerankInput(scores=scores, created_at_s=items.created_at_s,
                                   authors=items.author_id, topics=items.topic,
                                   embeddings=vecs),
                       limit=limit, now_s=now_s, rng=lambda: _rng_for(request_id),
                       params=self._rerank)
        rows = [p.row for p in picks]
        ids = kept.ids[rows].tolist()
        prob_rows = probs[rows].tolist() if probs is not None else None
        out: list[FeedItem] = []
        masks = kept.source_mask[rows].tolist()
        sources: dict[int, tuple[str, ...]] = {}  # per source mask: a page has few
        for k, p in enumerate(picks):
            explain = p.explain
            if prob_rows is not None and not explain.get("exploration"):
                explain = {**explain, "probs": {t: round(v, 5) for t, v in
                                                zip(TASKS, prob_rows[k], strict=True)}}
            m = masks[k]
            names = sources.get(m)
            if names is None:
                names = sources[m] = kept.sources_of(p.row)
            out.append(FeedItem(ids[k], k + 1, p.score, names, explain))
        return out

    async def rerank_with(self, trace: Trace, model: RankerModel
                          ) -> tuple[list[FeedItem], list[str], float]:
        """The page `model` would have served for the same candidates (the interleaved
        candidate ranker): (items, degraded, ranker call ms). Same exploration seed, so the
        lists differ only by the ranker."""
        degraded: list[str] = []
        timings: dict[str, float] = {}
        scores, probs = await self._rank(trace.user, trace.items, trace.rscore, trace.now_s,
                                         degraded, timings, model, trace.inputs)
        if degraded:  # the model failed: no page to compute
            return [], degraded, timings.get("ranker_call", 0.0)
        with cost.section(cost.INGRESS):
            items = self._page(scores, probs, trace.kept, trace.items, trace.vecs,
                               trace.now_s, trace.limit, trace.request_id)
        return items, degraded, timings.get("ranker_call", 0.0)


async def run_source(source: CandidateSource, query: SourceQuery, quota: int,
                     timeout_s: float, *, clock: Callable[[], float] = time.perf_counter,
                     poll_s: float = 0.01) -> Candidates:
    """One source's candidates. An `inline` source runs here; any other runs on the event
    loop's thread pool and gets `timeout_s` of its own running time, counted from when its
    thread starts (a source still waiting for a thread after `timeout_s` gives up too). A
    result that comes back past its budget counts as timed out, as it would had the loop
    looked at that moment. `clock` measures both bounds (a test injects its own); `poll_s`
    is how often the loop looks while the source runs (an answer is taken at once).

    Raises:
        TimeoutError: past either bound; the source's exception when it fails.
    """
    if getattr(source, "inline", False):
        return source.generate(query, quota)
    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    charged = cost.current()  # the worker thread does not see the request's context

    def work() -> Candidates:
        marks["start"] = clock()
        try:
            with cost.section(cost.source_stage(source.name), cost=charged):
                return source.generate(query, quota)
        finally:
            marks["end"] = clock()

    queued = clock()
    fut = loop.run_in_executor(None, work)
    ran_past = f"source {source.name!r} ran past {timeout_s * 1000:.0f} ms"
    waited = f"source {source.name!r} waited {timeout_s * 1000:.0f} ms for a thread"
    while True:
        await asyncio.wait({fut}, timeout=poll_s)
        started = marks.get("start")
        if fut.done():
            if started is not None and started - queued > timeout_s:
                raise TimeoutError(waited)
            if started is not None and marks.get("end", started) - started > timeout_s:
                raise TimeoutError(ran_past)
            return fut.result()
        now = clock()
        if started is None and now - queued >= timeout_s:
            fut.cancel()
            raise TimeoutError(waited)
        if started is not None and now - started >= timeout_s:
            raise TimeoutError(ran_past)
