"""The `funnel` command line. Subcommands live beside the code they drive; this module only
assembles them and maps Funnel's errors to one clear line and an exit code."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from monitoring.drift_cli import drift_app
from monitoring.experiments_cli import experiment_app
from training.cli import data_app, train
from training.errors import FunnelError

app = typer.Typer(help="Funnel: feed serving with built-in moderation.", no_args_is_help=True,
                  rich_markup_mode="markdown",  # docstrings reflow: no breaks mid-sentence
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(data_app, name="data")
app.command("train")(train)


@app.command("bundle-verify")
def bundle_verify(path: str = typer.Argument("artifacts/latest",
                                             help="Bundle directory or artifacts/.")) -> None:
    """Verify every checksum of a bundle; exit 2 naming the first bad file."""
    from training.bundle import verify_bundle

    b = verify_bundle(path)
    Console().print(f"ok: bundle {b.version} at {b.path} ({len(b.manifest['files'])} files "
                    "verified)")


DEFAULT_SERVE_CONFIG = str(Path(__file__).parent / "configs" / "local.yaml")


class TritonMode(StrEnum):
    local = "local"
    external = "external"


class Ingress(StrEnum):
    proxy = "proxy"
    haproxy = "haproxy"


class TritonRuntime(StrEnum):
    python_backend = "python_backend"
    pytriton = "pytriton"


class Arrivals(StrEnum):
    poisson = "poisson"
    constant = "constant"


class LoadGenerator(StrEnum):
    python = "python"
    h2load = "h2load"


@app.command("serve")
def serve_cmd(
    bundle: Annotated[str | None, typer.Option(
        help="Bundle directory (default: the config's args.bundle, artifacts/latest).")] = None,
    config: Annotated[str, typer.Option(help="Ray Serve config file.")] = DEFAULT_SERVE_CONFIG,
    triton: Annotated[TritonMode, typer.Option(
        help="'local': start and supervise Triton; 'external': use the one at "
             "args.feed.ranker.url.")] = TritonMode.local,
    ready_file: Annotated[str | None, typer.Option(
        help="Write {url, pid} here once the app is ready.")] = None,
    ingress: Annotated[Ingress, typer.Option(
        help="HTTP ingress: 'proxy' (Ray Serve's Python proxy) or 'haproxy' (Ray Serve's "
             "high-throughput mode, ~7 ms less per request; needs haproxy installed, and its "
             "stats/metrics ports listen on all interfaces).")] = Ingress.proxy,
    grpc: Annotated[bool, typer.Option(
        "--grpc", help="Also serve gRPC (funnel.v1 and the Open Inference Protocol) on the "
        "config's grpc_options.port. Off by default: Ray Serve's gRPC proxy listens on every "
        "network interface.")] = False,
) -> None:
    """Serve the feed: local Ray, Triton and the Serve app.

    HTTP on the config's http_options (127.0.0.1:8000 in the shipped config); Triton on
    args.triton's ports. A busy port is refused before anything starts (exit 2).

    The admin routes (/v1/review, /v1/admin/rollout) are on only when FUNNEL_ADMIN_TOKEN
    (args.review.admin_token_env) is set in the environment of this command; clients send it
    as `Authorization: Bearer ...`."""
    from serve.runner import serve_forever

    console = Console(stderr=True)
    serve_forever(config_path=config, bundle=bundle, triton=triton.value, ingress=ingress.value,
                  say=lambda m: console.print(f"[bold]funnel[/] {m}", highlight=False,
                                              soft_wrap=True),
                  ready_file=ready_file, grpc=grpc)


@app.command("triton")
def triton_cmd(
    bundle: Annotated[str | None, typer.Option(help="Bundle directory.")] = None,
    config: Annotated[str, typer.Option(help="Ray Serve config file (its args.triton).")] = (
        DEFAULT_SERVE_CONFIG),
) -> None:
    """Run only Triton with the bundle's ranker (what `funnel serve` starts and supervises)."""
    from serve.runner import run_triton_process

    console = Console(stderr=True)
    run_triton_process(config_path=config, bundle=bundle,
                       say=lambda m: console.print(f"[bold]funnel[/] {m}", highlight=False))


def _rollout_app() -> typer.Typer:
    from serve.rollout.cli import rollout_app

    return rollout_app


app.add_typer(_rollout_app(), name="rollout")
app.add_typer(drift_app, name="drift")
app.add_typer(experiment_app, name="experiment")

review_app = typer.Typer(help="The human-review queue.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Option(help="Parquet file to write (training labels); the "
                                      "default is under artifacts/, which git ignores.")] = Path(
        "artifacts/review-labels.parquet"),
    database_url: Annotated[str | None, typer.Option(
        help="Review database (default: $FUNNEL_REVIEW_DATABASE_URL, else the serve config's "
        "args.review.database_url).")] = None,
    config: Annotated[str, typer.Option(help="Ray Serve config file.")] = DEFAULT_SERVE_CONFIG,
) -> None:
    """Reviewer decisions -> training labels for `funnel train --review-labels`."""
    import os

    from serve.config import load_serve_config
    from serve.review.export import export_labels
    from serve.review.store import ReviewStore

    _, args = load_serve_config(config)
    url = database_url or os.environ.get(args.review.database_url_env) or (
        args.review.database_url)
    store = ReviewStore(url)
    try:
        counts = export_labels(store, out)
    finally:
        store.close()
    Console(stderr=True).print(
        f"[bold]funnel[/] wrote {out}: {counts['rows']} decisions ({counts['blocked']} block, "
        f"{counts['allowed']} allow, {counts['with_text']} with text) from {store.safe_url}"
        + (f"; {counts['skipped_no_label']} blocks without a flagged label left out"
           if counts["skipped_no_label"] else ""), highlight=False)


bench_app = typer.Typer(help="Performance harness (results: benchmarks/results/*.json).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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
) -> None:
    """In-process vs naive Serve vs Funnel: latency at fixed loads, max throughput."""
    from benchmarks.feed import run

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
                 ingress=ingress.value,
                 say=lambda m: console.print(f"[bold]bench[/] {m}", highlight=False))
    _write_result(result, out)


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
) -> None:
    """Mixed traffic (feed 90 %, moderation 10 %) with a canary and a shadow live, at a share
    of the measured maximum throughput, from locust in its own process: throughput, p50/p99
    per minute, errors, each process's memory at start and end, records logged vs served."""
    from benchmarks.soak import run

    console = Console(stderr=True)
    result = run(bundle=bundle, duration_s=float(duration), load=load,
                 users=users, probe_s=probe_s,
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


def main() -> None:
    try:
        app()
    except FunnelError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
