"""How a comparison runs, wherever it runs (an ingress replica's queues or the
`ShadowScorer`): the versions it names are loaded, the other ranker scores the same
candidates (or the other retrieval searches for the same user), and the two lists' overlap,
rank-biased overlap, score and latency deltas go to the runtime's tally."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from serve.rollout.agreement import overlap_at_k, rbo
from serve.rollout.comparisons import Comparison
from serve.rollout.stats import Tally

if TYPE_CHECKING:
    from serve.rollout.runtime import RolloutRuntime


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def ranking(ids: np.ndarray, scores: np.ndarray, depth: int) -> list[int]:
    """The top `depth` ids by score (ties in candidate order)."""
    order = np.argsort(-scores, kind="stable")[:depth]
    return [int(x) for x in ids[order]]


def top_mean(scores: np.ndarray, k: int) -> float:
    """Mean of the `k` highest scores: what a ranker put at the top of its list."""
    if not len(scores):
        return 0.0
    k = min(k, len(scores))
    return float(np.partition(scores, len(scores) - k)[-k:].mean())


async def _loaded(rt: RolloutRuntime, c: Comparison) -> bool:
    """Whether the versions `c` names are loaded here. A comparison from a newer routing
    table than this runtime's (the ShadowScorer hears of a change at its next report)
    first fetches that table, which loads them; one whose versions a newer table has
    retired is stale: False, and nothing is loaded for it."""
    keys = [a.key for a in (c.served, c.shadow) if a is not None]
    if not all(rt.variants.has(c.stage, k) for k in keys) and \
            c.revision > rt.router.revision:
        await rt.report_once()
    return all(rt.variants.has(c.stage, k) for k in keys)


async def run_comparison(rt: RolloutRuntime, c: Comparison) -> None:
    """Run one comparison with `rt`'s versions and record it in `rt`'s tally."""
    if not await _loaded(rt, c):
        rt.tally.dropped(c.stage, c.variant)
        return
    if c.stage == "ranker":
        await _compare_ranker(rt, c)
    else:
        await _compare_retrieval(rt, c)


async def _compare_ranker(rt: RolloutRuntime, c: Comparison) -> None:
    """The two rankers' orderings of the same candidates, by their final scores: the
    re-rank after them (diversity, exploration) is the same code for both, so it is left
    out; that keeps a comparison to one model call and a sort."""
    shadow = c.shadow
    other = rt.variants.ranker(shadow)  # None: the primary
    cache = {id(rt.variants.ranker(c.served).features): c.inputs} if c.inputs else {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = (await rt.pipeline.model_scores(c.user_id, None, c.kept_ids, c.rscore,
                                            c.now_s, other, timings, cache)
           if len(c.kept_ids) else (np.zeros(0, np.float32), None))
    call_ms = timings.get("ranker_call", 0.0)
    limit = c.limit
    if shadow is not None:
        rt.tally.served("ranker", shadow.variant, latency_ms=call_ms or (
            time.perf_counter() - t0) * 1000, error=out is None,
            score=None if out is None else top_mean(out[0], limit))
    if out is None:
        rt.tally.compare_failed("ranker", c.variant)
        return
    other_scores = out[0]
    depth = max(max(c.ks), limit)
    mine = ranking(c.kept_ids, c.scores, depth)
    theirs = ranking(c.kept_ids, other_scores, depth)
    primary, variant = (mine, theirs) if shadow is not None else (theirs, mine)
    p_s, v_s = (c.scores, other_scores) if shadow is not None else (
        other_scores, c.scores)
    p_ms, v_ms = (c.served_ms, call_ms) if shadow is not None else (call_ms, c.served_ms)
    record(rt.tally, "ranker", c.variant, primary, variant, list(c.ks),
                 score_delta=top_mean(v_s, limit) - top_mean(p_s, limit),
                 latency_delta=v_ms - p_ms)


async def _compare_retrieval(rt: RolloutRuntime, c: Comparison) -> None:
    shadow = c.shadow
    depth = max(max(c.ks), 10)
    served_r = rt.variants.retrieval(c.served)
    other_r = rt.variants.retrieval(shadow)
    user = rt.pipeline.catalog.user(c.user_id)

    def search(r: Any) -> tuple[list[int], list[float], float]:
        t = time.perf_counter()
        ids, scores = r.search(r.user_vector(user), depth)
        return ids.tolist(), scores.tolist(), (time.perf_counter() - t) * 1000

    try:
        await rt.gate.wait()
        o_ids, o_scores, o_ms = await asyncio.to_thread(search, other_r)
    except Exception:
        if shadow is not None:
            rt.tally.served("retrieval", shadow.variant, latency_ms=None, error=True)
        raise
    await rt.gate.wait()
    s_ids, s_scores, s_ms = await asyncio.to_thread(search, served_r)
    if shadow is not None:
        rt.tally.served("retrieval", shadow.variant, latency_ms=o_ms, error=False,
                          score=mean(o_scores[:10]))
        primary, p_scores, p_ms, variant, v_scores, v_ms = (
            s_ids, s_scores, s_ms, o_ids, o_scores, o_ms)
    else:
        primary, p_scores, p_ms, variant, v_scores, v_ms = (
            o_ids, o_scores, o_ms, s_ids, s_scores, s_ms)
    record(rt.tally, "retrieval", c.variant, primary, variant, list(c.ks),
                 score_delta=mean(v_scores) - mean(p_scores),
                 latency_delta=v_ms - p_ms)


def record(tally: Tally, stage: str, variant: str, primary: Sequence[Hashable],
           other: Sequence[Hashable], ks: list[int], *, score_delta: float,
           latency_delta: float) -> None:
    """Count one comparison of `other`'s list with the primary's in `tally`."""
    tally.compared(stage, variant, overlaps={k: overlap_at_k(primary, other, k) for k in ks},
                   rbo=rbo(primary, other), score_delta=score_delta,
                   latency_delta_ms=latency_delta)
