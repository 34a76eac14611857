"""A relational database by SQLAlchemy URL, its schema kept by Alembic: what the review queue
(serve/review/store.py) and the model registry's index (funnel/registry/index.py) share.

SQLite (a file, embedded) or PostgreSQL (a plain `postgresql://` URL is read as psycopg 3,
the driver installed). Several processes may open one database at once; `migrate` serialises
them (a PostgreSQL advisory lock per schema; on SQLite the losing writer retries).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from funnel.contracts.errors import FunnelError


def normalise_url(url: str) -> str:
    """`postgresql://` -> psycopg 3 (the driver installed); other URLs unchanged."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def safe_url(url: str) -> str:
    """The URL with any password hidden, for logs and errors."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def create_engine(url: str, *, what: str, error: type[FunnelError]) -> sa.Engine:
    """An engine on `url` (already normalised); `error` naming `what` when the URL is
    unusable. PostgreSQL: a connect to a database that stops answering fails after 5 s, not
    the OS's minutes. SQLite: a writer waits up to 30 s for another's lock, and the file's
    directory is made."""
    kw: dict[str, Any] = {"pool_pre_ping": True}
    try:
        if url.startswith("postgresql"):
            kw["connect_args"] = {"connect_timeout": 5}
        if url.startswith("sqlite"):
            kw["connect_args"] = {"timeout": 30}
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(url, **kw)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise error(f"{what} URL {url!r} is not usable: {e}; use sqlite:///PATH or "
                    "postgresql://USER@HOST:PORT/DB") from e


def migrate(engine: sa.Engine, *, script_location: Path, lock_key: int, what: str,
            error: type[FunnelError], attempts: int = 5) -> None:
    """Create or upgrade the schema to the newest Alembic revision of `script_location`."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({int(lock_key)})"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        except sa.exc.OperationalError as e:
            if attempt == attempts - 1:
                where = engine.url.render_as_string(hide_password=True)
                raise error(f"cannot migrate the {what} ({where}): {e.orig}") from e
            time.sleep(0.5 * (attempt + 1))
