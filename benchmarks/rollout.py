"""Rollout benchmark: what shadows cost the primary's latency.

One `funnel serve` (local Ray, Triton, the Serve app behind Ray Serve's proxy) and one
open-loop load generator in this process. The same offered load runs under up to four
rollout configs of the ranker stage, switched through the admin route without restarting
anything:

- baseline: the primary alone, no shadow traffic;
- slow_shadow: a ranker shadow on every request that sleeps 200 ms before its model call;
- failing_shadow: a ranker shadow on every request whose every call fails;
- real_shadow: a ranker shadow on every request that does its full work (a second bundle
  version on its own Triton model): the honest CPU cost of shadowing on this machine.

Every config declares the same shadows, and differs only in which one gets traffic
(`sample_rate` 1; the others, and all of them in the baseline, 0). So a switch loads,
verifies and unloads nothing, and no Triton model load or unload lands inside a
measurement.

The run is a sequence of short blocks (`block_s`, 10 s by default): one cycle is one block
per config, in an order rotated from cycle to cycle, so that each config follows each
other one equally often. The first `settle_s` of a block are not counted: the new config
reaches every replica (reports every 0.5 s) and the previous config's queued shadow jobs (at
most the bounded queue) finish. Short interleaved blocks matter on a small machine: its
own speed drifts over minutes (per-30 s-round p99s of one config spread by +-25 %), and
configs measured seconds apart see the same drift.

Arrivals are a seeded Poisson process by default (`--arrivals constant` for a fixed
interval; then a shadow delayed by a multiple of the interval lands on the phase of a later
request every time, a resonance real traffic does not have). Every config of a cycle
replays the same arrival times.

Before the measured cycles, one warm-up cycle runs every config once, not counted (reported
as `warmup`): a shadow's first minute (the scorer's first calls, the shadow model's first
real batches) is not its steady state.

Reported per config: p50 / p99 over every counted request pooled (a p99 of one block rests
on its slowest request), where the slowest 1 % spent their time (`tail`: the server's own
time or outside it), client errors (every request, settling and warm-up ones included), and
the p99
ratio to the baseline with a 95 % interval from a paired bootstrap over cycles
(`p99_ratio_interval`). The shadow variants are a copy of the bundle under a new version,
so their agreement with the primary is known (1.0). The comparisons run in the ShadowScorer
deployment (`--no-shadow-scorer`: in the ingress replica, as before it existed).

    funnel bench rollout --bundle artifacts/latest --rate 10 --block-s 10 --cycles 40
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.feed import _http_call, open_loop
from benchmarks.stack import cpu_by_role, cpu_seconds, local_stack
from funnel.contracts.bundle import write_manifest
from serve.config import RolloutSettings

Say = Callable[[str], None]


def _copy_version(src: Path, root: Path, version: str) -> str:
    dst = root / version
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version"] = version
    for key in ("files", "format_version"):
        m.pop(key, None)
    write_manifest(dst, m)
    return version


SHADOWS = {"slow_shadow": ("slow", {"delay_ms": 200}),
           "failing_shadow": ("failing", {"error_rate": 1.0}),
           "real_shadow": ("real", {})}


def configs(primary: str, shadow_version: str, only: list[str] | None = None
            ) -> dict[str, dict[str, Any]]:
    """The rollout config of each measured config: the same shadows declared in all (those of
    the measured shadow configs), each config giving traffic to at most one of them."""
    measured = [c for c in SHADOWS if not only or c in only]

    def cfg(active: str | None) -> dict[str, Any]:
        return {"stages": {"ranker": {
            "variants": [{"name": "control", "bundle_version": primary, "weight": 100}],
            "shadows": [{"name": SHADOWS[c][0], "bundle_version": shadow_version,
                         "sample_rate": 1.0 if c == active else 0.0,
                         **({"fault": SHADOWS[c][1]} if SHADOWS[c][1] else {})}
                        for c in measured]}}}

    return {"baseline": cfg(None), **{c: cfg(c) for c in measured}}


def cycle_order(names: list[str], cycle: int) -> list[str]:
    """Cycle `cycle`'s block order: `names` rotated by `cycle`, so over len(names) cycles each
    config runs in every position once."""
    k = cycle % len(names)
    return names[k:] + names[:k]


def counted(latencies_ms: list[float], sent_s: list[float], settle_s: float) -> np.ndarray:
    """The latencies of the requests sent after the block's first `settle_s` seconds."""
    lat = np.asarray(latencies_ms, dtype=float)
    return lat[np.asarray(sent_s, dtype=float) >= settle_s]


def tail_breakdown(latencies_ms: np.ndarray, handler_ms: np.ndarray, q: float = 99.0
                   ) -> dict[str, Any]:
    """Where the slowest requests' time went: over the requests at or above the `q`-th
    percentile, the median client latency, the median of the server's own time for them
    (the ingress handler, from Server-Timing) and of the rest (the proxy, the network, the
    load generator's event loop)."""
    lat = np.asarray(latencies_ms, dtype=float)
    handler = np.asarray(handler_ms, dtype=float)
    if lat.shape != handler.shape or not len(lat):
        raise ValueError("need as many handler times as latencies, and at least one")
    slow = lat >= np.percentile(lat, q, method="lower")
    h = handler[slow]
    known = ~np.isnan(h)
    out: dict[str, Any] = {"requests": int(slow.sum()),
                           "latency_ms": round(float(np.median(lat[slow])), 2)}
    if known.any():
        out["handler_ms"] = round(float(np.median(h[known])), 2)
        out["outside_handler_ms"] = round(float(np.median(lat[slow][known] - h[known])), 2)
    return out


def p99_ratio_interval(base_rounds: list[np.ndarray], other_rounds: list[np.ndarray], *,
                       boots: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): the pooled p99 of `other` over the baseline's, and a 95 % interval
    from a paired bootstrap over rounds (the bench's cycles). Round r of both configs ran
    within one cycle, so a slow stretch of the machine lands on both; resampling whole rounds
    keeps that pairing and the round-to-round noise the interval has to show."""
    if len(base_rounds) != len(other_rounds) or not base_rounds:
        raise ValueError("need the same number (>= 1) of rounds for both configs")
    rng = np.random.default_rng(seed)
    n = len(base_rounds)

    def ratio(idx: np.ndarray | range) -> float:
        b = np.concatenate([base_rounds[i] for i in idx])
        o = np.concatenate([other_rounds[i] for i in idx])
        return float(np.percentile(o, 99) / np.percentile(b, 99))

    boot = [ratio(rng.integers(0, n, n)) for _ in range(boots)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return ratio(range(n)), float(low), float(high)


def run(*, bundle: str, rate: float, block_s: float, cycles: int, settle_s: float = 2.0,
        limit: int = 20, shadow_queue_size: int | None = None, only: list[str] | None = None,
        arrivals: str = "poisson", shadow_scorer: bool = True, say: Say = print
        ) -> dict[str, Any]:
    import httpx
    import psutil

    if settle_s < 0 or block_s <= 0 or cycles < 1:
        raise ValueError("need block_s > 0, settle_s >= 0 and cycles >= 1")

    def prepare(root: Path, version: str) -> None:
        _copy_version(root / version, root, f"{version}-shadow")

    def tweak(a: dict[str, Any]) -> None:
        a["rollout"]["allow_fault_injection"] = True
        a["rollout"]["shadow_scorer"] = shadow_scorer
        if shadow_queue_size is not None:
            a["rollout"]["shadow_queue_size"] = shadow_queue_size

    with local_stack(bundle, prefix="rollout", say=say, prepare=prepare, tweak=tweak,
                     grpc=False) as stack:
        b_version, root, args, base = stack.version, stack.root, stack.args, stack.url
        shadow_version = f"{b_version}-shadow"
        say(f"shadow version {shadow_version}")
        headers = {"authorization": f"Bearer {stack.token}"}
        from serve.catalog import Catalog

        cat = Catalog(root / b_version / "catalog")
        users = np.random.default_rng(0).choice(cat.user_ids, size=min(2000, len(
            cat.user_ids)), replace=False)
        plans = configs(b_version, shadow_version, only)
        names = list(plans)
        blocks: dict[str, list[dict[str, Any]]] = {name: [] for name in plans}
        per_cycle: dict[str, list[np.ndarray]] = {name: [] for name in plans}
        handler_ms: dict[str, list[np.ndarray]] = {name: [] for name in plans}
        warmup: dict[str, dict[str, Any]] = {}
        errors = dict.fromkeys(plans, 0)
        sent = dict.fromkeys(plans, 0)
        cpu_requests = dict.fromkeys(plans, 0)  # requests of the measured blocks
        cpu: dict[str, dict[str, float]] = {name: {} for name in plans}

        def cpu_now() -> dict[int, tuple[str, float]]:
            own = psutil.Process().cpu_times()
            return {**cpu_seconds(stack.pid),
                    -1: ("load generator (this process)", own.user + own.system)}

        async def measure() -> dict[str, Any]:
            call, client = _http_call(f"{base}/v1/feed", limit)
            admin = httpx.AsyncClient(headers=headers, timeout=300)

            async def apply(name: str) -> None:
                resp = await admin.put(f"{base}/v1/admin/rollout", json=plans[name])
                resp.raise_for_status()

            async def block(name: str, c: int) -> tuple[dict[str, Any], np.ndarray,
                                                         np.ndarray]:
                await apply(name)
                p = await open_loop(call, users, rate=rate, duration_s=settle_s + block_s,
                                    keep_latencies=True,
                                    poisson_seed=c if arrivals == "poisson" else None)
                sent_s = p.pop("sent_s")
                lat = counted(p.pop("latencies_ms"), sent_s, settle_s)
                return p, lat, counted(p.pop("handler_ms"), sent_s, settle_s)

            try:
                # the first apply loads the shadow version (checksums, a Triton model); the
                # later ones only change sample rates
                await apply("baseline")
                await asyncio.sleep(2.0)
                for i in range(200):  # warm-up
                    await call(int(users[i % len(users)]))
                # a warm-up cycle, not counted: each shadow's first minute (the scorer's first
                # calls, the shadow model's first real batches) is not its steady state; kept
                # in the result as `warmup`
                for name in names:
                    p, lat, _ = await block(name, -1)
                    warmup[name] = {"p50_ms": round(float(np.percentile(lat, 50)), 2),
                                    "p99_ms": round(float(np.percentile(lat, 99)), 2),
                                    "client_errors": round(p["error_rate"] * p["requests"])}
                    errors[name] += warmup[name]["client_errors"]
                    sent[name] += p["requests"]
                say("warm-up cycle: " + ", ".join(
                    f"{n} p99 {w['p99_ms']:.1f} ms" for n, w in warmup.items()))
                t_start = time.monotonic()
                for c in range(cycles):
                    for name in cycle_order(names, c):
                        before = await asyncio.to_thread(cpu_now)
                        p, lat, handler = await block(name, c)
                        after = await asyncio.to_thread(cpu_now)
                        for role, t in cpu_by_role(before, after).items():
                            cpu[name][role] = cpu[name].get(role, 0.0) + t
                        per_cycle[name].append(lat)
                        handler_ms[name].append(handler)
                        errors[name] += round(p["error_rate"] * p["requests"])
                        sent[name] += p["requests"]
                        cpu_requests[name] += p["requests"]
                        blocks[name].append({
                            "cycle": c, "counted": len(lat),
                            "p50_ms": round(float(np.percentile(lat, 50)), 2),
                            "p99_ms": round(float(np.percentile(lat, 99)), 2),
                            "server_stages_p50_ms": p["server_stages_p50_ms"]})
                    left = (time.monotonic() - t_start) / (c + 1) * (cycles - c - 1)
                    say(f"cycle {c + 1}/{cycles}: " + ", ".join(
                        f"{n} p99 {blocks[n][-1]['p99_ms']:.1f} ms" for n in names)
                        + f"; about {left / 60:.0f} min left")
                st = (await admin.get(f"{base}/v1/admin/rollout")).json()
                (await admin.put(f"{base}/v1/admin/rollout", json={})).raise_for_status()
                return st
            finally:
                await client.aclose()
                await admin.aclose()

        status = asyncio.run(measure())
        results: dict[str, Any] = {}
        for name in names:
            lat = np.concatenate(per_cycle[name])
            results[name] = {  # percentiles over every counted request pooled
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "client_errors": errors[name], "requests": sent[name],
                "counted_requests": len(lat),
                # the slowest 1 %: in the server's own time, or outside it?
                "tail": tail_breakdown(lat, np.concatenate(handler_ms[name])),
                # CPU per request sent, by process role, over whole measured blocks (settling
                # too; not the warm-up cycle)
                "cpu_ms_per_request": {
                    role: round(t * 1000 / cpu_requests[name], 3) for role, t in sorted(
                        cpu[name].items(), key=lambda kv: -kv[1]) if t > 0},
                "warmup": warmup[name], "blocks": blocks[name]}
            if name != "baseline":
                ratio, low, high = p99_ratio_interval(per_cycle["baseline"], per_cycle[name])
                variant = status["stages"]["ranker"]["variants"][SHADOWS[name][0]]
                results[name].update(
                    p99_vs_baseline=round(ratio, 3),
                    p99_vs_baseline_95ci=[round(low, 3), round(high, 3)],
                    shadow={"totals": variant["totals"], "window": {
                        k: variant["window"][k] for k in (
                            "requests", "errors", "p99_ms", "overlap_at_k",
                            "rank_correlation")}})
                say(f"{name}: p99 {ratio:.3f}x the baseline's (95 % interval "
                    f"{low:.3f}-{high:.3f}), {errors[name]} client errors")
        return {"date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "bundle": b_version,
                "items": stack.manifest["dataset"]["posts"], "offered_rps": rate,
                "block_s": block_s, "settle_s": settle_s, "cycles": cycles, "limit": limit,
                "shadow_queue_size": RolloutSettings(**args["rollout"]).shadow_queue_size,
                "arrivals": arrivals, "shadow_scorer": shadow_scorer, "configs": results}
