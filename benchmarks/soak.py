"""Soak: the local stack under mixed load for a long while, with a canary and a shadow live.

    funnel bench soak --duration 10m

1. Start one `funnel serve` (local Ray, Triton, the Serve app) of the bundle, with a second
   bundle version beside it, and apply a rollout: on the ranker stage a 10 % canary and a
   shadow on 20 % of the primary's requests (both the second version, so neither breaks a
   guardrail by being different), with guardrails and auto-rollback on.
2. Measure the maximum throughput: locust (headless, its own process) with 2, 4, 8, ...
   up to `--users` users sending as fast as answers come, 90 % feed / 10 % moderation,
   `--probe-s` seconds each (the first third a warm-up). The maximum is the best rate of
   answers in full (200, no stage degraded) at any step: past saturation the sources' and
   the ranker's budgets run out and fallbacks answer fast, a rate that is not capacity.
3. Soak: the same mix at `--load` (70 %) of that maximum, for `--duration`, each locust user
   at a constant rate. Every request is logged by the locustfile (time, route, status,
   latency, items served, request id).

Reported: throughput held, errors by status, p50/p99 per minute and overall, each Funnel
process's resident memory at the soak's start and end (and every minute), against the bound
`max(64 MiB, 10 %)`, and records logged vs items served (the impression log's feed rows
for the soak's request ids vs the items the responses carried; moderation rows vs
answers), with the records the log counted as dropped or failed. Exit status 1 when a
request failed, a record went missing, or a process grew past the bound.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.rollout import _copy_version
from benchmarks.stack import LocalStack, local_stack, stack_processes

Say = Callable[[str], None]
LOCUSTFILE = Path(__file__).with_name("soak_locustfile.py")
MIB = 1 << 20
MEMORY_BOUND_BYTES = 64 * MIB  # a process may grow by this much, or by 10 %, whichever is more
MEMORY_BOUND_SHARE = 0.10
SETTLE_S = 30.0  # after the rollout is re-applied, before the soak starts


def rollout_config(primary: str, other: str) -> dict[str, Any]:
    return {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": primary, "weight": 90},
                     {"name": "canary", "bundle_version": other, "weight": 10}],
        "shadows": [{"name": "shadow", "bundle_version": other, "sample_rate": 0.2}],
        "guardrails": [{"metric": "error_rate", "max": 0.05},
                       {"metric": "p99_latency_ratio", "max": 3.0, "min_samples": 500}],
        "promotion": {"steps": [{"weight": 10, "min_duration_s": 7 * 86400}],
                      "auto_rollback": True}}}}


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h', '1h30m' or seconds ('600') -> seconds."""
    import re

    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"duration {text!r}: use e.g. 10m, 90s, 1h30m or seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _locust(stack: LocalStack, *, users: int, user_rps: float, seconds: float, log: Path,
            prefix: str, feed_users: int, say: Say) -> None:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--host", stack.url, "--users", str(users), "--spawn-rate", str(users),
           "--run-time", f"{int(seconds)}s", "--stop-timeout", "10", "--only-summary",
           "--loglevel", "WARNING"]
    env = {**os.environ, "FUNNEL_SOAK_LOG": str(log), "FUNNEL_SOAK_USER_RPS": str(user_rps),
           "FUNNEL_SOAK_PREFIX": prefix, "FUNNEL_SOAK_FEED_USERS": str(feed_users)}
    with (stack.work / f"locust-{prefix}.log").open("wb") as out:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            p.wait(seconds + 120)
        finally:  # overran, or the bench was interrupted: locust stops with it
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    if not log.exists():
        raise RuntimeError(f"locust wrote no requests; see {stack.work / f'locust-{prefix}.log'}")
    say(f"locust ({prefix}) exited {p.returncode}")


Row = tuple[float, str, int, float, int, str, str]  # t, route, status, ms, items, rid, degraded


def _read(log: Path) -> list[Row]:
    with log.open() as f:
        return [(float(r[0]), r[1], int(r[2]), float(r[3]), int(r[4]), r[5], r[6])
                for r in csv.reader(f) if len(r) == 7]


def _full(r: Row) -> bool:
    """Answered in full: 200 and no stage degraded."""
    return r[2] == 200 and not r[6]


def _processes(pid: int) -> dict[str, int]:
    """Resident bytes of `funnel serve` and every process below it (Ray, the replicas,
    Triton), keyed by a name that survives the run (role + pid)."""
    return {f"{role} [{p.pid}]": rss for p, role, rss in
            stack_processes(pid, lambda p: int(p.memory_info().rss))}


def _impressions(root: Path, kind: str, prefix: str) -> int:
    import pyarrow.dataset as ds

    if not (root / kind).is_dir():
        return 0
    t = ds.dataset(root / kind, format="parquet", partitioning="hive").to_table(
        columns=["request_id"])
    return sum(1 for r in t.column("request_id").to_pylist() if r.startswith(prefix))


def _counter(url: str, name: str, **labels: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2) if xs else float("nan")


def run(*, bundle: str, duration_s: float, load: float = 0.7, users: int = 24,
        probe_s: float = 30.0, ingress: str = "proxy", ingress_replicas: int = 1,
        say: Say = print) -> dict[str, Any]:
    import httpx

    def prepare(root: Path, version: str) -> None:
        _copy_version(root / version, root, f"{version}-canary")

    with local_stack(bundle, prefix="soak", say=say, prepare=prepare, grpc=False,
                     ingress=ingress,
                     deployments={"FeedIngress": {"num_replicas": ingress_replicas}}) as stack:
        from serve.catalog import Catalog

        feed_users = int(max(Catalog(stack.root / stack.version / "catalog").user_ids))
        admin = httpx.Client(headers={"authorization": f"Bearer {stack.token}"}, timeout=300)
        cfg = rollout_config(stack.version, f"{stack.version}-canary")
        admin.put(f"{stack.url}/v1/admin/rollout", json=cfg).raise_for_status()
        time.sleep(2)
        say(f"rollout applied: canary 10 %, shadow 20 % (version {stack.version}-canary)")

        steps = sorted({min(users, 2 ** k) for k in range(1, 11)})
        say(f"probing the maximum throughput: {probe_s:.0f} s each at {steps} users, no wait")
        probe: list[dict[str, Any]] = []
        for n in steps:
            log_k = stack.work / f"probe-{n}.csv"
            _locust(stack, users=n, user_rps=0, seconds=probe_s, log=log_k,
                    prefix=f"probe{n}", feed_users=feed_users, say=say)
            rows_k = _read(log_k)
            t_mid = rows_k[0][0] + probe_s / 3  # the first third warms up
            late = [r for r in rows_k if r[0] >= t_mid]
            span_k = max(1e-9, max(r[0] for r in late) - t_mid)
            step = {"users": n, "rps": round(len(late) / span_k, 1),
                    "full_rps": round(sum(map(_full, late)) / span_k, 1),
                    "degraded_share": round(1 - sum(map(_full, late)) / max(1, len(late)), 4),
                    "p50_ms": _pct([r[3] for r in late], 50),
                    "p99_ms": _pct([r[3] for r in late], 99)}
            probe.append(step)
            say(f"  {n} users: {step['rps']} req/s ({step['full_rps']} in full), p50 "
                f"{step['p50_ms']} ms, p99 {step['p99_ms']} ms, degraded "
                f"{step['degraded_share']:.1%}")
        # the maximum: the best rate of answers in full at any step (past saturation, budgets
        # run out, fallbacks answer fast, and the rate in full falls)
        max_rps = max(p["full_rps"] for p in probe)
        target = load * max_rps
        say(f"maximum {max_rps:.1f} req/s; soak at {load:.0%}: {target:.1f} req/s for "
            f"{duration_s:.0f} s")
        # overload in the probe may have rolled the canary back: start the soak afresh, and
        # give every replica time to load the variants before measuring (an operator does
        # not measure a rollout's steady state while it is being applied)
        admin.put(f"{stack.url}/v1/admin/rollout", json={}).raise_for_status()
        admin.put(f"{stack.url}/v1/admin/rollout", json=cfg).raise_for_status()
        say(f"rollout re-applied; settling {SETTLE_S:.0f} s before the soak")
        time.sleep(SETTLE_S)

        imp_root = Path(stack.args["impressions"]["url"])
        lost0 = {o: _counter(stack.url, "funnel_impression_records_total", outcome=o)
                 for o in ("dropped", "failed")}
        mem_start = _processes(stack.pid)
        mem_samples: list[dict[str, Any]] = [{"t_s": 0, "rss_bytes": sum(mem_start.values())}]
        soak_log = stack.work / "soak.csv"
        t_start = time.time()
        import threading

        done = threading.Event()

        def sample() -> None:
            while not done.wait(60):
                mem_samples.append({"t_s": round(time.time() - t_start),
                                    "rss_bytes": sum(_processes(stack.pid).values())})

        threading.Thread(target=sample, daemon=True).start()
        _locust(stack, users=users, user_rps=target / users, seconds=duration_s,
                log=soak_log, prefix="soak", feed_users=feed_users, say=say)
        done.set()
        mem_end = _processes(stack.pid)
        status = admin.get(f"{stack.url}/v1/admin/rollout").json()
        time.sleep(3 * float(stack.args["impressions"].get("flush_interval_s", 1.0)) + 2)

        rows = _read(soak_log)
        feed = [r for r in rows if r[1] == "/v1/feed"]
        mod = [r for r in rows if r[1] == "/v1/moderate"]
        ok = [r for r in rows if r[2] == 200]
        degraded_n: dict[str, int] = defaultdict(int)
        for r in ok:
            for stage in filter(None, r[6].split("|")):
                degraded_n[stage] += 1
        errors: dict[str, int] = defaultdict(int)
        shed = 0
        for r in rows:
            if r[2] == 429:  # refused by admission control: counted apart, not an error
                shed += 1
            elif r[2] != 200:
                errors[str(r[2])] += 1
        t0 = min(r[0] for r in rows)
        minutes: dict[int, list[float]] = defaultdict(list)
        degraded_by_minute: dict[int, int] = defaultdict(int)
        for r in ok:
            minutes[int((r[0] - t0) // 60)].append(r[3])
            degraded_by_minute[int((r[0] - t0) // 60)] += bool(r[6])
        span = max(r[0] for r in rows) - t0
        items_served = sum(r[4] for r in feed if r[2] == 200)
        feed_rows = _impressions(imp_root, "feed", "soak-")
        mod_rows = _impressions(imp_root, "moderation", "soak-")
        lost = {o: int(_counter(stack.url, "funnel_impression_records_total", outcome=o)
                       - lost0[o]) for o in lost0}

        memory = []
        for name, start in sorted(mem_start.items()):
            end = mem_end.get(name)
            bound = max(MEMORY_BOUND_BYTES, MEMORY_BOUND_SHARE * start)
            memory.append({"process": name, "start_mib": round(start / MIB, 1),
                           "end_mib": None if end is None else round(end / MIB, 1),
                           "growth_mib": None if end is None else round((end - start) / MIB, 1),
                           "within_bound": end is not None and end - start <= bound})
        ranker = status.get("stages", {}).get("ranker", {})
        variants = ranker.get("variants", {})
        result: dict[str, Any] = {
            "date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "bundle": stack.version,
            "mix": {"feed": 0.9, "moderate": 0.1}, "users": users,
            "rollout": cfg, "rollout_at_end": {
                "status": ranker.get("status"), "weights": ranker.get("weights"),
                "totals": {n: v.get("totals") for n, v in variants.items()},
                "decisions": status.get("decisions", [])},
            "probe": probe, "max_rps": round(max_rps, 1), "load": load,
            "target_rps": round(target, 1),
            "duration_s": round(span, 1), "requests": len(rows),
            "achieved_rps": round(len(rows) / span, 1) if span else None,
            "errors": dict(errors), "degraded": dict(degraded_n),
            "degraded_share": round(sum(1 for r in ok if r[6]) / max(1, len(ok)), 5),
            "shed": shed, "shed_share": round(shed / max(1, len(rows)), 5),
            "ingress": ingress, "ingress_replicas": ingress_replicas,
            "error_rate": round(len(rows) and sum(errors.values())
                                                        / len(rows), 5),
            "p50_ms": _pct([r[3] for r in ok], 50), "p99_ms": _pct([r[3] for r in ok], 99),
            "feed": {"requests": len(feed), "p50_ms": _pct([r[3] for r in feed if r[2] == 200],
                                                           50),
                     "p99_ms": _pct([r[3] for r in feed if r[2] == 200], 99)},
            "moderate": {"requests": len(mod),
                         "p50_ms": _pct([r[3] for r in mod if r[2] == 200], 50),
                         "p99_ms": _pct([r[3] for r in mod if r[2] == 200], 99)},
            "per_minute": [{"minute": m, "requests": len(v), "rps": round(len(v) / 60, 1),
                            "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99),
                            "degraded": degraded_by_minute[m]}
                           for m, v in sorted(minutes.items())],
            "memory_bound": f"max({MEMORY_BOUND_BYTES // MIB} MiB, "
                            f"{MEMORY_BOUND_SHARE:.0%}) per process",
            "memory": memory, "memory_total_over_time": mem_samples,
            "max_growth_mib": max((float(m["growth_mib"]) for m in memory  # type: ignore[arg-type]
                                   if m["growth_mib"] is not None), default=None),
            "records": {"feed_items_served": items_served, "feed_rows_logged": feed_rows,
                        "moderation_answers": sum(1 for r in mod if r[2] == 200),
                        "moderation_rows_logged": mod_rows,
                        "counted_dropped": lost["dropped"], "counted_failed": lost["failed"]},
        }
        result["records"]["missing"] = (
            items_served - feed_rows + result["records"]["moderation_answers"] - mod_rows
            - lost["dropped"] - lost["failed"])
        result["ok"] = (not errors and result["records"]["missing"] == 0
                        and all(m["within_bound"] for m in memory))
        say(f"held {result['achieved_rps']} req/s for {span:.0f} s: p50 {result['p50_ms']} "
            f"ms, p99 {result['p99_ms']} ms, errors {dict(errors) or 0}, records missing "
            f"{result['records']['missing']}, memory within bound: "
            f"{all(m['within_bound'] for m in memory)}")
        return json.loads(json.dumps(result, default=float))
