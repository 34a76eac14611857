"""The review queue and the moderation-decision audit, stored through SQLAlchemy: the SQL
implementation of `serve.review.base.ReviewStore`.

SQLite (a file, embedded) by default; any SQLAlchemy URL for PostgreSQL
(`postgresql+psycopg://...`; a plain `postgresql://` URL is read as psycopg 3) in a cluster.
The schema is created or migrated on open by Alembic (`serve/review/migrations`).

Two tables:
- `review_items`: one row per `review` verdict: the content, its scores, the labels that
  crossed a threshold, the policy version; `status` goes pending -> allow | block once.
- `moderation_decisions`: every decision, the model's (on each /v1/moderate) and each
  reviewer's, with who made it. Append-only, enforced by a database trigger. It is also
  the feed's change log: replicas read it by increasing id to learn new verdicts.

A decision is one conditional UPDATE (`... WHERE id = :id AND status = 'pending'`) and its
audit row, in one transaction. Of two concurrent deciders exactly one updates a row; the
other sees 0 rows and gets `AlreadyDecided` (HTTP 409), on SQLite (one writer at a time) and
on PostgreSQL (the second UPDATE waits on the row lock, then re-checks the WHERE).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from funnel.sqldb import create_engine, migrate, normalise_url, safe_url
from serve.errors import (
    AlreadyDecided,
    ReviewDatabaseUrlError,
    ReviewItemNotFound,
    ReviewStoreError,
)
from serve.review.base import DecisionEvent, ItemFilter, ReviewItem, ReviewStatus

log = logging.getLogger("funnel.review")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # never used: created_at is NOT NULL
_MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 7247810001

metadata = sa.MetaData()
review_items = sa.Table(
    "review_items", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("content_id", sa.String(128)), sa.Column("text", sa.Text()),
    sa.Column("has_image", sa.Boolean()), sa.Column("author_id", sa.BigInteger()),
    sa.Column("scores", sa.JSON()), sa.Column("flagged_labels", sa.JSON()),
    sa.Column("reasons", sa.JSON()), sa.Column("policy_version", sa.String(64)),
    sa.Column("model_versions", sa.JSON()), sa.Column("request_id", sa.String(64)),
    sa.Column("status", sa.String(16)), sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("decided_at", sa.DateTime(timezone=True)), sa.Column("decided_by", sa.String(128)),
    sa.Column("decision_note", sa.Text()),
    sa.Column("thumbnail", sa.LargeBinary()), sa.Column("thumbnail_type", sa.String(32)),
)
# what a queue page reads: everything but the thumbnail's bytes
_ITEM_COLUMNS = [c for c in review_items.c if c.name not in ("thumbnail", "thumbnail_type")]
decisions = sa.Table(
    "moderation_decisions", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("content_id", sa.String(128)), sa.Column("review_item_id", sa.BigInteger()),
    sa.Column("source", sa.String(16)), sa.Column("decision", sa.String(16)),
    sa.Column("actor", sa.String(128)), sa.Column("policy_version", sa.String(64)),
    sa.Column("note", sa.Text()), sa.Column("request_id", sa.String(64)),
    sa.Column("at", sa.DateTime(timezone=True)), sa.Column("idempotency_key", sa.String(64)),
)


def migrate_review_schema(engine: Engine, *, attempts: int = 5) -> None:
    """The review database's schema (the queue, the decisions, the console's accounts) at its
    newest revision."""
    migrate(engine, script_location=_MIGRATIONS, lock_key=MIGRATION_LOCK,
            what="review database", error=ReviewStoreError, attempts=attempts)


@contextlib.contextmanager
def transaction(engine: Engine, where: str) -> Iterator[Connection]:
    """One transaction on the review database; unreachable, restarting, or a connection cut
    mid-transaction raises `ReviewStoreError` naming `where` (the caller retries)."""
    try:
        with engine.begin() as conn:
            yield conn
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
        raise ReviewStoreError(f"review database unavailable ({where}): {e.orig}") from e


def _utc(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time here is UTC
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=UTC)


class SqlReviewStore:
    """The review store (serve/review/base.py) on SQLite or PostgreSQL. Thread-safe
    (SQLAlchemy's connection pool); every method is one transaction."""

    def __init__(self, url: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 engine: Engine | None = None) -> None:
        self.url = normalise_url(url)
        self._clock = clock
        self.engine = engine or create_engine(self.url, what="review database",
                                              error=ReviewDatabaseUrlError)
        self.migrate()

    # ---- schema ----------------------------------------------------------------------------
    def migrate(self, *, attempts: int = 5) -> None:
        """Create or upgrade the schema to the newest Alembic revision (several replicas may
        start at once against one database: funnel.sqldb.migrate serialises them)."""
        migrate_review_schema(self.engine, attempts=attempts)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return safe_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def _tx(self) -> contextlib.AbstractContextManager[Connection]:
        return transaction(self.engine, self.safe_url)

    # ---- writes ----------------------------------------------------------------------------
    def record_model_decision(self, *, content_id: str, decision: str, model: str,
                              policy_version: str, request_id: str, text: str | None,
                              has_image: bool, author_id: int | None,
                              scores: Mapping[str, float], flagged_labels: Sequence[str],
                              reasons: Sequence[str], model_versions: Mapping[str, str],
                              idempotency_key: str | None = None, at: datetime | None = None,
                              thumbnail: bytes | None = None) -> int | None:
        """Log the model's decision; for `review`, also queue an item. Returns its id.

        `idempotency_key`: a second call with the same key writes nothing and returns the
        first call's item id (a parked decision retried after its first write committed but
        the answer was lost). `at`: when the decision was made (default now)."""
        now = at or self._clock()
        try:
            with self._tx() as conn:
                if idempotency_key is not None:
                    done = conn.execute(
                        sa.select(decisions.c.review_item_id)
                        .where(decisions.c.idempotency_key == idempotency_key)).first()
                    if done is not None:
                        return cast(int | None, done.review_item_id)
                item_id = None
                if decision == "review":
                    item_id = conn.execute(sa.insert(review_items).values(
                        content_id=content_id, text=text, has_image=has_image,
                        author_id=author_id, scores={k: float(v) for k, v in scores.items()},
                        flagged_labels=list(flagged_labels), reasons=list(reasons),
                        policy_version=policy_version, model_versions=dict(model_versions),
                        request_id=request_id, status="pending", created_at=now,
                        thumbnail=thumbnail,
                        thumbnail_type="image/webp" if thumbnail is not None else None,
                    ).returning(review_items.c.id)).scalar_one()
                conn.execute(sa.insert(decisions).values(
                    content_id=content_id, review_item_id=item_id, source="model",
                    decision=decision, actor=model, policy_version=policy_version,
                    request_id=request_id, at=now, idempotency_key=idempotency_key))
            return item_id
        except sa.exc.IntegrityError as e:
            # two writers of one key at once (two replicas draining one spool): the loser's
            # transaction rolled back whole; the winner's row is the answer
            if idempotency_key is None:
                raise
            with self._tx() as conn:
                done = conn.execute(
                    sa.select(decisions.c.review_item_id)
                    .where(decisions.c.idempotency_key == idempotency_key)).first()
            if done is None:
                raise
            log.info("decision %s was written by another writer first (%s)", idempotency_key,
                     e.orig)
            return cast(int | None, done.review_item_id)

    def decide(self, item_id: int, *, decision: Literal["allow", "block"], reviewer: str,
               note: str | None = None) -> ReviewItem:
        """A reviewer's decision on a pending item: exactly once (else AlreadyDecided)."""
        now = self._clock()
        with self._tx() as conn:
            updated = conn.execute(
                sa.update(review_items)
                .where(review_items.c.id == item_id, review_items.c.status == "pending")
                .values(status=decision, decided_at=now, decided_by=reviewer,
                        decision_note=note)
                .returning(review_items.c.content_id, review_items.c.policy_version)
            ).first()
            if updated is not None:
                conn.execute(sa.insert(decisions).values(
                    content_id=updated.content_id, review_item_id=item_id, source="reviewer",
                    decision=decision, actor=reviewer, policy_version=updated.policy_version,
                    note=note, at=now))
        item = self.get(item_id)  # after commit: what everyone now sees
        if updated is None:
            raise AlreadyDecided(f"review item {item_id} was already decided "
                                 f"({item.status}) by {item.decided_by} at "
                                 f"{item.decided_at.isoformat() if item.decided_at else '?'}")
        return item

    # ---- reads -----------------------------------------------------------------------------
    def get(self, item_id: int) -> ReviewItem:
        with self._tx() as conn:
            row = conn.execute(sa.select(review_items)
                               .where(review_items.c.id == item_id)).mappings().first()
        if row is None:
            raise ReviewItemNotFound(f"no review item with id {item_id}")
        return _item(row)

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's image as the queue keeps it (a small WebP), or None."""
        with self._tx() as conn:
            return cast(bytes | None, conn.execute(
                sa.select(review_items.c.thumbnail).where(review_items.c.id == item_id)
            ).scalar())

    @staticmethod
    def _filtered(q: Any, status: ReviewStatus | None, f: ItemFilter | None) -> Any:
        if status is not None:
            q = q.where(review_items.c.status == status)
        if f is None:
            return q
        if f.label is not None:
            # the JSON list's text holds '"label"' (label names are [a-z0-9_])
            q = q.where(sa.cast(review_items.c.flagged_labels, sa.Text)
                        .contains(f'"{f.label}"', autoescape=True))
        if f.policy_version is not None:
            q = q.where(review_items.c.policy_version == f.policy_version)
        if f.created_before is not None:
            q = q.where(review_items.c.created_at <= f.created_before)
        return q

    def list_items(self, *, status: ReviewStatus | None = "pending", limit: int = 50,
                   after_id: int = 0, where: ItemFilter | None = None) -> list[ReviewItem]:
        """Oldest first (a queue), `limit` at most, ids above `after_id` (paging)."""
        q = self._filtered(sa.select(*_ITEM_COLUMNS).where(review_items.c.id > after_id),
                           status, where)
        with self._tx() as conn:
            rows = conn.execute(q.order_by(review_items.c.id).limit(limit)).mappings().all()
        return [_item(r) for r in rows]

    def count_items(self, *, status: ReviewStatus | None = "pending",
                    where: ItemFilter | None = None) -> int:
        q = self._filtered(sa.select(sa.func.count()).select_from(review_items), status, where)
        with self._tx() as conn:
            return int(conn.execute(q).scalar_one())

    def backlog(self) -> tuple[int, datetime | None]:
        """(pending items, when the oldest pending one arrived): the queue's depth and age
        for metrics and alerts. One indexed aggregate query."""
        q = (sa.select(sa.func.count(), sa.func.min(review_items.c.created_at))
             .where(review_items.c.status == "pending"))
        with self._tx() as conn:
            n, oldest = conn.execute(q).one()
        return int(n), _utc(oldest)

    def decided(self) -> Iterator[ReviewItem]:
        """Every decided item, oldest decision first (for `funnel review export`)."""
        q = (sa.select(review_items).where(review_items.c.status != "pending")
             .order_by(review_items.c.decided_at, review_items.c.id))
        with self._tx() as conn:
            for r in conn.execute(q).mappings():
                yield _item(r)

    def decision_log(self, *, after_id: int = 0, limit: int = 10_000) -> list[DecisionEvent]:
        """Decisions with id > after_id, in id order: what the feed's filter replays."""
        q = (sa.select(decisions.c.id, decisions.c.content_id, decisions.c.source,
                       decisions.c.decision)
             .where(decisions.c.id > after_id).order_by(decisions.c.id).limit(limit))
        with self._tx() as conn:
            return [DecisionEvent(id=r.id, content_id=r.content_id, source=r.source,
                                  decision=r.decision) for r in conn.execute(q)]

    def audit(self, *, content_id: str | None = None, before_id: int | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        q = sa.select(decisions).order_by(decisions.c.id.desc() if newest_first
                                          else decisions.c.id)
        if content_id is not None:
            q = q.where(decisions.c.content_id == content_id)
        if before_id is not None:
            q = q.where(decisions.c.id < before_id)
        if limit is not None:
            q = q.limit(limit)
        with self._tx() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


def _item(r: Any) -> ReviewItem:
    return ReviewItem(
        id=int(r["id"]), content_id=r["content_id"], text=r["text"],
        has_image=bool(r["has_image"]), author_id=r["author_id"], scores=dict(r["scores"]),
        flagged_labels=tuple(r["flagged_labels"]), reasons=tuple(r["reasons"]),
        policy_version=r["policy_version"], model_versions=dict(r["model_versions"]),
        request_id=r["request_id"], status=r["status"], created_at=_utc(r["created_at"]) or _EPOCH,
        decided_at=_utc(r["decided_at"]), decided_by=r["decided_by"],
        decision_note=r["decision_note"])
