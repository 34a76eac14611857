"""The naive composition, for comparison: one Serve deployment per stage, as a careful Ray
Serve user writes it after the model-composition guide, with no batching and the ranker called
per request inside its own deployment.

Fair to it:
- the independent candidate sources (ANN, social, trending, fresh) are called concurrently
  (`asyncio.gather` over their handles), as Funnel's pipeline gathers them;
- each deployment loads only what it uses: retrieval the user tower, the ANN index and the
  users table; the sources, the filter and the ranker the serving catalog (the ranker also its
  TorchScript model and feature transform); re-ranking nothing but its settings (the columns
  it needs travel with the request);
- every stage runs the same stage code as Funnel's pipeline (`serve.merge`, `serve.filters`,
  `serve.rerank`, the shared feature module). Only the composition differs: one process hop
  per stage, and the ranker per request instead of Triton's dynamic batching.
"""

# No `from __future__ import annotations`: FastAPI resolves endpoint annotations at run time.
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from funnel.contracts.model_io import TASKS
from serve.config import parse_app_args
from serve.filters import FilterContext, apply_filters, build_filters
from serve.merge import merge_candidates
from serve.pipeline import CatalogView, FeedQuery, _rng_for, ranker_inputs, task_probs
from serve.rerank import RerankInput, RerankParams, rerank
from serve.sources import SOURCES, SourceQuery
from serve.types import Candidates, Items, Merged, UserRow

_CPU = {"num_cpus": 0.2}


def _bundle(args: dict[str, Any]) -> Any:
    from funnel.contracts.bundle import verify_bundle

    return verify_bundle(parse_app_args(args).bundle)


def _catalog(args: dict[str, Any]) -> Any:
    from serve.catalog import Catalog

    a = parse_app_args(args)
    return Catalog(Path(_bundle(args).file("catalog/catalog.json")).parent,
                   trending_half_life_h=a.feed.trending_half_life_h)


def _features(args: dict[str, Any]) -> Any:
    from training.features import FeatureTransform

    return FeatureTransform.load(Path(_bundle(args).file("features/transform.json")).parent)


@serve.deployment(ray_actor_options=_CPU)
class Retrieval:
    """User tower, ANN index and the users table: the user's vector, ANN candidates, and the
    stored vectors of the candidates other sources proposed."""

    def __init__(self, args: dict[str, Any]) -> None:
        import pandas as pd

        from serve.loader import limit_threads
        from serve.retrieval import TwoTowerRetrieval

        a = parse_app_args(args)
        limit_threads(a.feed.intra_op_threads)
        b = _bundle(args)
        self.retrieval = TwoTowerRetrieval(b, _features(args), ef_search=a.feed.ann_ef_search)
        users = pd.read_parquet(Path(b.file("catalog/catalog.json")).parent / "users.parquet")
        users = users.sort_values("user_id")
        self.user_ids = users["user_id"].to_numpy(np.int64)
        self.cols = {c: users[c].astype(str).to_numpy(object)
                     for c in ("age_band", "country", "language")}
        self.quota = a.feed.sources["ann"].quota

    def user(self, user_id: int) -> UserRow:
        i = int(np.searchsorted(self.user_ids, user_id))
        if i < len(self.user_ids) and int(self.user_ids[i]) == user_id:
            c = self.cols
            return UserRow(user_id, True, str(c["age_band"][i]), str(c["country"][i]),
                           str(c["language"][i]))
        return UserRow(user_id, False)

    def run(self, user_id: int, now_s: float) -> tuple[Any, Candidates, UserRow]:
        user = self.user(user_id)
        vec = self.retrieval.user_vector(user) if user.known else None
        q = SourceQuery(user_id=user_id, known_user=user.known, user_vec=vec, now_s=now_s)
        ann = SOURCES["ann"](None, self.retrieval)  # type: ignore[arg-type]
        return vec, ann.generate(q, self.quota), user

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        return self.retrieval.item_vectors(item_ids)


@serve.deployment(ray_actor_options=_CPU)
class Source:
    """One catalog source (social, trending or fresh)."""

    def __init__(self, args: dict[str, Any], name: str) -> None:
        self.source = SOURCES[name](_catalog(args), None)  # type: ignore[arg-type]
        self.quota = parse_app_args(args).feed.sources[name].quota

    def run(self, q: SourceQuery) -> Candidates:
        if not q.known_user and not self.source.cold_start:
            return Candidates.empty()
        return self.source.generate(q, self.quota)


@serve.deployment(ray_actor_options=_CPU)
class Filter:
    """Merge and filters, over the catalog."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.catalog = _catalog(args)
        self.feed = parse_app_args(args).feed
        self.filters = build_filters(self.feed.filters.enabled)
        self.quotas = {n: s.quota for n, s in self.feed.sources.items()}

    def run(self, user_id: int, per_source: dict[str, Candidates],
            exclude: frozenset[int]) -> tuple[Merged, Items]:
        merged = merge_candidates(per_source, quotas=self.quotas,
                                  limit=self.feed.max_candidates)
        items = self.catalog.items(merged.ids)
        ctx = FilterContext(exclude_ids=exclude, seen_ids=self.catalog.seen(user_id),
                            blocked_authors=self.catalog.reported_authors(user_id),
                            languages=None, review_policy=self.feed.filters.review_policy)
        keep, _ = apply_filters(items, ctx, self.filters)
        return merged.take(keep), items.take(keep)


@serve.deployment(ray_actor_options=_CPU)
class Ranker:
    """The TorchScript ranker, called once per request (no batching), with its inputs."""

    def __init__(self, args: dict[str, Any]) -> None:
        from serve.loader import limit_threads, load_calibration, local_ranker

        a = parse_app_args(args)
        limit_threads(a.feed.intra_op_threads)
        self.catalog = _catalog(args)
        self.view = CatalogView.build(self.catalog, _features(args))
        self.ranker = local_ranker(a)
        self.calibration = load_calibration(_bundle(args))
        self.weights = np.asarray([a.feed.ranker.weights.get(t, 0.0) for t in TASKS],
                                  np.float32)

    def run(self, user: UserRow, items: Items, rscore: np.ndarray,
            now_s: float) -> np.ndarray:
        if not len(items):
            return np.zeros(0, np.float64)
        inputs = ranker_inputs(self.catalog, self.view, user, items, rscore, now_s)
        probs = task_probs(self.ranker.logits_sync(inputs), self.calibration)
        return (probs @ self.weights).astype(np.float64)


@serve.deployment(ray_actor_options=_CPU)
class Rerank:
    def __init__(self, args: dict[str, Any]) -> None:
        r = parse_app_args(args).feed.rerank
        self.params = RerankParams(**r.model_dump())

    def run(self, kept: Merged, items: Items, scores: np.ndarray, vecs: np.ndarray,
            limit: int, now_s: float, request_id: str) -> list[dict[str, Any]]:
        picks = rerank(RerankInput(scores=scores, created_at_s=items.created_at_s,
                                   authors=items.author_id, topics=items.topic,
                                   embeddings=vecs),
                       limit=limit, now_s=now_s, rng=_rng_for(request_id), params=self.params)
        return [{"item_id": int(kept.ids[p.row]), "rank": k, "score": p.score,
                 "sources": list(kept.sources_of(p.row))} for k, p in enumerate(picks, 1)]


naive_api = FastAPI()


@serve.deployment(ray_actor_options=_CPU)
@serve.ingress(naive_api)
class NaiveIngress:
    def __init__(self, retrieval: DeploymentHandle, social: DeploymentHandle,
                 trending: DeploymentHandle, fresh: DeploymentHandle, filt: DeploymentHandle,
                 ranker: DeploymentHandle, rr: DeploymentHandle, as_of_s: float) -> None:
        self.h = {"retrieval": retrieval, "social": social, "trending": trending,
                  "fresh": fresh, "filter": filt, "ranker": ranker, "rerank": rr}
        self.as_of_s = as_of_s

    @naive_api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @naive_api.post("/v1/feed")
    async def feed(self, request: Request) -> JSONResponse:
        body = await request.json()
        q = FeedQuery(user_id=int(body["user_id"]), limit=int(body.get("limit", 50)),
                      request_id=request.headers.get("x-request-id", "naive"))
        now = self.as_of_s
        # ANN needs the user's vector; the catalog sources need only the user id, so all
        # four run at once (the ANN call computes the vector and searches in one hop)
        ann_call = self.h["retrieval"].run.remote(q.user_id, now)
        known = True  # the catalog sources decide cold start themselves from known_user
        sq = SourceQuery(user_id=q.user_id, known_user=known, user_vec=None, now_s=now)
        (vec, ann, user), social, trending, fresh = await asyncio.gather(
            ann_call, self.h["social"].run.remote(sq), self.h["trending"].run.remote(sq),
            self.h["fresh"].run.remote(sq))
        if not user.known:  # a cold-start user gets only the cold-start sources
            social = Candidates.empty()
        per_source = {"ann": ann, "social": social, "trending": trending, "fresh": fresh}
        kept, items = await self.h["filter"].run.remote(q.user_id, per_source, q.exclude_ids)
        vecs = await self.h["retrieval"].vectors.remote(kept.ids)
        rscore = (vecs @ vec if vec is not None else np.zeros(len(kept), np.float32)
                  ).astype(np.float32)
        scores = await self.h["ranker"].run.remote(user, items, rscore, now)
        page = await self.h["rerank"].run.remote(kept, items, scores, vecs, q.limit, now,
                                                 q.request_id)
        return JSONResponse({"user_id": q.user_id, "items": page, "degraded": []})


def build_naive_app(args: dict[str, Any]) -> Application:
    import json

    b = _bundle(args)
    as_of = float(json.loads(Path(b.file("catalog/catalog.json")).read_text())["as_of_s"])
    return NaiveIngress.bind(  # type: ignore[attr-defined]
        Retrieval.bind(args),  # type: ignore[attr-defined]
        Source.options(name="Social").bind(args, "social"),  # type: ignore[attr-defined]
        Source.options(name="Trending").bind(args, "trending"),  # type: ignore[attr-defined]
        Source.options(name="Fresh").bind(args, "fresh"),  # type: ignore[attr-defined]
        Filter.bind(args), Ranker.bind(args), Rerank.bind(args),  # type: ignore[attr-defined]
        as_of)
