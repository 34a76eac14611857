"""`funnel users add|list|disable|enable|rotate|role`: the console's accounts, in the review
database the serving app uses (the config's `review.database_url`, or the environment
variable it names, or `--database-url`).

A password is read from the terminal (twice, hidden), from one line of standard input
(`--password-stdin`, for scripts), or generated (`--generate`: printed once, on standard
output, and nowhere else). Bad input exits 2 naming what is wrong."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from serve.users.accounts import (
    AccountError,
    check_password,
    check_role,
    generate_password,
    hash_password,
)

if TYPE_CHECKING:
    from serve.users.store import UserStore

users_app = typer.Typer(help="Console accounts: reviewers and admins (docs/console.md).",
                        no_args_is_help=True)

ConfigOpt = Annotated[str | None, typer.Option(
    help="Ray Serve config whose args.review names the database (default: the shipped "
    "local config).")]
UrlOpt = Annotated[str | None, typer.Option(
    help="Review database URL (default: $FUNNEL_REVIEW_DATABASE_URL, else the config's "
    "args.review.database_url).")]
StdinOpt = Annotated[bool, typer.Option("--password-stdin",
                                        help="Read the password from one line of stdin.")]
GenerateOpt = Annotated[bool, typer.Option("--generate",
                                           help="Generate a password and print it once.")]


def _store(config: str | None, database_url: str | None) -> UserStore:
    from serve.config import load_serve_config
    from serve.users.store import UserStore

    if database_url is None:
        from pathlib import Path

        import serve

        path = config or str(Path(serve.__file__).parent / "configs" / "local.yaml")
        _, args = load_serve_config(path)
        database_url = os.environ.get(args.review.database_url_env) or (
            args.review.database_url)
    return UserStore(database_url)


@contextmanager
def _opened(config: str | None, database_url: str | None) -> Iterator[UserStore]:
    store = _store(config, database_url)
    try:
        yield store
    finally:
        store.close()


def _password(stdin: bool, generate: bool) -> tuple[str, bool]:
    """(password, generated)."""
    if stdin and generate:
        raise typer.BadParameter("give one of --password-stdin and --generate",
                                 param_hint="--generate")
    if generate:
        return generate_password(), True
    if stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        try:
            return check_password(line), False
        except AccountError as e:
            raise typer.BadParameter(str(e), param_hint="--password-stdin") from e
    if not sys.stdin.isatty():
        raise typer.BadParameter("no terminal to ask for the password: give --password-stdin "
                                 "or --generate", param_hint="--password-stdin")
    while True:
        p = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            return check_password(p), False
        except AccountError as e:
            Console(stderr=True).print(f"[red]{e}[/]", highlight=False)


def _say(message: str) -> None:
    Console(stderr=True).print(f"[bold]users[/] {message}", highlight=False)


@users_app.command("add")
def add(name: Annotated[str, typer.Argument(help="Account name (letters, digits, . _ @ -).")],
        role: Annotated[str, typer.Option(help="reviewer or admin.")] = "reviewer",
        password_stdin: StdinOpt = False, generate: GenerateOpt = False,
        config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """Add an account."""
    from serve.users.accounts import check_name

    try:
        check_name(name)
        r = check_role(role)
    except AccountError as e:
        raise typer.BadParameter(str(e)) from e
    password, generated = _password(password_stdin, generate)
    with _opened(config, database_url) as store:
        store.add(name, role=r, password_hash=hash_password(password))
    _say(f"added {name} ({r}) to {store.safe_url}")
    if generated:
        typer.echo(password)


@users_app.command("rotate")
def rotate(name: Annotated[str, typer.Argument(help="Account name.")],
           password_stdin: StdinOpt = False, generate: GenerateOpt = False,
           config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """Give an account a new password; its signed-in sessions end."""
    with _opened(config, database_url) as store:
        store.require(name)
        password, generated = _password(password_stdin, generate)
        store.set_password(name, hash_password(password))
    _say(f"new password for {name}; its sessions have ended")
    if generated:
        typer.echo(password)


@users_app.command("disable")
def disable(name: Annotated[str, typer.Argument(help="Account name.")],
            config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """Refuse an account's sign-in and API calls; its sessions end at once."""
    with _opened(config, database_url) as store:
        store.set_disabled(name, True)
    _say(f"disabled {name}")


@users_app.command("enable")
def enable(name: Annotated[str, typer.Argument(help="Account name.")],
           config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """Enable a disabled account again (with its password as it was)."""
    with _opened(config, database_url) as store:
        store.set_disabled(name, False)
    _say(f"enabled {name}")


@users_app.command("role")
def set_role(name: Annotated[str, typer.Argument(help="Account name.")],
             role: Annotated[str, typer.Argument(help="reviewer or admin.")],
             config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """Change an account's role; its sessions end (they carried the old role)."""
    try:
        r = check_role(role)
    except AccountError as e:
        raise typer.BadParameter(str(e), param_hint="ROLE") from e
    with _opened(config, database_url) as store:
        store.set_role(name, r)
    _say(f"{name} is now {r}")


@users_app.command("list")
def list_users(config: ConfigOpt = None, database_url: UrlOpt = None) -> None:
    """The accounts: name, role, state, last change (never a password or hash)."""
    from rich.table import Table

    with _opened(config, database_url) as store:
        rows = store.list()
    t = Table("name", "role", "state", "changed (UTC)")
    for u in rows:
        t.add_row(u.name, u.role, "disabled" if u.disabled else "enabled",
                  u.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console().print(t)
