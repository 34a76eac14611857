"""`funnel bench cost`: does the cost attribution add up (docs/cost.md)?

One local `funnel serve` of the bundle; a mix of feed and moderation requests. First the
maximum rate the stack answers (a closed loop of `concurrency` clients for `probe_s`), then
an open loop at `load_share` of it for `duration_s`. Around that window the benchmark
scrapes the app's /metrics (the cost counters: attributed core-seconds, and the stack's
processes' CPU as the app's own collector sampled it) and reads the CPU of every process
below `funnel serve` itself (psutil over the process tree: not the collector's code path).

- `accounted_over_measured`: (attributed + overhead, as `funnel cost report` computes them
  from the counters) / the benchmark's own reading. Overhead is the collector's total minus
  the attributed part, so this checks that the collector sees every process of the stack
  and that counters and readings cover the same window;
- `attributed_share`: attributed / the benchmark's reading: how much of the stack's CPU the
  per-request measurement explains.
"""

from __future__ import annotations

import asyncio
import itertools
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from benchmarks.feed import _http_call, open_loop
from benchmarks.stack import cpu_by_role, cpu_seconds, local_stack
from monitoring.cost import Prices, build_report, format_report
from monitoring.cost_sources import inputs_from_scrapes, scrape

Say = Callable[[str], None]
WORDS = ("garden", "recipe", "bicycle", "river", "concert", "library", "harbour", "mountain",
         "coffee", "window", "market", "photo", "weekend", "train", "museum", "forest")


def post_text(rng: random.Random) -> str:
    """A benign synthetic post (never real user text)."""
    return "Our " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))) + " today."


def run(*, bundle: str, duration_s: float = 120.0, load_share: float = 0.7,
        probe_s: float = 20.0, concurrency: int = 8, moderation_share: float = 0.2,
        ingress: str = "proxy", limit: int = 20, parts: int = 6, say: Say = print
        ) -> dict[str, Any]:
    import httpx

    if not 0 < load_share <= 1 or not 0 <= moderation_share <= 1 or duration_s <= 0 \
            or parts < 1:
        raise ValueError("need 0 < load_share <= 1, 0 <= moderation_share <= 1, "
                         "duration_s > 0, parts >= 1")

    def tweak(a: dict[str, Any]) -> None:
        # sample the processes and Triton's statistics every second: the counters then lag
        # the window's edges by under a second (the default is 5 s)
        a.setdefault("cost", {}).update(process_poll_s=1.0, triton_poll_s=1.0)

    with local_stack(bundle, prefix="cost", say=say, tweak=tweak, grpc=False,
                     ingress=ingress) as stack:
        from serve.catalog import Catalog

        cat = Catalog(stack.root / stack.version / "catalog")
        users = np.random.default_rng(0).choice(cat.user_ids, size=min(2000, len(
            cat.user_ids)), replace=False)
        feed_call, feed_client = _http_call(f"{stack.url}/v1/feed", limit)
        mod_client = httpx.AsyncClient(timeout=10)
        rng = random.Random(0)
        counts = {"feed": 0, "moderate": 0}

        async def call(user_id: int) -> tuple[bool, dict[str, float]]:
            if rng.random() < moderation_share:
                counts["moderate"] += 1
                r = await mod_client.post(f"{stack.url}/v1/moderate", json={
                    "content_id": f"bench-{rng.getrandbits(48):x}", "text": post_text(rng)})
                return r.status_code == 200, {}
            counts["feed"] += 1
            return await feed_call(user_id)

        async def closed_loop(seconds: float) -> float:
            done = 0
            stop = time.monotonic() + seconds

            async def client(k: int) -> None:
                nonlocal done
                i = k
                while time.monotonic() < stop:
                    ok, _ = await call(int(users[i % len(users)]))
                    done += ok
                    i += concurrency
            t0 = time.monotonic()
            await asyncio.gather(*(client(k) for k in range(concurrency)))
            return done / (time.monotonic() - t0)

        async def measure() -> dict[str, Any]:
            try:
                for i in range(100):  # warm-up: models loaded, first batches run
                    await call(int(users[i % len(users)]))
                say(f"probing the maximum rate: {concurrency} clients for {probe_s:.0f} s")
                max_rps = await closed_loop(probe_s)
                rate = max_rps * load_share
                say(f"maximum {max_rps:.1f} req/s; measuring at {rate:.1f} req/s "
                    f"({load_share:.0%}) for {duration_s:.0f} s")
                await asyncio.sleep(3.0)  # the probe's queues drain
                for k in counts:
                    counts[k] = 0

                async def snapshot() -> tuple[float, str, dict[int, tuple[str, float]]]:
                    cpu = await asyncio.to_thread(cpu_seconds, stack.pid)
                    text = await asyncio.to_thread(scrape, f"{stack.url}/metrics", 30.0)
                    return time.monotonic(), text, cpu

                # the window's edges, and `parts` equal parts of it: the spread of the parts
                # says how settled the figures are
                marks = [await snapshot()]

                async def mark_parts() -> None:
                    for k in range(1, parts):
                        await asyncio.sleep(marks[0][0] + k * duration_s / parts
                                            - time.monotonic())
                        marks.append(await snapshot())

                marker = asyncio.create_task(mark_parts())
                p = await open_loop(call, users, rate=rate, duration_s=duration_s,
                                    poisson_seed=1)
                await marker
                marks.append(await snapshot())
                return {"max_rps": max_rps, "rate": rate, "load": p, "marks": marks}
            finally:
                await feed_client.aclose()
                await mod_client.aclose()

        m = asyncio.run(measure())
    marks = m["marks"]
    first, last = marks[0], marks[-1]
    inputs = inputs_from_scrapes(first[1], last[1], last[0] - first[0])
    report = build_report(inputs, Prices())
    m["cpu"] = cpu_by_role(first[2], last[2])
    m["window_s"] = last[0] - first[0]
    measured = sum(v for v in m["cpu"].values() if v > 0)
    accounted = report.attributed_core_s + report.overhead_core_s
    # each part: (attributed, accounted, measured) core-seconds
    per_part = []
    for a, b in itertools.pairwise(marks):
        r = build_report(inputs_from_scrapes(a[1], b[1], b[0] - a[0]), Prices())
        meas = sum(v for v in cpu_by_role(a[2], b[2]).values() if v > 0)
        per_part.append((r.attributed_core_s, r.attributed_core_s + r.overhead_core_s, meas))
    parts_arr = np.asarray(per_part)
    boot = np.random.default_rng(0).integers(0, len(per_part), (2000, len(per_part)))
    share_boot = parts_arr[boot, 0].sum(1) / parts_arr[boot, 2].sum(1)
    say(format_report(report))
    result = {
        "date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
        "command": "", "bundle_version": stack.version, "ingress": ingress,
        "max_rps": round(m["max_rps"], 1), "load_share": load_share,
        "offered_rps": round(m["rate"], 1), "achieved_rps": m["load"]["achieved_rps"],
        "p99_ms": m["load"]["p99_ms"], "error_rate": m["load"]["error_rate"],
        "requests": dict(counts), "window_s": round(m["window_s"], 1),
        "measured_cpu_s": round(measured, 2),
        "measured_by_process": {k: round(v, 2) for k, v in sorted(
            m["cpu"].items(), key=lambda kv: -kv[1]) if v > 0.005},
        "collector_cpu_s": round(report.total_core_s, 2),
        "collector_by_component": {k: round(v, 2) for k, v in sorted(
            report.by_component.items(), key=lambda kv: -kv[1]) if v > 0.005},
        "attributed_cpu_s": round(report.attributed_core_s, 2),
        "overhead_cpu_s": round(report.overhead_core_s, 2),
        "accounted_over_measured": round(accounted / measured, 4) if measured else None,
        "attributed_share": round(report.attributed_core_s / measured, 4) if measured
        else None,
        # the window in equal parts: each part's figures, and a 95 % interval of the share
        # by resampling the parts
        "parts": [{"attributed_share": round(a / m_, 4), "accounted_over_measured":
                   round(acc / m_, 4)} for a, acc, m_ in per_part if m_ > 0],
        "attributed_share_95ci": [round(float(np.percentile(share_boot, 2.5)), 4),
                                  round(float(np.percentile(share_boot, 97.5)), 4)],
        "routes": report.routes,
        "stages": [{"route": r.route, "stage": r.stage, "model": r.model,
                    "variant": r.variant, "core_s": round(r.core_s, 3),
                    "usd_per_1k": r.usd_per_1k} for r in report.rows],
    }
    say(f"accounted (attributed + overhead) / measured: "
        f"{result['accounted_over_measured']}; attributed share: {result['attributed_share']}"
        f" (95 % interval over {len(per_part)} parts: {result['attributed_share_95ci']})")
    return result

