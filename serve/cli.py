"""The `funnel` command line. Subcommands live beside the code they drive; this module only
assembles them and maps Funnel's errors to one clear line and an exit code."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from training.cli import data_app, train
from training.errors import FunnelError

app = typer.Typer(help="Funnel: feed serving with built-in moderation.", no_args_is_help=True,
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
) -> None:
    """Serve the feed: local Ray, Triton (PyTriton) and the Serve app on 127.0.0.1."""
    from serve.runner import serve_forever

    console = Console(stderr=True)
    serve_forever(config_path=config, bundle=bundle, triton=triton.value,
                  say=lambda m: console.print(f"[bold]funnel[/] {m}", highlight=False),
                  ready_file=ready_file)


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


def main() -> None:
    try:
        app()
    except FunnelError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
