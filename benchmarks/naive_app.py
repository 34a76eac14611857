"""The naive composition, for comparison: one Serve deployment per stage, awaited one after
another, no batching, the ranker called per request inside its own deployment (the shape of
the Ray Serve recommendation tutorial). Same bundle, same stage code as Funnel's pipeline;
only the composition differs.
"""

# No `from __future__ import annotations`: FastAPI resolves endpoint annotations at run time.
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve.config import parse_app_args
from serve.filters import FilterContext, apply_filters, build_filters
from serve.merge import merge_candidates
from serve.pipeline import FeedPipeline, FeedQuery, _rng_for, task_probs
from serve.rerank import RerankParams, rerank
from serve.sources import SOURCES, SourceQuery
from serve.types import Candidate, Merged, Scored

_CPU = {"num_cpus": 0.2}


def _parts(args: dict[str, Any]) -> Any:
    from serve.loader import load_parts

    return load_parts(parse_app_args(args))


@serve.deployment(ray_actor_options=_CPU)
class Retrieval:
    def __init__(self, args: dict[str, Any]) -> None:
        _, self.catalog, self.retrieval = _parts(args)
        self.quota = parse_app_args(args).feed.sources["ann"].quota

    def run(self, user_id: int, now_s: float) -> tuple[Any, list[Candidate], bool]:
        known = self.catalog.has_user(user_id)
        vec = self.retrieval.user_vector(self.catalog.user_frame(user_id)) if known else None
        q = SourceQuery(user_id=user_id, known_user=known, user_vec=vec, now_s=now_s)
        return vec, SOURCES["ann"](self.catalog, self.retrieval).generate(q, self.quota), known


@serve.deployment(ray_actor_options=_CPU)
class Source:
    def __init__(self, args: dict[str, Any], name: str) -> None:
        _, catalog, retrieval = _parts(args)
        self.source = SOURCES[name](catalog, retrieval)
        self.quota = parse_app_args(args).feed.sources[name].quota

    def run(self, q: SourceQuery) -> list[Candidate]:
        if not q.known_user and not self.source.cold_start:
            return []
        return self.source.generate(q, self.quota)


@serve.deployment(ray_actor_options=_CPU)
class Filter:
    def __init__(self, args: dict[str, Any]) -> None:
        _, self.catalog, self.retrieval = _parts(args)
        self.feed = parse_app_args(args).feed
        self.filters = build_filters(self.feed.filters.enabled)

    def run(self, user_id: int, per_source: dict[str, list[Candidate]],
            exclude: frozenset[int], user_vec: Any) -> tuple[list[Merged], Any]:
        merged = merge_candidates(per_source, quotas={n: s.quota for n, s in
                                                      self.feed.sources.items()},
                                  limit=self.feed.max_candidates)
        infos = self.catalog.infos(np.asarray([m.item_id for m in merged], dtype=np.int64))
        ctx = FilterContext(exclude_ids=exclude,
                            seen_ids=frozenset(self.catalog.seen(user_id).tolist()),
                            blocked_authors=frozenset(
                                self.catalog.reported_authors(user_id).tolist()),
                            languages=None, review_policy=self.feed.filters.review_policy)
        kept, _ = apply_filters(merged, infos, ctx, self.filters)
        ids = np.asarray([m.item_id for m in kept], dtype=np.int64)
        vecs = self.retrieval.item_vectors(ids)
        rscore = vecs @ user_vec if user_vec is not None else np.zeros(len(kept), np.float32)
        kept = [Merged(m.item_id, m.sources, m.source_scores, float(rscore[i]))
                for i, m in enumerate(kept)]
        return kept, vecs


@serve.deployment(ray_actor_options=_CPU)
class Ranker:
    """The TorchScript ranker, called once per request (no batching)."""

    def __init__(self, args: dict[str, Any]) -> None:
        from serve.loader import load_calibration, local_ranker

        a = parse_app_args(args)
        b, catalog, retrieval = _parts(args)
        self.ranker = local_ranker(a)
        self.calibration = load_calibration(b)
        self.pipeline = FeedPipeline(catalog=catalog, retrieval=retrieval, ranker=self.ranker,
                                     sources={}, settings=a.feed)

    def run(self, user_id: int, items: list[Merged], now_s: float) -> list[Scored]:
        if not items:
            return []
        user = self.pipeline.catalog.user_frame(user_id)
        rscore = np.asarray([m.retrieval_score for m in items], dtype=np.float32)
        inputs = self.pipeline.ranker_inputs(user_id, user, items, rscore, now_s)
        probs = task_probs(self.ranker.logits_sync(inputs), self.calibration)
        final = probs @ self.pipeline._weights
        return [Scored(m, float(final[i])) for i, m in enumerate(items)]


@serve.deployment(ray_actor_options=_CPU)
class Rerank:
    def __init__(self, args: dict[str, Any]) -> None:
        _, self.catalog, _r = _parts(args)
        r = parse_app_args(args).feed.rerank
        self.params = RerankParams(**r.model_dump())

    def run(self, scored: list[Scored], vecs: Any, limit: int, now_s: float,
            request_id: str) -> list[dict[str, Any]]:
        infos = self.catalog.infos(np.asarray([s.item.item_id for s in scored], np.int64))
        emb = {s.item.item_id: vecs[i] for i, s in enumerate(scored)}
        items = rerank(scored, infos, emb, limit=limit, now_s=now_s,
                       rng=_rng_for(request_id), params=self.params)
        return [{"item_id": i.item_id, "rank": i.rank, "score": i.score,
                 "sources": list(i.sources)} for i in items]


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
        vec, ann, known = await self.h["retrieval"].run.remote(q.user_id, now)
        sq = SourceQuery(user_id=q.user_id, known_user=known, user_vec=vec, now_s=now)
        per_source = {"ann": ann,
                      "social": await self.h["social"].run.remote(sq),
                      "trending": await self.h["trending"].run.remote(sq),
                      "fresh": await self.h["fresh"].run.remote(sq)}
        kept, vecs = await self.h["filter"].run.remote(q.user_id, per_source, q.exclude_ids,
                                                       vec)
        scored = await self.h["ranker"].run.remote(q.user_id, kept, now)
        items = await self.h["rerank"].run.remote(scored, vecs, q.limit, now, q.request_id)
        return JSONResponse({"user_id": q.user_id, "items": items, "degraded": []})


def build_naive_app(args: dict[str, Any]) -> Application:
    a = parse_app_args(args)
    import json
    from pathlib import Path

    from funnel.contracts.bundle import verify_bundle

    b = verify_bundle(a.bundle)
    as_of = float(json.loads(Path(b.file("catalog/catalog.json")).read_text())["as_of_s"])
    return NaiveIngress.bind(  # type: ignore[attr-defined]
        Retrieval.bind(args),  # type: ignore[attr-defined]
        Source.options(name="Social").bind(args, "social"),  # type: ignore[attr-defined]
        Source.options(name="Trending").bind(args, "trending"),  # type: ignore[attr-defined]
        Source.options(name="Fresh").bind(args, "fresh"),  # type: ignore[attr-defined]
        Filter.bind(args), Ranker.bind(args), Rerank.bind(args),  # type: ignore[attr-defined]
        as_of)
