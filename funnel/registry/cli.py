"""`funnel bundle`: the model registry from the command line (docs/registry.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from funnel.contracts.errors import BundleError
from funnel.registry.registry import DATABASE_ENV, STORE_ENV, Registry, record_json

bundle_app = typer.Typer(
    help="The model registry: bundles in object storage, their metadata in a relational "
    f"index. Where: --registry / ${STORE_ENV} (an fsspec URL: a directory, s3://bucket/prefix) "
    f"and --registry-db / ${DATABASE_ENV} (sqlite:///FILE, postgresql://...); default: "
    "./registry with an embedded SQLite index.", no_args_is_help=True)

RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", help=f"Object store URL (default ${STORE_ENV}, else ./registry/objects).")]
RegistryDbOpt = Annotated[str | None, typer.Option(
    "--registry-db", help=f"Index database URL (default ${DATABASE_ENV}, else "
    "sqlite:///registry/index.sqlite3 beside a local store).")]
ActorOpt = Annotated[str | None, typer.Option(
    help="Who acts, for the audit (default $FUNNEL_ACTOR, else the login name).")]


def _err() -> Console:
    return Console(stderr=True)


def _say(message: str) -> None:
    _err().print(f"[bold]funnel[/] {message}", highlight=False)


@contextlib.contextmanager
def _registry(store: str | None, db: str | None) -> Iterator[Registry]:
    r = Registry.open(store, db)
    try:
        yield r
    finally:
        r.close()


@bundle_app.command("push")
def push(bundle: Annotated[Path, typer.Argument(help="Bundle directory (or artifacts/, for "
                                                "its latest).")],
         registry: RegistryOpt = None, registry_db: RegistryDbOpt = None,
         actor: ActorOpt = None) -> None:
    """Verify a local bundle and upload it as a new, immutable version (status `staged`)."""
    with _registry(registry, registry_db) as r:
        rec = r.push(bundle, actor=actor, say=_say)
        _say(f"pushed {rec.version}: {len(rec.files)} files, {rec.size_bytes:,} bytes to "
             f"{r.store.url} (index {r.index.safe_url})")


@bundle_app.command("list")
def list_cmd(status: Annotated[str | None, typer.Option(
                 help="Only this status: staged, serving or retired.")] = None,
             json_out: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
             registry: RegistryOpt = None, registry_db: RegistryDbOpt = None) -> None:
    """The registry's versions, newest push first."""
    if status is not None and status not in ("staged", "serving", "retired"):
        raise typer.BadParameter("one of staged, serving, retired", param_hint="--status")
    with _registry(registry, registry_db) as r:
        recs = r.list(status)
    if json_out:
        for rec in recs:
            typer.echo(record_json(rec).replace("\n", "").replace("  ", ""))
        return
    t = Table("version", "status", "serving", "created (UTC)", "pushed by", "size")
    for rec in recs:
        t.add_row(rec.version, rec.status,
                  ", ".join(f"{s}/{v}" for s, v in rec.serving) or "–",
                  f"{rec.created_at:%Y-%m-%d %H:%M}" if rec.created_at else "–",
                  rec.pushed_by.split("#")[0], f"{rec.size_bytes / 2**20:,.1f} MiB")
    Console().print(t)


@bundle_app.command("show")
def show(version: str, files: Annotated[bool, typer.Option(help="With every file's "
                                                           "sha256.")] = False,
         registry: RegistryOpt = None, registry_db: RegistryDbOpt = None) -> None:
    """One version's record (JSON): lineage, metrics, status, where it serves, who promoted
    it."""
    with _registry(registry, registry_db) as r:
        typer.echo(record_json(r.show(version), files=files))


@bundle_app.command("pull")
def pull(version: str,
         cache: Annotated[Path, typer.Option(help="Local bundle directory; the version goes "
                                             "in CACHE/<version>.")] = Path("artifacts"),
         registry: RegistryOpt = None, registry_db: RegistryDbOpt = None) -> None:
    """Download a version, checking every file against the index; nothing lands in the cache
    unless all of them match."""
    with _registry(registry, registry_db) as r:
        b = r.pull(version, cache, say=_say)
    _say(f"{b.version} at {b.path} ({len(b.manifest['files'])} files verified)")


@bundle_app.command("verify")
def verify(version: str, registry: RegistryOpt = None, registry_db: RegistryDbOpt = None,
           actor: ActorOpt = None) -> None:
    """Read a stored version back and check every file against the index; exit 2 naming each
    file that does not match."""
    with _registry(registry, registry_db) as r:
        report = r.verify(version, actor=actor)
    if not report.ok:
        raise BundleError(f"bundle {version} in the registry: " + "; ".join(report.bad))
    _say(f"ok: {version}, {report.checked} stored files match the index")


@bundle_app.command("promote")
def promote(version: str,
            stage: Annotated[str, typer.Option(help="The stage it serves: all, retrieval, "
                                               "ranker or moderation.")] = "all",
            variant: Annotated[str, typer.Option(help="The variant it serves as.")] = "primary",
            registry: RegistryOpt = None, registry_db: RegistryDbOpt = None,
            actor: ActorOpt = None) -> None:
    """Record that a version serves a stage as a variant (status `serving`); the version that
    served there before goes back to `staged` if it serves nowhere else."""
    if stage not in ("all", "retrieval", "ranker", "moderation"):
        raise typer.BadParameter("one of all, retrieval, ranker, moderation",
                                 param_hint="--stage")
    with _registry(registry, registry_db) as r:
        rec = r.promote(version, stage=stage, variant=variant, actor=actor)
    _say(f"{rec.version}: serving {', '.join(f'{s}/{v}' for s, v in rec.serving)}")


@bundle_app.command("retire")
def retire(version: str,
           in_use: Annotated[list[str] | None, typer.Option(
               "--in-use", help="A version the live rollout config names (repeatable): "
               "retiring it is refused.")] = None,
           registry: RegistryOpt = None, registry_db: RegistryDbOpt = None,
           actor: ActorOpt = None) -> None:
    """Mark a version retired; refused while it serves."""
    with _registry(registry, registry_db) as r:
        rec = r.retire(version, actor=actor, in_use=in_use or ())
    _say(f"{rec.version}: retired by {rec.retired_by}")
