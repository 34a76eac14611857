"""Feed benchmark: three compositions of the same pipeline, side by side in one run.

(a) in_process: `FeedPipeline` called as plain async functions in this process, the ranker
    in-process TorchScript: no Ray, no Triton, no HTTP (the floor);
(b) naive: one Serve deployment per stage, awaited one after another, no batching, the
    ranker called per request (benchmarks/naive_app.py);
(c) funnel: the Funnel Serve app (`serve.app`) with the ranker on Triton (Python backend,
    dynamic batching), behind the ingress `funnel serve` would pick (`--ingress`, default
    haproxy: Ray Serve's high-throughput mode, the cluster's ingress; needs haproxy);
(d) funnel_proxy: the same app behind Ray Serve's Python proxy (`funnel serve`'s local
    default).

naive and funnel each get a Ray of their own: Ray Serve reads its ingress flags when its
processes start, and naive runs stock Ray Serve.

Each is driven open-loop at fixed offered loads (requests scheduled at a constant rate, not
waiting for answers), for `duration_s` per load; the sweep goes up until p99 passes 150 ms,
errors pass 1 %, or the achieved rate falls under 90 % of the offered one. The load
generator runs in this process for all three, so each pays the same client cost.

    funnel bench feed --profile large --out benchmarks/results/feed.json
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.proc_cpu import CpuMeter, memory_by_process, used
from benchmarks.serving_bundle import build_serving_bundle
from benchmarks.triton_batching import DEFAULT_CONFIG, TritonProcess, free_port
from serve.config import load_serve_config

Say = Callable[[str], None]
P99_BUDGET_MS = 150.0
SWEEP = (1, 2, 5, 10, 20, 30, 40, 50, 60, 80, 100, 120, 150, 200)


# One request for a user: whether it succeeded, and the server's per-stage milliseconds
# (the Server-Timing header; the pipeline's own timings in-process; {} where unknown).
Call = Callable[[int], Awaitable[tuple[bool, dict[str, float]]]]


def _stage_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for s in samples for k in s})
    return {k: round(float(np.median([s[k] for s in samples if k in s])), 2) for k in names}


async def open_loop(call: Call, users: np.ndarray, *, rate: float, duration_s: float,
                    keep_latencies: bool = False, poisson_seed: int | None = None
                    ) -> dict[str, Any]:
    """Send `rate` requests/s for `duration_s`; returns latency percentiles and rates, and the
    server-side median of each stage (with `keep_latencies`, also every latency in send order,
    `latencies_ms`, when each request went out, `sent_s`, seconds after the start, and the
    server's own time for it, `handler_ms`, NaN where the response did not say).

    Requests go out at a constant interval, or, with `poisson_seed`, as a Poisson process of
    the same rate (exponential gaps, seeded): real traffic does not arrive on a clock, and
    work that follows a request by a fixed delay (a shadow) would otherwise land on the
    same phase of every later request."""
    stages: list[dict[str, float]] = []
    errors = 0
    n = max(1, int(rate * duration_s))
    lat = np.full(n, np.nan)  # by send order
    sent = np.zeros(n)  # seconds after the start
    handler = np.full(n, np.nan)  # the server's own time (Server-Timing `handler`), if sent
    # the event loop's clock (monotonic): the sleeps that pace the load use it too, and a test
    # can run the whole load on a loop with virtual time
    clock = asyncio.get_running_loop().time
    start = clock()

    async def one(i: int) -> None:
        nonlocal errors
        t0 = clock()
        sent[i] = t0 - start
        try:
            ok, timing = await asyncio.wait_for(call(int(users[i % len(users)])), timeout=10)
        except Exception:
            ok, timing = False, {}
        if timing:
            stages.append(timing)
            handler[i] = timing.get("handler", np.nan)
        lat[i] = (clock() - t0) * 1000
        if not ok:
            errors += 1

    tasks = []
    if poisson_seed is None:
        at = np.arange(n) / rate
    else:
        at = np.cumsum(np.random.default_rng(poisson_seed).exponential(1.0 / rate, n))
        at -= at[0]
    for i in range(n):
        delay = start + float(at[i]) - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    return {"offered_rps": rate, "achieved_rps": round(n / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "error_rate": round(errors / n, 4), "requests": n,
            "server_stages_p50_ms": _stage_medians(stages),
            **({"latencies_ms": lat.tolist(), "sent_s": sent.tolist(),
                "handler_ms": handler.tolist()} if keep_latencies else {})}


def cores() -> int:
    """CPUs this process may run on (what the stack can use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_summary(points: list[dict[str, Any]], best_rps: float, n_cores: int
                ) -> dict[str, Any]:
    """CPU per request at the highest load within budget (the first load when none was),
    the throughput limit it implies (cores / CPU seconds per request) and the efficiency
    (the measured maximum / that limit). Empty when the points carry no CPU figures."""
    within = [p for p in points if p["offered_rps"] <= best_rps] or points[:1]
    at = within[-1]
    per = at.get("cpu_ms_per_request")
    if not per:
        return {}
    limit = n_cores / (per / 1000.0)
    return {"cpu_ms_per_request": per, "cpu_at_rps": at["offered_rps"],
            "cpu_limit_rps": round(limit, 1),
            "efficiency": round(best_rps / limit, 3) if best_rps else 0.0}


async def sweep(call: Call, users: np.ndarray, *, duration_s: float, say: Say, name: str,
                loads: tuple[float, ...] | None = None, stack: CpuMeter | None = None,
                loadgen: CpuMeter | None = None) -> dict[str, Any]:
    """`stack` meters the processes that serve (read from /proc around each load step);
    `loadgen` the load generator's own process, reported apart."""
    for i in range(200):  # warm-up: first calls load lazily-built state, warm caches
        await call(int(users[i % len(users)]))
    points = []
    best = 0.0
    for rate in loads or SWEEP:
        s0 = stack.snapshot() if stack else None
        g0 = loadgen.snapshot() if loadgen else None
        r = await open_loop(call, users, rate=rate, duration_s=duration_s)
        if stack is not None and s0 is not None:
            u = used(s0, stack.snapshot())
            r["cpu_ms_per_request"] = round(u.seconds * 1000 / r["requests"], 2)
            r["cpu_processes"] = u.processes
            r["cpu_processes_exited"] = u.exited
        if loadgen is not None and g0 is not None:
            g = used(g0, loadgen.snapshot())
            r["loadgen_cpu_ms_per_request"] = round(g.seconds * 1000 / r["requests"], 2)
        points.append(r)
        ok = (r["p99_ms"] <= P99_BUDGET_MS and r["error_rate"] <= 0.01
              and r["achieved_rps"] >= 0.9 * rate)
        server = r["server_stages_p50_ms"].get("total")
        cpu = r.get("cpu_ms_per_request")
        say(f"{name}: {rate:>4} req/s offered -> p50 {r['p50_ms']:.1f} ms, p99 "
            f"{r['p99_ms']:.1f} ms, errors {r['error_rate']:.1%}"
            + (f", server p50 {server:.1f} ms" if server is not None else "")
            + (f", CPU {cpu:.1f} ms/req" if cpu is not None else "")
            + ("" if ok else "  (over)"))
        if not ok:
            break
        best = float(rate)
    low = points[0]
    return {"p50_ms": low["p50_ms"], "p99_ms": low["p99_ms"], "max_rps_p99_150ms": best,
            "server_stages_p50_ms": low["server_stages_p50_ms"],
            **cpu_summary(points, best, cores()), "points": points}


def parse_server_timing(header: str) -> dict[str, float]:
    """`a;dur=1.5, b;dur=2` -> {"a": 1.5, "b": 2.0}; entries without a duration are skipped."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


def _http_call(url: str, limit: int) -> tuple[Call, Any]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256,
                                                   max_keepalive_connections=256),
                               timeout=10)

    async def call(user_id: int) -> tuple[bool, dict[str, float]]:
        r = await client.post(url, json={"user_id": user_id, "limit": limit})
        return r.status_code == 200, parse_server_timing(r.headers.get("server-timing", ""))

    return call, client


def in_process_call(raw_args: dict[str, Any], limit: int, prefix: str) -> Call:
    """The in-process floor: `FeedPipeline.run` of the app args' bundle, the ranker as
    in-process TorchScript, each call a request with its own id."""
    from serve.config import parse_app_args
    from serve.loader import load_pipeline, local_ranker
    from serve.pipeline import FeedQuery

    args = parse_app_args(raw_args)
    pipeline, _v = load_pipeline(args, ranker=local_ranker(args))
    k = 0

    async def direct(user_id: int) -> tuple[bool, dict[str, float]]:
        nonlocal k
        k += 1
        r = await pipeline.run(FeedQuery(user_id=user_id, limit=limit,
                                         request_id=f"{prefix}-{k}"))
        return bool(r.items), r.timings_ms

    return direct


def replica_pids(marker: str = "ServeReplica:funnel:FeedIngress") -> list[int]:
    """This process's descendants whose command line carries `marker` (Ray titles a
    replica's worker `ray::ServeReplica:<app>:<deployment>`)."""
    from benchmarks.proc_cpu import CpuMeter

    out = []
    for pid in CpuMeter().snapshot().seconds:
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                out.append(pid)
    return sorted(out)


@contextlib.contextmanager
def py_spy(pids: list[int], out: Path, *, rate: int = 200, say: Say = print) -> Iterator[None]:
    """py-spy sampling `pids` (each to `out` with its pid) while the block runs, as
    collapsed stacks; a summary of the top frames is written beside each."""
    import shutil
    import signal
    import subprocess
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for pid in pids:
        path = out.with_name(f"{out.stem}-{pid}.txt")
        procs.append((path, subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    say(f"py-spy sampling {pids} at {rate} Hz")
    try:
        yield
    finally:
        from benchmarks.flame import markdown, summarise

        for path, proc in procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if path.is_file():
                s = summarise(path.read_text().splitlines(), top=25)
                path.with_suffix(".md").write_text(markdown(s) + "\n")
                say(f"py-spy: {s.samples} samples -> {path}, summary {path.with_suffix('.md')}")


def run(*, base_bundle: str, profile: str, duration_s: float, limit: int,
        work_dir: Path, configs: list[str], loads: tuple[float, ...] | None = None,
        ingress: str = "haproxy", profile_dir: Path | None = None,
        ingress_replicas: int = 1, say: Say = print) -> dict[str, Any]:
    import ray
    from ray import serve

    doc, _ = load_serve_config(DEFAULT_CONFIG)
    sb = build_serving_bundle(base_bundle, profile, work_dir, say=say)
    raw_args = dict(doc["applications"][0]["args"])
    raw_args["bundle"] = str(sb.path.resolve())
    from serve.catalog import Catalog

    cat = Catalog(sb.file("catalog/catalog.json").parent)
    rng = np.random.default_rng(0)
    users = rng.choice(cat.user_ids, size=2000, replace=False)
    users[::20] = 10**12 + np.arange(len(users[::20]))  # 5 % unknown users: cold start
    del cat
    results: dict[str, Any] = {}

    if "in_process" in configs:
        direct = in_process_call(raw_args, limit, "bench")

        # the pipeline runs in this process, beside the load generator: its CPU is this
        # process's (a direct call costs the generator little: no HTTP, no JSON)
        results["in_process"] = asyncio.run(sweep(
            direct, users, duration_s=duration_s, say=say, name="in_process", loads=loads,
            stack=CpuMeter(include_root=True)))
        results["in_process"]["memory"] = memory_by_process(CpuMeter(only_root=True))
        del direct

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/feed"

    def http_sweep(name: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            call, client = _http_call(url, limit)
            try:
                # the stack: every process this one started (Ray, Serve, HAProxy, Triton);
                # the load generator (this process) apart
                return await sweep(call, users, duration_s=duration_s, say=say, name=name,
                                   loads=loads, stack=CpuMeter(),
                                   loadgen=CpuMeter(only_root=True))
            finally:
                await client.aclose()

        return asyncio.run(go())

    @contextlib.contextmanager
    def ray_session(env: dict[str, str]) -> Iterator[None]:
        """A local Ray + Serve whose processes see `env` (Ray reads its flags at start)."""
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        ray.init(address="local", include_dashboard=False, namespace="funnel-bench",
                 configure_logging=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    if "naive" in configs:
        from benchmarks.naive_app import build_naive_app

        # stock Ray Serve: its Python proxy, default settings
        with ray_session({}):
            say("naive: deploying one Serve deployment per stage (Ray Serve proxy)")
            serve.run(build_naive_app(raw_args), name="naive", route_prefix="/")
            results["naive"] = {"ingress": "proxy", **http_sweep("naive")}
            results["naive"]["memory"] = memory_by_process(CpuMeter())
    for name, mode in (("funnel", ingress), ("funnel_proxy", "proxy")):
        if name not in configs:
            continue
        from serve.app import compose_app
        from serve.proxy_mode import ray_serve_env

        mode, env = ray_serve_env(mode)
        with TritonProcess(str(sb.path), dynamic_batching=True,
                           base_config=DEFAULT_CONFIG) as t, ray_session(env):
            fargs = {**raw_args, "feed": {**raw_args["feed"], "ranker": {
                **raw_args["feed"]["ranker"], "url": f"127.0.0.1:{t.grpc_port}"}}}
            say(f"{name}: deploying the Funnel app, ranker on Triton, ingress {mode}, "
                f"{ingress_replicas} ingress replica(s)")
            serve.run(compose_app(fargs, ingress_options={"num_replicas": ingress_replicas}),
                      name="funnel", route_prefix="/")
            with (py_spy(replica_pids(), profile_dir / f"{name}.txt", say=say)
                  if profile_dir is not None else contextlib.nullcontext()):
                results[name] = {"ingress": mode, **http_sweep(name)}
            results[name]["memory"] = memory_by_process(CpuMeter())
    out: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "profile": profile, "bundle": sb.version,
        "items": sb.manifest["dataset"]["posts"], "limit": limit, "duration_s": duration_s,
        "p99_budget_ms": P99_BUDGET_MS, "ingress_replicas": ingress_replicas,
        "configs": results,
    }
    if "funnel" in results and "naive" in results and results["naive"]["max_rps_p99_150ms"]:
        out["funnel_vs_naive_max_rps"] = round(results["funnel"]["max_rps_p99_150ms"]
                                               / results["naive"]["max_rps_p99_150ms"], 2)
    if "funnel" in results and "in_process" in results:
        out["funnel_minus_in_process_p50_ms"] = round(results["funnel"]["p50_ms"]
                                                      - results["in_process"]["p50_ms"], 2)
    return out


# ---- `funnel bench feed --quick`: the regression check CI runs ----------------------------
QUICK_PROFILE = "mid"
QUICK_RATE = 20.0  # req/s: well under the floor's limit, so CPU per feed is not queueing
QUICK_WARN_CHANGE = 0.25  # a change in CPU per feed past this share is printed as a warning


def against_baseline(record: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """`record` with its `change` in CPU per feed against `base` and, past ±25 %, a
    `warning` that says so (pure)."""
    change = record["cpu_ms_per_request"] / base["cpu_ms_per_request"] - 1.0
    out = {**record, "baseline_commit": base.get("commit"), "change": round(change, 3)}
    if abs(change) > QUICK_WARN_CHANGE:
        out["warning"] = (
            f"CPU per feed {record['cpu_ms_per_request']:.2f} ms is {change:+.0%} against "
            f"the baseline {base['cpu_ms_per_request']:.2f} ms (commit {base.get('commit')}): "
            f"past ±{QUICK_WARN_CHANGE:.0%}; explain it in the change's closing note")
    return out


def quick(*, base_bundle: str, work_dir: Path, duration_s: float = 45.0,
          history: Path, baseline: Path, commit: str, say: Say = print) -> dict[str, Any]:
    """One minute of the in-process floor on the mid-size catalog: CPU per feed (/proc) and
    per-stage medians, appended with `commit` to `history` (JSON lines) and compared with
    `baseline` (the committed reference). Returns the record, with `change` against the
    baseline and `warning` set when CPU per feed moved by more than 25 %. Never fails on
    the figures: CPU time is the measure, and CI only prints it."""
    sb = build_serving_bundle(base_bundle, QUICK_PROFILE, work_dir, say=say)
    from serve.catalog import Catalog

    doc, _ = load_serve_config(DEFAULT_CONFIG)
    raw_args = dict(doc["applications"][0]["args"])
    raw_args["bundle"] = str(sb.path.resolve())
    cat = Catalog(sb.file("catalog/catalog.json").parent)
    users = np.random.default_rng(0).choice(cat.user_ids, size=2000, replace=False)
    del cat
    direct = in_process_call(raw_args, 50, "quick")
    r = asyncio.run(sweep(direct, users, duration_s=duration_s, say=say, name="quick",
                          loads=(QUICK_RATE,), stack=CpuMeter(include_root=True)))
    point = r["points"][0]
    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
        "profile": QUICK_PROFILE, "items": sb.manifest["dataset"]["posts"],
        "rate_rps": QUICK_RATE, "duration_s": duration_s, "requests": point["requests"],
        "cpu_ms_per_request": point["cpu_ms_per_request"],
        "stages_p50_ms": point["server_stages_p50_ms"], "machine": platform.machine(),
        "cpus": cores()}
    if baseline.is_file():
        import json

        record = against_baseline(record, json.loads(baseline.read_text()))
    history.parent.mkdir(parents=True, exist_ok=True)
    import json

    with history.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return record
