"""The registry's relational index: one row per bundle version, one per file checksum, where
each version serves, and an append-only audit of every change.

SQLAlchemy Core on SQLite (a file, embedded: the default) or PostgreSQL (a cluster; a plain
`postgresql://` URL is read as psycopg 3). Alembic creates or upgrades the schema when the
index opens (`funnel/registry/migrations`, with a version table of its own, so the index may
share a database with the review queue).

The rules that need the database to hold under concurrency are single statements here:
- a push claims its version with an INSERT on the primary key: of two concurrent pushes of
  one version, exactly one inserts; the other gets `RegistryConflictError`;
- a claim left by a push that died can be taken over only after `stale_after`, by one
  conditional UPDATE (so two takers cannot both win);
- a push finishes by flipping `pushing` to `staged` in the same transaction as its files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from funnel.contracts.errors import (
    InvalidInputError,
    RegistryConflictError,
    RegistryError,
    UnknownVersionError,
)
from funnel.sqldb import create_engine, migrate, normalise_url, safe_url

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
STATUSES = ("pushing", "staged", "serving", "retired")

metadata = sa.MetaData()
bundles = sa.Table(
    "registry_bundles", metadata,
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16)), sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("trained_by", sa.Text()), sa.Column("dataset_fingerprint", sa.String(128)),
    sa.Column("parent_version", sa.String(128)), sa.Column("metrics", sa.JSON()),
    sa.Column("manifest_sha256", sa.String(64)), sa.Column("size_bytes", sa.BigInteger()),
    sa.Column("pushed_by", sa.String(128)), sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("pushed_at", sa.DateTime(timezone=True)),
    sa.Column("promoted_by", sa.String(128)),
    sa.Column("promoted_at", sa.DateTime(timezone=True)),
    sa.Column("retired_by", sa.String(128)), sa.Column("retired_at", sa.DateTime(timezone=True)),
)
files = sa.Table(
    "registry_files", metadata,
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(512), primary_key=True),
    sa.Column("sha256", sa.String(64)), sa.Column("size_bytes", sa.BigInteger()),
)
serving = sa.Table(
    "registry_serving", metadata,
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("stage", sa.String(32), primary_key=True),
    sa.Column("variant", sa.String(64), primary_key=True),
    sa.Column("since", sa.DateTime(timezone=True)),
)
events = sa.Table(
    "registry_events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("version", sa.String(128)), sa.Column("action", sa.String(32)),
    sa.Column("actor", sa.String(128)), sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("detail", sa.JSON()),
)


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class BundleRecord:
    """One version as the index holds it."""

    version: str
    status: str
    created_at: datetime | None
    trained_by: str | None
    dataset_fingerprint: str | None
    parent_version: str | None
    metrics: dict[str, Any]
    manifest_sha256: str | None
    size_bytes: int
    pushed_by: str
    pushed_at: datetime | None
    promoted_by: str | None = None
    promoted_at: datetime | None = None
    retired_by: str | None = None
    retired_at: datetime | None = None
    serving: tuple[tuple[str, str], ...] = ()  # (stage, variant)
    files: tuple[FileRecord, ...] = field(default=(), compare=False)

    def as_json(self) -> dict[str, Any]:
        def t(d: datetime | None) -> str | None:
            return d.isoformat(timespec="seconds") if d else None

        return {"version": self.version, "status": self.status,
                "created_at": t(self.created_at), "trained_by": self.trained_by,
                "dataset_fingerprint": self.dataset_fingerprint,
                "parent_version": self.parent_version, "metrics": self.metrics,
                "manifest_sha256": self.manifest_sha256, "size_bytes": self.size_bytes,
                "pushed_by": self.pushed_by, "pushed_at": t(self.pushed_at),
                "promoted_by": self.promoted_by, "promoted_at": t(self.promoted_at),
                "retired_by": self.retired_by, "retired_at": t(self.retired_at),
                "serving": [{"stage": s, "variant": v} for s, v in self.serving],
                "files": {f.path: f.sha256 for f in self.files}}


def _utc(dt: datetime | None) -> datetime | None:
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=UTC)


class RegistryIndex:
    """The index on one database URL. Thread-safe; every method is one transaction."""

    def __init__(self, url: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.url = normalise_url(url)
        self._clock = clock
        self.engine = create_engine(self.url, what="registry database",
                                    error=InvalidInputError)
        migrate(self.engine, script_location=_MIGRATIONS, lock_key=7247810026,
                what="registry index", error=RegistryError)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return safe_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    # ---- pushes ----------------------------------------------------------------------------
    def claim(self, version: str, *, actor: str, stale_after: timedelta) -> None:
        """Claim `version` for a push. Refused when the version exists (immutable), or when
        another push holds it and is younger than `stale_after`."""
        now = self._clock()
        row = {"version": version, "status": "pushing", "metrics": {}, "size_bytes": 0,
               "pushed_by": actor, "claimed_at": now}
        try:
            with self.engine.begin() as conn:
                conn.execute(bundles.insert().values(**row))
            return
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as conn:
            took = conn.execute(
                bundles.update()
                .where(bundles.c.version == version, bundles.c.status == "pushing",
                       bundles.c.claimed_at < now - stale_after)
                .values(pushed_by=actor, claimed_at=now)).rowcount
            if took:
                conn.execute(files.delete().where(files.c.version == version))
                self._event(conn, version, "push-takeover", actor, {})
                return
            cur = conn.execute(sa.select(bundles.c.status, bundles.c.pushed_by,
                                         bundles.c.claimed_at)
                               .where(bundles.c.version == version)).first()
        if cur is not None and cur.status == "pushing":
            raise RegistryConflictError(
                f"bundle {version} is being pushed by {cur.pushed_by} (since "
                f"{_utc(cur.claimed_at):%Y-%m-%d %H:%M:%S} UTC); one push of a version wins. "
                f"A push that died is taken over after {stale_after}")
        raise RegistryConflictError(
            f"bundle {version} is already in the registry ({cur.status if cur else '?'}); "
            "versions are immutable: train a new version instead")

    def finish(self, version: str, *, actor: str, manifest: Mapping[str, Any],
               manifest_sha256: str, file_records: Iterable[FileRecord]) -> None:
        """Record a finished push: its files and manifest metadata, status `staged`. Refused
        when the claim is no longer this push's (taken over as stale)."""
        recs = list(file_records)
        lineage = manifest.get("lineage") or {}
        with self.engine.begin() as conn:
            n = conn.execute(
                bundles.update()
                .where(bundles.c.version == version, bundles.c.status == "pushing",
                       bundles.c.pushed_by == actor)
                .values(status="staged", pushed_at=self._clock(),
                        created_at=_parse_time(manifest.get("created_at")),
                        trained_by=lineage.get("command") or manifest.get("trained_by"),
                        dataset_fingerprint=_fingerprint(manifest),
                        parent_version=lineage.get("parent_version"),
                        metrics=manifest.get("metrics") or {},
                        manifest_sha256=manifest_sha256,
                        size_bytes=sum(r.size_bytes for r in recs))).rowcount
            if not n:
                raise RegistryConflictError(
                    f"bundle {version}: this push lost its claim (another push took it over)")
            conn.execute(files.insert(), [{"version": version, "path": r.path,
                                           "sha256": r.sha256, "size_bytes": r.size_bytes}
                                          for r in recs])
            self._event(conn, version, "push", actor, {"files": len(recs)})

    def abandon(self, version: str, *, actor: str) -> None:
        """Drop this push's claim (a push that failed before finishing)."""
        with self.engine.begin() as conn:
            conn.execute(bundles.delete().where(bundles.c.version == version,
                                                bundles.c.status == "pushing",
                                                bundles.c.pushed_by == actor))

    # ---- reads -----------------------------------------------------------------------------
    def get(self, version: str, *, with_files: bool = True) -> BundleRecord:
        """A finished version (not one still being pushed)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(bundles).where(bundles.c.version == version)).first()
            if row is None or row.status == "pushing":
                raise UnknownVersionError(
                    f"bundle version {version!r} is not in the registry"
                    + (" (its push has not finished)" if row is not None else ""))
            fs = conn.execute(sa.select(files).where(files.c.version == version)
                              .order_by(files.c.path)).all() if with_files else []
            where = conn.execute(sa.select(serving.c.stage, serving.c.variant)
                                 .where(serving.c.version == version)
                                 .order_by(serving.c.stage, serving.c.variant)).all()
        return _record(row, fs, where)

    def versions(self, *, status: str | None = None) -> list[BundleRecord]:
        """Every finished version, newest push first (optionally one status)."""
        q = sa.select(bundles).where(bundles.c.status != "pushing")
        if status is not None:
            q = q.where(bundles.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(bundles.c.pushed_at.desc(),
                                           bundles.c.version.desc())).all()
            where = conn.execute(sa.select(serving)).all()
        by_version: dict[str, list[tuple[str, str]]] = {}
        for w in where:
            by_version.setdefault(w.version, []).append((w.stage, w.variant))
        return [_record(r, [], sorted(by_version.get(r.version, []))) for r in rows]

    def events(self, version: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(events).order_by(events.c.id)
        if version is not None:
            q = q.where(events.c.version == version)
        with self.engine.connect() as conn:
            return [{"version": r.version, "action": r.action, "actor": r.actor,
                     "at": _utc(r.at), "detail": r.detail} for r in conn.execute(q)]

    # ---- lifecycle -------------------------------------------------------------------------
    def promote(self, version: str, *, stage: str, variant: str, actor: str) -> None:
        """Record that `version` serves `stage` as `variant` (the variant's previous version
        stops serving there; a version serving nowhere goes back to `staged`)."""
        now = self._clock()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(bundles.c.status).where(
                bundles.c.version == version)).first()
            if row is None or row.status == "pushing":
                raise UnknownVersionError(f"bundle version {version!r} is not in the registry")
            if row.status == "retired":
                raise RegistryConflictError(
                    f"bundle {version} is retired; a retired version does not serve again")
            before = [r.version for r in conn.execute(sa.select(serving.c.version).where(
                serving.c.stage == stage, serving.c.variant == variant,
                serving.c.version != version))]
            conn.execute(serving.delete().where(serving.c.stage == stage,
                                                serving.c.variant == variant))
            conn.execute(serving.insert().values(version=version, stage=stage,
                                                 variant=variant, since=now))
            conn.execute(bundles.update().where(bundles.c.version == version).values(
                status="serving", promoted_by=actor, promoted_at=now))
            for old in before:
                still = conn.execute(sa.select(sa.func.count()).select_from(serving).where(
                    serving.c.version == old)).scalar_one()
                if not still:
                    conn.execute(bundles.update().where(bundles.c.version == old,
                                                        bundles.c.status == "serving")
                                 .values(status="staged"))
            self._event(conn, version, "promote", actor,
                        {"stage": stage, "variant": variant, "replaced": before})

    def record_serving(self, rows: Iterable[tuple[str, str, str]], *, actor: str) -> list[str]:
        """Replace where versions serve with `rows` (version, stage, variant): what a live
        rollout serves, recorded by its controller whenever its routing changes. Versions the
        index does not hold (local-only bundles) are skipped and returned; a version that
        starts serving records `actor` as its promoter, one that stops goes back to staged."""
        now = self._clock()
        wanted = sorted(set(rows))
        with self.engine.begin() as conn:
            known = {r.version: r.status for r in conn.execute(
                sa.select(bundles.c.version, bundles.c.status).where(
                    bundles.c.version.in_({v for v, _, _ in wanted})))}
            kept = [r for r in wanted if known.get(r[0]) in ("staged", "serving")]
            before = {r.version for r in conn.execute(sa.select(serving.c.version))}
            conn.execute(serving.delete())
            if kept:
                conn.execute(serving.insert(), [{"version": v, "stage": s, "variant": n,
                                                 "since": now} for v, s, n in kept])
            now_serving = {v for v, _, _ in kept}
            for v in now_serving - before:
                conn.execute(bundles.update().where(bundles.c.version == v).values(
                    status="serving", promoted_by=actor, promoted_at=now))
                self._event(conn, v, "serving", actor, {
                    "where": [f"{s}/{n}" for vv, s, n in kept if vv == v]})
            for v in before - now_serving:
                conn.execute(bundles.update().where(bundles.c.version == v,
                                                    bundles.c.status == "serving")
                             .values(status="staged"))
                self._event(conn, v, "not-serving", actor, {})
        return sorted({v for v, _, _ in wanted} - set(known))

    def retire(self, version: str, *, actor: str, in_use: Iterable[str] = ()) -> None:
        """Mark `version` retired. Refused while it serves anywhere the index knows of, or
        is in `in_use` (the versions a live rollout config names)."""
        live = set(in_use)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(bundles.c.status).where(
                bundles.c.version == version)).first()
            if row is None or row.status == "pushing":
                raise UnknownVersionError(f"bundle version {version!r} is not in the registry")
            where = [f"{r.stage}/{r.variant}" for r in conn.execute(
                sa.select(serving.c.stage, serving.c.variant).where(
                    serving.c.version == version))]
            if where or version in live:
                named = ", ".join(where) or "the live rollout config"
                raise RegistryConflictError(
                    f"bundle {version} cannot be retired: it serves ({named}). Roll it out "
                    "of the config first")
            conn.execute(bundles.update().where(bundles.c.version == version).values(
                status="retired", retired_by=actor, retired_at=self._clock()))
            self._event(conn, version, "retire", actor, {})

    def record(self, version: str, action: str, actor: str, detail: Mapping[str, Any]) -> None:
        """An audit row of its own (e.g. a verification's outcome)."""
        with self.engine.begin() as conn:
            self._event(conn, version, action, actor, detail)

    def _event(self, conn: sa.Connection, version: str, action: str, actor: str,
               detail: Mapping[str, Any]) -> None:
        conn.execute(events.insert().values(version=version, action=action, actor=actor,
                                            at=self._clock(), detail=dict(detail)))


def _record(row: Any, fs: Iterable[Any], where: Iterable[Any]) -> BundleRecord:
    return BundleRecord(
        version=row.version, status=row.status, created_at=_utc(row.created_at),
        trained_by=row.trained_by, dataset_fingerprint=row.dataset_fingerprint,
        parent_version=row.parent_version, metrics=row.metrics or {},
        manifest_sha256=row.manifest_sha256, size_bytes=int(row.size_bytes or 0),
        pushed_by=row.pushed_by, pushed_at=_utc(row.pushed_at), promoted_by=row.promoted_by,
        promoted_at=_utc(row.promoted_at), retired_by=row.retired_by,
        retired_at=_utc(row.retired_at), serving=tuple((w[0], w[1]) for w in where),
        files=tuple(FileRecord(f.path, f.sha256, int(f.size_bytes)) for f in fs))


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return _utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None


def _fingerprint(manifest: Mapping[str, Any]) -> str | None:
    ds = manifest.get("dataset") or {}
    fp = ds.get("fingerprint") if isinstance(ds, Mapping) else None
    return str(fp) if fp else None
