"""The `funnel` command line. Subcommands live beside the code they drive; this module only
assembles them and maps Funnel's errors to one clear line and an exit code."""

from __future__ import annotations

import sys

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


def main() -> None:
    try:
        app()
    except FunnelError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
