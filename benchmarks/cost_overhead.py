"""`funnel bench cost-overhead`: what measuring cost costs a feed.

The feed pipeline in this process (the bundle's ranker in-process), each request a task on
an event loop, in interleaved blocks: on one loop every task is metered and each request
carries a ledger that is recorded to the cost counters (as in the ingress replica), on the
other neither. CPU per request is this process's CPU over a block (the pooled sources'
threads included) divided by its requests; the ratio metered ÷ plain is taken per pair of
adjacent blocks, with a 95 % interval from resampling the pairs.
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

Say = Callable[[str], None]


def run(*, bundle: str, blocks: int = 12, requests: int = 150, limit: int = 20,
        say: Say = print) -> dict[str, Any]:
    # the counters as in a replica: prometheus_client's multiprocess files
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="funnel-cost-"))
    from serve import cost
    from serve.config import parse_app_args
    from serve.loader import load_pipeline, local_ranker
    from serve.pipeline import FeedQuery

    args = parse_app_args({"bundle": bundle})
    pipeline, _ = load_pipeline(args, ranker=local_ranker(args))
    users = [int(u) for u in pipeline.catalog.user_ids[:1000]]
    k = 0

    async def one(metered: bool) -> None:
        nonlocal k
        k += 1
        q = FeedQuery(user_id=users[k % len(users)], limit=limit, request_id=f"o{k}")
        if metered:
            with cost.request("feed"):
                await pipeline.run(q)
        else:
            await pipeline.run(q)

    async def block(metered: bool) -> float:
        loop = asyncio.get_running_loop()
        t0 = time.process_time()
        for _ in range(requests):
            await loop.create_task(one(metered))  # a task per request, as in a replica
        return (time.process_time() - t0) * 1000 / requests

    metered_loop, plain_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    metered_loop.run_until_complete(_meter(metered_loop))
    for lp, m in ((metered_loop, True), (plain_loop, False)):  # warm-up
        lp.run_until_complete(block(m))
    on: list[float] = []
    off: list[float] = []
    for b in range(blocks):
        order = (True, False) if b % 2 == 0 else (False, True)
        for m in order:
            (on if m else off).append((metered_loop if m else plain_loop).run_until_complete(
                block(m)))
        say(f"block {b + 1}/{blocks}: metered {on[-1]:.3f} ms, plain {off[-1]:.3f} ms")
    pending = asyncio.all_tasks(metered_loop)  # the loop-share sampler
    for t in pending:
        t.cancel()
    metered_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    metered_loop.close()
    plain_loop.close()
    ratios = np.asarray(on) / np.asarray(off)
    boot = np.random.default_rng(0).integers(0, blocks, (4000, blocks))
    means = ratios[boot].mean(1)
    result = {
        "date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
        "command": "funnel bench cost-overhead", "blocks": blocks,
        "requests_per_block": requests,
        "cpu_ms_per_feed_metered": round(float(np.median(on)), 3),
        "cpu_ms_per_feed_plain": round(float(np.median(off)), 3),
        "ratio": round(float(ratios.mean()), 4),
        "ratio_95ci": [round(float(np.percentile(means, 2.5)), 4),
                       round(float(np.percentile(means, 97.5)), 4)]}
    say(f"metered / plain CPU per feed: {result['ratio']} (95 % interval "
        f"{result['ratio_95ci']})")
    return result


async def _meter(loop: asyncio.AbstractEventLoop) -> None:
    from serve import cost

    cost.meter_loop(loop)
