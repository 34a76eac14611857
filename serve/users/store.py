"""Console accounts in the review database (table `console_users`, created by the review
schema's migrations): one place for who may review and administer, next to the decisions
they make. Every method is one transaction; an unreachable database raises
`ReviewStoreError` (HTTP 503)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from funnel.sqldb import create_engine, normalise_url, safe_url
from serve.errors import ReviewDatabaseUrlError
from serve.review.store import migrate_review_schema, transaction
from serve.users.accounts import AccountError, Role, User, check_name, check_role

users = sa.Table(
    "console_users", sa.MetaData(),
    sa.Column("name", sa.String(64), primary_key=True), sa.Column("role", sa.String(16)),
    sa.Column("password_hash", sa.Text()), sa.Column("disabled", sa.Boolean()),
    sa.Column("credential_version", sa.Integer()),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)


class UnknownUser(AccountError):
    """No account of that name (CLI exit 2)."""


class UserExists(AccountError):
    """`funnel users add` of a name that is taken (CLI exit 2)."""


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class UserStore:
    def __init__(self, url: str | None = None, *, engine: Engine | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 migrate: bool = True) -> None:
        if engine is None:
            if url is None:
                raise ValueError("a database URL or an engine")
            engine = create_engine(normalise_url(url), what="review database",
                                   error=ReviewDatabaseUrlError)
        self.engine = engine
        self._clock = clock
        if migrate:
            migrate_review_schema(engine)

    @property
    def safe_url(self) -> str:
        return safe_url(self.engine.url.render_as_string(hide_password=False))

    def close(self) -> None:
        self.engine.dispose()

    def _tx(self) -> contextlib.AbstractContextManager[Connection]:
        return transaction(self.engine, self.safe_url)

    def add(self, name: str, *, role: Role, password_hash: str) -> User:
        check_name(name)
        check_role(role)
        now = self._clock()
        try:
            with self._tx() as conn:
                conn.execute(sa.insert(users).values(
                    name=name, role=role, password_hash=password_hash, disabled=False,
                    credential_version=1, created_at=now, updated_at=now))
        except sa.exc.IntegrityError as e:
            raise UserExists(f"user {name!r} exists; `funnel users rotate {name}` gives it a "
                             "new password") from e
        return self.require(name)

    def get(self, name: str) -> User | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).mappings().first()
        return None if row is None else _user(row)

    def require(self, name: str) -> User:
        u = self.get(name)
        if u is None:
            raise UnknownUser(f"no user {name!r}; `funnel users list` shows them")
        return u

    def list(self) -> list[User]:
        with self._tx() as conn:
            return [_user(r) for r in conn.execute(
                sa.select(users).order_by(users.c.name)).mappings()]

    def _update(self, name: str, *, bump: bool, **values: Any) -> User:
        q = sa.update(users).where(users.c.name == name).values(
            updated_at=self._clock(), **values)
        if bump:  # signed-in sessions of this account end
            q = q.values(credential_version=users.c.credential_version + 1)
        with self._tx() as conn:
            if conn.execute(q).rowcount == 0:
                raise UnknownUser(f"no user {name!r}; `funnel users list` shows them")
        return self.require(name)

    def set_password(self, name: str, password_hash: str) -> User:
        """A new password (rotate): every session of the account ends."""
        return self._update(name, bump=True, password_hash=password_hash)

    def upgrade_hash(self, name: str, password_hash: str) -> None:
        """The same password, hashed with newer parameters (sessions stay)."""
        self._update(name, bump=False, password_hash=password_hash)

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (sessions end, sign-in and API calls are refused) or enable again."""
        return self._update(name, bump=True, disabled=disabled)

    def set_role(self, name: str, role: Role) -> User:
        return self._update(name, bump=True, role=check_role(role))


def _user(r: Any) -> User:
    return User(name=r["name"], role=r["role"], password_hash=r["password_hash"],
                disabled=bool(r["disabled"]), credential_version=int(r["credential_version"]),
                created_at=_utc(r["created_at"]), updated_at=_utc(r["updated_at"]))
