"""The `funnel` command line. Subcommands live beside the code they drive (training/,
monitoring/, serve/, and benchmarks/ in a source checkout); this module only assembles them
and maps Funnel's errors to one clear line and an exit code."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import serve
from funnel.contracts.errors import FunnelError
from funnel.registry.cli import bundle_app
from monitoring.cost_cli import cost_app
from monitoring.drift_cli import drift_app
from monitoring.experiments_cli import experiment_app
from serve.proxy_mode import Ingress
from training.cli import data_app, train_app

app = typer.Typer(help="Funnel: feed serving with built-in moderation.", no_args_is_help=True,
                  rich_markup_mode="markdown",  # docstrings reflow: no breaks mid-sentence
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(bundle_app, name="bundle")


@app.command("bundle-verify")
def bundle_verify(path: str = typer.Argument("artifacts/latest",
                                             help="Bundle directory or artifacts/.")) -> None:
    """Verify every checksum of a bundle; exit 2 naming the first bad file."""
    from funnel.contracts.bundle import verify_bundle

    b = verify_bundle(path)
    Console().print(f"ok: bundle {b.version} at {b.path} ({len(b.manifest['files'])} files "
                    "verified)")


DEFAULT_SERVE_CONFIG = str(Path(serve.__file__).parent / "configs" / "local.yaml")


class RankerBackend(StrEnum):
    triton = "triton"
    local = "local"


class TritonMode(StrEnum):
    local = "local"
    external = "external"


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
    ranker: Annotated[RankerBackend | None, typer.Option(
        help="Ranker backend (default: the config's args.feed.ranker.backend, triton): "
             "'triton' (Triton's dynamic batching; started here with --triton local) or "
             "'local' (the bundle's TorchScript in each feed replica; no Triton).")] = None,
    bundle_version: Annotated[str | None, typer.Option(
        help="Serve this bundle version from the model registry ($FUNNEL_REGISTRY_URL or the "
             "config's args.registry): pulled into the bundle root, every checksum checked, "
             "when the root lacks it. Instead of --bundle.")] = None,
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
                  ready_file=ready_file, grpc=grpc,
                  ranker=ranker.value if ranker is not None else None,
                  bundle_version=bundle_version)


@app.command("triton")
def triton_cmd(
    bundle: Annotated[str | None, typer.Option(help="Bundle directory.")] = None,
    config: Annotated[str, typer.Option(help="Ray Serve config file (its args.triton).")] = (
        DEFAULT_SERVE_CONFIG),
    bundle_version: Annotated[str | None, typer.Option(
        help="This bundle version from the model registry, pulled into the bundle root when "
             "the root lacks it (instead of --bundle).")] = None,
) -> None:
    """Run only Triton with the bundle's ranker (what `funnel serve` starts and supervises)."""
    from serve.runner import run_triton_process

    console = Console(stderr=True)
    run_triton_process(config_path=config, bundle=bundle, bundle_version=bundle_version,
                       say=lambda m: console.print(f"[bold]funnel[/] {m}", highlight=False))


def _rollout_app() -> typer.Typer:
    from serve.rollout.cli import rollout_app

    return rollout_app


app.add_typer(_rollout_app(), name="rollout")
app.add_typer(drift_app, name="drift")
app.add_typer(experiment_app, name="experiment")
app.add_typer(cost_app, name="cost")

from serve.moderation.cli import moderation_app  # noqa: E402

app.add_typer(moderation_app, name="moderation")
from serve.features.cli import features_app  # noqa: E402

app.add_typer(features_app, name="features")
from serve.users.cli import users_app  # noqa: E402

app.add_typer(users_app, name="users")
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
    from serve.review.base import open_store
    from serve.review.export import export_labels

    _, args = load_serve_config(config)
    url = database_url or os.environ.get(args.review.database_url_env) or (
        args.review.database_url)
    store = open_store(url, store_class=args.review.store_class)
    try:
        counts = export_labels(store, out)
    finally:
        store.close()
    Console(stderr=True).print(
        f"[bold]funnel[/] wrote {out}: {counts['rows']} decisions ({counts['blocked']} block, "
        f"{counts['allowed']} allow, {counts['with_text']} with text) from {store.safe_url}"
        + (f"; {counts['skipped_no_label']} blocks without a flagged label left out"
           if counts["skipped_no_label"] else ""), highlight=False)


def _mount_bench() -> None:
    """`funnel bench` comes from the `benchmarks` package of a source checkout (it is not in
    the wheel): mounted when importable, absent otherwise."""
    try:
        from benchmarks.cli import bench_app
    except ModuleNotFoundError as e:
        if e.name != "benchmarks" and not (e.name or "").startswith("benchmarks."):
            raise
        return
    app.add_typer(bench_app, name="bench")


_mount_bench()


def main() -> None:
    try:
        app()
    except FunnelError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
