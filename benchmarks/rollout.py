"""Rollout benchmark: what shadows cost the primary's latency.

One `funnel serve` (local Ray, Triton, the Serve app behind Ray Serve's proxy) and one
open-loop load generator in this process. The same offered load runs under four rollout
configs, switched through the admin route without restarting anything, in interleaved
rounds (baseline, slow, failing, real, baseline, slow, ...) so that drift on the machine
spreads over all of them:

- baseline: no rollout;
- slow_shadow: a ranker shadow on every request that sleeps 200 ms before its model call;
- failing_shadow: a ranker shadow on every request whose every call fails;
- real_shadow: a ranker shadow on every request that does its full work (a second bundle
  version on its own Triton model): the honest CPU cost of shadowing on this machine.

Arrivals are a seeded Poisson process by default (`--arrivals constant` for a fixed
interval; then a shadow delayed by a multiple of the interval lands on the phase of a later
request every time, a resonance real traffic does not have). Each round replays the same
arrival times for every config.

Reported per config: p50 / p99 over every round's requests pooled (a p99 of one short
round rests on its two slowest requests), client errors, and the p99 ratio to the
baseline with a 95 % interval from resampling whole rounds (`p99_ratio_interval`). The
shadow variant is a copy of the bundle under a new version, so its
agreement with the primary is known (1.0).

    funnel bench rollout --bundle artifacts/latest --rate 10 --duration-s 30 --rounds 5
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
from benchmarks.stack import local_stack
from training.bundle import write_manifest

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


def configs(primary: str, shadow_version: str) -> dict[str, dict[str, Any]]:
    def shadow(**fault: float) -> dict[str, Any]:
        return {"stages": {"ranker": {
            "variants": [{"name": "control", "bundle_version": primary, "weight": 100}],
            "shadows": [{"name": "shadow", "bundle_version": shadow_version,
                         "sample_rate": 1.0, **({"fault": fault} if fault else {})}]}}}

    return {"baseline": {}, "slow_shadow": shadow(delay_ms=200),
            "failing_shadow": shadow(error_rate=1.0), "real_shadow": shadow()}


def p99_ratio_interval(base_rounds: list[np.ndarray], other_rounds: list[np.ndarray], *,
                       boots: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): the pooled p99 of `other` over the baseline's, and a 95 % interval
    from a paired bootstrap over rounds. Round r of both configs ran back to back, so a slow
    stretch of the machine lands on both; resampling whole rounds keeps that pairing and the
    round-to-round noise the interval has to show."""
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


def run(*, bundle: str, rate: float, duration_s: float, rounds: int, limit: int = 20,
        shadow_queue_size: int | None = None, only: list[str] | None = None,
        arrivals: str = "poisson", say: Say = print) -> dict[str, Any]:
    import httpx

    def prepare(root: Path, version: str) -> None:
        _copy_version(root / version, root, f"{version}-shadow")

    def tweak(a: dict[str, Any]) -> None:
        a["rollout"]["allow_fault_injection"] = True
        if shadow_queue_size is not None:
            a["rollout"]["shadow_queue_size"] = shadow_queue_size

    with local_stack(bundle, prefix="rollout", say=say, prepare=prepare, tweak=tweak,
                     grpc=False) as stack:
        b_version, root, args, base = stack.version, stack.root, stack.args, stack.url
        shadow_version = f"{b_version}-shadow"
        say(f"shadow version {shadow_version}")
        admin = httpx.Client(headers={"authorization": f"Bearer {stack.token}"}, timeout=300)
        from serve.catalog import Catalog

        cat = Catalog(root / b_version / "catalog")
        users = np.random.default_rng(0).choice(cat.user_ids, size=min(2000, len(
            cat.user_ids)), replace=False)
        plans = {k: v for k, v in configs(b_version, shadow_version).items()
                 if not only or k in only or k == "baseline"}
        points: dict[str, list[dict[str, Any]]] = {name: [] for name in plans}
        pooled: dict[str, list[float]] = {name: [] for name in plans}
        per_round: dict[str, list[np.ndarray]] = {name: [] for name in plans}

        async def measure(seed: int) -> dict[str, Any]:
            call, client = _http_call(f"{base}/v1/feed", limit)
            try:
                for i in range(100):  # warm-up
                    await call(int(users[i % len(users)]))
                return await open_loop(call, users, rate=rate, duration_s=duration_s,
                                       keep_latencies=True, poisson_seed=seed
                                       if arrivals == "poisson" else None)
            finally:
                await client.aclose()

        for r in range(rounds):
            for name, cfg in plans.items():
                resp = admin.put(f"{base}/v1/admin/rollout", json=cfg)
                resp.raise_for_status()
                time.sleep(1.0)  # every replica routes by it (reports every 0.5 s)
                p = asyncio.run(measure(r))  # each config sees the same arrivals
                lat_r = p.pop("latencies_ms")
                pooled[name].extend(lat_r)
                per_round[name].append(np.asarray(lat_r, dtype=float))
                points[name].append(p)
                say(f"round {r + 1}/{rounds} {name}: p50 {p['p50_ms']:.1f} ms, p99 "
                    f"{p['p99_ms']:.1f} ms, errors {p['error_rate']:.1%}, achieved "
                    f"{p['achieved_rps']} req/s")
                if name != "baseline":
                    st = admin.get(f"{base}/v1/admin/rollout").json()
                    w = st["stages"]["ranker"]["variants"]["shadow"]
                    p["shadow"] = {"totals": w["totals"], "window": {
                        k: w["window"][k] for k in ("requests", "errors", "p99_ms",
                                                    "overlap_at_k", "rank_correlation")}}
        admin.put(f"{base}/v1/admin/rollout", json={})
        results: dict[str, Any] = {}
        for name, ps in points.items():
            lat = np.asarray(pooled[name])
            results[name] = {  # percentiles over every round's requests pooled
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "client_errors": int(sum(round(p["error_rate"] * p["requests"]) for p in ps)),
                "requests": int(sum(p["requests"] for p in ps)), "rounds": ps}
        base_p99 = results["baseline"]["p99_ms"]
        for r_ in results.values():
            r_["p99_vs_baseline"] = round(r_["p99_ms"] / base_p99, 3) if base_p99 else None
        for name, r_ in results.items():
            if name != "baseline" and base_p99:
                _, low, high = p99_ratio_interval(per_round["baseline"], per_round[name])
                r_["p99_vs_baseline_95ci"] = [round(low, 3), round(high, 3)]
        return {"date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "bundle": b_version,
                "items": stack.manifest["dataset"]["posts"], "offered_rps": rate,
                "duration_s": duration_s, "rounds": rounds, "limit": limit,
                "shadow_queue_size": args["rollout"].get("shadow_queue_size", 64),
                "arrivals": arrivals,
                "configs": results}
