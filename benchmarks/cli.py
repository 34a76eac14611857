"""`funnel bench`: the performance harness's commands (results: benchmarks/results/*.json).
Mounted on the `funnel` command by funnel/cli.py when this package is importable (a source
checkout; it is not part of the wheel)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from serve.proxy_mode import Ingress


class TritonRuntime(StrEnum):
    python_backend = "python_backend"
    pytriton = "pytriton"


class Arrivals(StrEnum):
    poisson = "poisson"
    constant = "constant"


class LoadGenerator(StrEnum):
    python = "python"
    h2load = "h2load"


bench_app = typer.Typer(help="Performance harness (results: benchmarks/results/*.json).",
                        no_args_is_help=True)


def _write_result(result: dict[str, object], out: str) -> None:
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    Console(stderr=True).print(f"[bold]funnel[/] wrote {out}", highlight=False)


@bench_app.command("feed")
def bench_feed(
    profile: Annotated[str, typer.Option(help="Catalog profile to serve.")] = "large",
    bundle: Annotated[str, typer.Option(help="Trained bundle whose models are served.")] = (
        "artifacts/latest"),
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/feed.json",
    duration_s: Annotated[float, typer.Option(min=1, help="Seconds per offered load.")] = 10,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Items per feed.")] = 50,
    work_dir: Annotated[str, typer.Option(help="Cache for the serving bundle.")] = "data/bench",
    configs: Annotated[str, typer.Option(
        help="Comma-separated: in_process,naive,funnel,funnel_proxy.")] = (
        "in_process,naive,funnel,funnel_proxy"),
    loads: Annotated[str, typer.Option(
        help="Comma-separated offered loads in req/s, ascending (default: the full sweep, "
        "1 to 200, stopping at the first over budget).")] = "",
    ingress: Annotated[Ingress, typer.Option(
        help="Ingress of the 'funnel' config (see `funnel serve --help`); 'funnel_proxy' "
             "and 'naive' always use Ray Serve's proxy.")] = Ingress.haproxy,
    py_spy: Annotated[str | None, typer.Option(
        "--py-spy", help="Folder: sample the Funnel ingress replica with py-spy during the "
        "sweep (collapsed stacks and a top-frames summary). Sampling costs CPU: profile in "
        "a run of its own, not the one whose figures you report.")] = None,
    ingress_replicas: Annotated[int, typer.Option(
        min=1, max=16, help="FeedIngress replicas of the 'funnel' configs: one per core "
        "(a replica's requests share one event loop; docs/performance.md).")] = 2,
    quick: Annotated[bool, typer.Option(
        "--quick", help="The regression check (CI runs it): one minute of the in-process "
        "floor on the mid-size catalog; appends CPU per feed and stage medians with the "
        "commit to --history and prints the change against --baseline (a warning past "
        "25 %). Never fails on the figures.")] = False,
    history: Annotated[str, typer.Option(help="--quick: history file (JSON lines).")] = (
        "benchmarks/results/feed_quick_history.jsonl"),
    baseline: Annotated[str, typer.Option(help="--quick: the committed reference.")] = (
        "benchmarks/results/feed_quick_baseline.json"),
) -> None:
    """In-process vs naive Serve vs Funnel: latency at fixed loads, max throughput, CPU per
    request of the whole stack (from /proc) and the throughput limit it implies."""
    from benchmarks.feed import run

    if quick:
        _bench_feed_quick(bundle, Path(work_dir), Path(history), Path(baseline))
        return

    wanted = [c.strip() for c in configs.split(",") if c.strip()]
    bad = sorted(set(wanted) - {"in_process", "naive", "funnel", "funnel_proxy"})
    if bad:
        raise typer.BadParameter(f"unknown config(s) {bad}; allowed: in_process, naive, "
                                 "funnel, funnel_proxy",
                                 param_hint="--configs")
    try:
        rates = tuple(float(x) for x in loads.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{loads!r}: expected numbers such as 1,5,20",
                                 param_hint="--loads") from None
    if any(r <= 0 for r in rates) or list(rates) != sorted(rates):
        raise typer.BadParameter(f"{loads!r}: loads must be positive and ascending",
                                 param_hint="--loads")
    console = Console(stderr=True)
    result = run(base_bundle=bundle, profile=profile, duration_s=duration_s, limit=limit,
                 work_dir=Path(work_dir), configs=wanted, loads=rates or None,
                 ingress=ingress.value, profile_dir=Path(py_spy) if py_spy else None,
                 ingress_replicas=ingress_replicas,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


def _bench_feed_quick(bundle: str, work_dir: Path, history: Path, baseline: Path) -> None:
    import subprocess

    from benchmarks.feed import quick

    console = Console(stderr=True)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    rec = quick(base_bundle=bundle, work_dir=work_dir, history=history, baseline=baseline,
                commit=commit,
                say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    stages = ", ".join(f"{k} {v:.2f}" for k, v in rec["stages_p50_ms"].items())
    change = (f"{rec['change']:+.1%} against the baseline (commit {rec['baseline_commit']})"
              if "change" in rec else f"no baseline at {baseline}")
    print(f"feed quick: CPU per feed {rec['cpu_ms_per_request']:.2f} ms at commit "
          f"{rec['commit']}, {change}; stage medians ms: {stages}; appended to {history}")
    if "warning" in rec:
        print(f"WARNING: {rec['warning']}")


@bench_app.command("features")
def bench_features(
    redis_url: Annotated[str, typer.Option(help="A Redis to fill (keys under a random "
                                           "prefix, removed after).")],
    profile: Annotated[str, typer.Option(help="Catalog profile to serve.")] = "large",
    bundle: Annotated[str, typer.Option(help="Trained bundle whose models are served.")] = (
        "artifacts/latest"),
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/features.json"),
    rate: Annotated[float, typer.Option(min=1, help="Offered feeds per second.")] = 20,
    duration_s: Annotated[float, typer.Option(min=1, help="Seconds per round.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Interleaved rounds, each "
                                        "without then with the store.")] = 3,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Items per feed.")] = 50,
    lag_events: Annotated[int, typer.Option(min=10)] = 400,
    seen: Annotated[int, typer.Option(min=0, help="Seen posts per user.")] = 300,
    trending_items: Annotated[int, typer.Option(min=0)] = 5000,
    work_dir: Annotated[str, typer.Option(help="Cache for the serving bundle.")] = "data/bench",
) -> None:
    """What the online feature store adds to a feed (interleaved rounds with and without
    it, in process) and how soon an event is visible in it."""
    from benchmarks.features import run

    console = Console(stderr=True)
    result = run(base_bundle=bundle, profile=profile, redis_url=redis_url,
                 work_dir=Path(work_dir), rate=rate, duration_s=duration_s, rounds=rounds,
                 limit=limit, lag_events=lag_events, seen=seen, trending_items=trending_items,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    import json

    earlier = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
    for key in ("quality", "recall_at_10_live", "recall_at_10_frozen"):  # features-quality's
        if key in earlier:
            result[key] = earlier[key]
    _write_result(result, out)


@bench_app.command("features-quality")
def bench_features_quality(
    redis_url: Annotated[str, typer.Option(help="A Redis to replay into (keys under a random "
                                           "prefix, removed after).")],
    bundle: Annotated[str, typer.Option(help="A bundle trained with training/configs/"
                                        "movielens-time.yaml.")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON (its `quality` part and the "
                                     "recall keys are replaced).")] = (
        "benchmarks/results/features.json"),
    max_events: Annotated[int | None, typer.Option(min=1, help="Replay only the first N "
                                                   "ratings (a smoke run).")] = None,
) -> None:
    """MovieLens-100K's test period replayed through the events path: the two-tower's
    next-item Recall@10 with live history against the bundle's frozen history."""
    import json

    from benchmarks.features_quality import run

    console = Console(stderr=True)
    res = run(bundle=bundle, redis_url=redis_url, max_events=max_events,
              say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    path = Path(out)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["quality"] = {"command": "funnel bench features-quality", **res}
    record["recall_at_10_live"] = res["recall_at_10_live"]
    record["recall_at_10_frozen"] = res["recall_at_10_frozen"]
    _write_result(record, out)


@bench_app.command("triton")
def bench_triton(
    bundle: Annotated[str, typer.Option(help="Bundle with the ranker.")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/triton_batching.json"),
    callers: Annotated[int, typer.Option(min=1, max=256)] = 16,
    rows: Annotated[list[int] | None, typer.Option(
        help="Rows (candidates) per request; repeat for several.")] = None,
    duration_s: Annotated[float, typer.Option(min=1)] = 10,
    runtime: Annotated[TritonRuntime | None, typer.Option(
        help="How Triton hosts the model (default: the config's args.triton.runtime).")] = None,
    load_generator: Annotated[LoadGenerator, typer.Option(
        help="python: tritonclient's asyncio gRPC client; h2load: nghttp2's C load generator "
        "(apt install nghttp2-client), which leaves the cores to Triton.")] = (
        LoadGenerator.python),
) -> None:
    """Ranker throughput on Triton with dynamic batching on vs off."""
    from benchmarks.triton_batching import run

    console = Console(stderr=True)
    result = run(bundle=bundle, rows=rows or [1, 8, 64, 400], callers=callers,
                 duration_s=duration_s, runtime=runtime.value if runtime else None,
                 load_generator=load_generator.value,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


@bench_app.command("moderation")
def bench_moderation(
    bundle: Annotated[str, typer.Option(help="Bundle with the text head.")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/moderation.json"),
    callers: Annotated[int, typer.Option(min=1, max=256)] = 16,
    duration_s: Annotated[float, typer.Option(min=1)] = 10,
) -> None:
    """Text moderation throughput batched vs one by one; /v1/moderate latency."""
    from benchmarks.moderation import run

    console = Console(stderr=True)
    result = run(bundle=bundle, callers=callers, duration_s=duration_s,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


@bench_app.command("moderation-quality")
def bench_moderation_quality(
    data: Annotated[Path, typer.Option(help="The Davidson et al. 2017 labelled tweets (CSV).")]
    = Path("../shared/data/davidson-2017/labeled_data.csv"),
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/moderation_quality.json"),
    work_dir: Annotated[Path, typer.Option(help="Where the bundle, the proposed policy and "
                                           "the training scratch go.")] = Path(
        "data/bench-moderation-quality"),
    config: Annotated[Path | None, typer.Option(
        help="Training config (default: training/configs/moderation-text.yaml).")] = None,
    rows: Annotated[int | None, typer.Option(
        min=200, help="Train on a seeded sample of this many rows (a quick check of the "
        "harness; the recorded figures use every row).")] = None,
) -> None:
    """Moderation quality on real tweets: fine-tuned vs frozen encoder, the paper's figures,
    served texts/s, and the measured thresholds' recall (no text is printed)."""
    from benchmarks.moderation_quality import run

    console = Console(stderr=True)
    result = run(data=data, out_dir=work_dir, config=config, rows=rows,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _print_quality(result)
    _write_result(result, out)


def _print_quality(r: dict[str, object]) -> None:
    from rich.table import Table

    table = Table(title="moderation quality (test split)")
    for col in ("model", "macro-F1", "weighted F1", "hate F1", "hate P", "hate R",
                "texts/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in ("finetuned", "frozen"):
        side = r[name]
        assert isinstance(side, dict)
        three = side["three_class"]
        table.add_row(name, f"{side['macro_f1']:.3f}", f"{side['weighted_f1']:.3f}",
                      f"{side['hate_f1']:.3f}", f"{three['hate_precision']:.3f}",
                      f"{three['hate_recall']:.3f}", f"{side['texts_per_s']:.0f}")
    paper = r["paper"]
    assert isinstance(paper, dict)
    table.add_row("paper (LR)", "-", f"{paper['weighted_f1']:.2f}", f"{paper['hate_f1']:.2f}",
                  f"{paper['hate_precision']:.2f}", f"{paper['hate_recall']:.2f}", "-")
    Console().print(table)


@bench_app.command("rollout")
def bench_rollout(
    bundle: Annotated[str, typer.Option(help="Bundle to serve (a copy is the shadow).")] = (
        "artifacts/latest"),
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/rollout.json",
    rate: Annotated[float, typer.Option(min=0.1, help="Offered feed requests/s.")] = 10.0,
    block_s: Annotated[float, typer.Option(
        min=1, help="Counted seconds of one config's block.")] = 10,
    settle_s: Annotated[float, typer.Option(
        min=0, help="Seconds after each switch that are not counted.")] = 2,
    cycles: Annotated[int, typer.Option(
        min=1, max=1000, help="Cycles of one block per config (rotated order).")] = 40,
    shadow_queue_size: Annotated[int | None, typer.Option(
        min=1, help="args.rollout.shadow_queue_size (default: the config's)")] = None,
    only: Annotated[list[str] | None, typer.Option(
        help="Configs besides the baseline: slow_shadow, failing_shadow, real_shadow.")] = None,
    arrivals: Annotated[Arrivals, typer.Option(
        help="Request arrivals: a seeded Poisson process, or a fixed interval.")] = (
        Arrivals.poisson),
    shadow_scorer: Annotated[bool, typer.Option(
        help="Comparisons in the ShadowScorer deployment (args.rollout.shadow_scorer); "
             "--no-shadow-scorer: in the ingress replica.")] = True,
) -> None:
    """The primary's latency with no shadow traffic, a slow shadow, a failing one and a real
    one, in short interleaved blocks; each p99 ratio with a 95 % interval."""
    from benchmarks.rollout import SHADOWS, run

    unknown = sorted(set(only or ()) - set(SHADOWS))
    if unknown:
        raise typer.BadParameter(f"unknown config {', '.join(unknown)}; allowed: "
                                 f"{', '.join(SHADOWS)}", param_hint="--only")
    console = Console(stderr=True)
    result = run(bundle=bundle, rate=rate, block_s=block_s, settle_s=settle_s, cycles=cycles,
                 shadow_queue_size=shadow_queue_size, only=only, arrivals=arrivals.value,
                 shadow_scorer=shadow_scorer,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


# the cost benchmarks serve a catalog of a profile built from a trained bundle's models
TrainedBundle = Annotated[str, typer.Option("--bundle", help="Trained bundle (its models "
                                            "serve).")]
ServedProfile = Annotated[str | None, typer.Option(
    "--profile", help="Serve a catalog of this profile built from the bundle's models "
    "(large: 1M posts); empty: the bundle as it is.")]
BundleCache = Annotated[str, typer.Option("--work-dir", help="Cache for the serving bundle.")]


def _served(bundle: str, profile: str | None, work_dir: str, say: Callable[[str], None]
            ) -> str:
    if not profile:
        return bundle
    from benchmarks.serving_bundle import build_serving_bundle

    return str(build_serving_bundle(bundle, profile, Path(work_dir), say=say).path)


@bench_app.command("cost")
def bench_cost(
    bundle: TrainedBundle = "artifacts/latest",
    profile: ServedProfile = "large",
    work_dir: BundleCache = "data/bench",
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/cost.json",
    duration_s: Annotated[float, typer.Option(
        "--duration", min=10, max=3600, help="Seconds of the measured window.")] = 120.0,
    load_share: Annotated[float, typer.Option(
        min=0.05, max=1.0, help="The measured load, as a share of the maximum rate.")] = 0.7,
    probe_s: Annotated[float, typer.Option(
        min=5, max=600, help="Seconds of the closed loop that finds the maximum rate.")] = 20,
    moderation_share: Annotated[float, typer.Option(
        min=0, max=1, help="Share of the requests that are moderation calls.")] = 0.2,
    ingress: Annotated[str, typer.Option(help="funnel serve --ingress: proxy or haproxy.")]
    = "proxy",
) -> None:
    """Whether cost attribution adds up: attributed + overhead against the stack's CPU read
    from /proc, and the attributed share, at a share of the maximum load."""
    from benchmarks.cost import run

    if ingress not in ("proxy", "haproxy"):
        raise typer.BadParameter("proxy or haproxy", param_hint="--ingress")
    console = Console(stderr=True)
    served = _served(bundle, profile, work_dir,
                     lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    result = run(bundle=served, duration_s=duration_s, load_share=load_share, probe_s=probe_s,
                 moderation_share=moderation_share, ingress=ingress,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    result["command"] = (f"funnel bench cost --bundle {bundle} --profile {profile or ''} "
                         f"--duration {duration_s:g} --load-share {load_share:g} "
                         f"--ingress {ingress}")
    result["profile"] = profile
    _write_result(result, out)


@bench_app.command("cost-overhead")
def bench_cost_overhead(
    bundle: TrainedBundle = "artifacts/latest",
    profile: ServedProfile = "large",
    work_dir: BundleCache = "data/bench",
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/cost_overhead.json"),
    blocks: Annotated[int, typer.Option(min=2, max=200, help="Pairs of blocks.")] = 12,
    requests: Annotated[int, typer.Option(min=10, max=10_000, help="Feeds per block.")] = 150,
) -> None:
    """What measuring cost costs a feed: CPU per feed with the event loop metered and each
    request's cost recorded, against neither, in interleaved blocks."""
    from benchmarks.cost_overhead import run

    console = Console(stderr=True)
    say = lambda m: console.print(f"[bold]bench[/] {m}", highlight=False)  # noqa: E731
    result = run(bundle=_served(bundle, profile, work_dir, say), blocks=blocks,
                 requests=requests, say=say)
    result["command"] = (f"funnel bench cost-overhead --bundle {bundle} --profile "
                         f"{profile or ''} --blocks {blocks} --requests {requests}")
    _write_result(result, out)


@bench_app.command("console")
def bench_console(
    items: Annotated[int, typer.Option(min=1, max=100_000, help="Pending review items.")] = 500,
    rounds: Annotated[int, typer.Option(min=1, max=200, help="Loads of each view.")] = 12,
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/console.json",
) -> None:
    """The review queue page in headless Chromium with ITEMS pending: page weight and time
    to interactive, the default page against one page of every item."""
    from benchmarks.console import run

    console = Console(stderr=True)
    result = run(items=items, rounds=rounds,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    result["command"] = f"funnel bench console --items {items} --rounds {rounds}"
    _write_result(result, out)
    views: dict[str, dict[str, object]] = result["views"]
    for name, v in views.items():
        console.print(f"{name}: {v['html_bytes']:,} B of HTML, {v['weight_bytes']:,} B in "
                      f"all; interactive at {v['tti_ms']} ms (median)",
                      highlight=False)


@bench_app.command("fuzz")
def bench_fuzz(
    bundle: Annotated[str, typer.Option(help="Bundle to serve.")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/fuzz.json",
    max_examples: Annotated[int, typer.Option(
        min=1, max=10_000, help="schemathesis cases per operation and phase.")] = 100,
    grpc_cases: Annotated[int, typer.Option(min=1, max=100_000, help="Calls per funnel.v1 "
                                            "method.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of both fuzzers.")] = 0,
) -> None:
    """Fuzz the HTTP API from its OpenAPI document (schemathesis) and funnel.v1 over gRPC
    with malformed and arbitrary messages; counts cases, 5xx and server errors."""
    from benchmarks.fuzz import run

    console = Console(stderr=True)
    result = run(bundle=bundle, max_examples=max_examples, grpc_cases=grpc_cases, seed=seed,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)
    bad = len(result["http"]["server_errors"]) + result["grpc"]["bad_count"]
    if bad or result["http"]["exit_code"] != 0:
        raise typer.Exit(1)


def _duration(text: str) -> float:
    from benchmarks.soak import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


@bench_app.command("soak")
def bench_soak(
    bundle: Annotated[str, typer.Option(help="Bundle to serve (a copy is the canary and the "
                                        "shadow).")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/soak.json",
    duration: Annotated[str, typer.Option(help="How long to hold the load: 10m, 90s, 1h.",
                                          callback=_duration)] = "10m",
    load: Annotated[float, typer.Option(min=0.05, max=1.0, help="Share of the measured "
                                        "maximum throughput to offer.")] = 0.7,
    users: Annotated[int, typer.Option(min=1, max=1000, help="locust users (the probe "
                                       "doubles up to it).")] = 24,
    probe_s: Annotated[float, typer.Option(min=10, max=3600, help="Seconds of each step of "
                                           "the maximum-throughput probe.")] = 30,
    ingress: Annotated[Ingress, typer.Option(
        help="`funnel serve --ingress` of the stack.")] = Ingress.proxy,
    ingress_replicas: Annotated[int, typer.Option(
        min=1, max=16, help="FeedIngress replicas of the stack.")] = 1,
) -> None:
    """Mixed traffic (feed 90 %, moderation 10 %) with a canary and a shadow live, at a share
    of the measured maximum throughput, from locust in its own process: throughput, p50/p99
    per minute, errors, each process's memory at start and end, records logged vs served."""
    from benchmarks.soak import run

    console = Console(stderr=True)
    result = run(bundle=bundle, duration_s=float(duration), load=load,
                 users=users, probe_s=probe_s, ingress=ingress.value,
                 ingress_replicas=ingress_replicas,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)
    if not result["ok"]:
        raise typer.Exit(1)


@bench_app.command("drift")
def bench_drift(
    bundle: Annotated[str, typer.Option(help="Bundle whose towers and ranker score the "
                                        "synthetic rows.")] = "artifacts/latest",
    out: Annotated[str, typer.Option(help="Result JSON.")] = "benchmarks/results/drift.json",
    profile: Annotated[str, typer.Option(help="Synthetic profile of the detection data.")] = (
        "demo"),
    windows: Annotated[int, typer.Option(min=1, max=500, help="Windows per scenario.")] = 50,
    requests: Annotated[int, typer.Option(min=100, help="Requests per window.")] = 5000,
    timing_rows: Annotated[int, typer.Option(min=1000, help="Rows of the timed window.")] = (
        100_000),
    only: Annotated[list[str] | None, typer.Option(
        help="Parts to run: detection, timing (default: both).")] = None,
) -> None:
    """Drift detection power on injected drift, false alarms, and run time / peak memory."""
    from benchmarks.drift import run

    console = Console(stderr=True)
    result = run(bundle=bundle, profile=profile, windows=windows, requests=requests,
                 timing_rows=timing_rows, parts=only or ["detection", "timing"],
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


@bench_app.command("experiments")
def bench_experiments(
    out: Annotated[str, typer.Option(help="Result JSON.")] = (
        "benchmarks/results/experiments.json"),
    profile: Annotated[str, typer.Option(help="Synthetic profile whose hidden truth the "
                                         "simulated users follow.")] = "demo",
    runs: Annotated[int, typer.Option(min=2, max=1000, help="Simulated experiments per "
                                      "scenario.")] = 50,
    aa_runs: Annotated[int, typer.Option(min=0, max=10_000, help="Extra A/A runs at the "
                                         "planned size (false-positive rate).")] = 250,
    seed: Annotated[int, typer.Option(help="Seed of the profile and the simulation.")] = 0,
    user_click_sd: Annotated[float, typer.Option(
        min=0.0, max=5.0, help="Spread of the users' click propensity (sd of a per-user "
        "offset on the click logit); 0: the generator as it is.")] = 0.0,
) -> None:
    """Simulated A/B and interleaving experiments: detection at the planned size, A/A false
    positives, impressions each method needs."""
    from benchmarks.experiments import Settings, run

    console = Console(stderr=True)
    result = run(profile=profile, runs=runs, aa_runs=aa_runs, seed=seed,
                 settings=Settings(user_click_sd=user_click_sd),
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)
