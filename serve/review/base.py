"""The review store's interface: what moderation, the review routes, the feed's verdict
filter and `funnel review export` need from wherever reviews are kept.

`SqlReviewStore` (serve/review/store.py; SQLite or PostgreSQL through SQLAlchemy) is the one
that ships; tests use an in-memory one (tests/fakes.py) held to the same contract
(tests/unit/serve/review/test_store_contract.py). `open_store` picks the implementation: the
config's `review.store_class` ("module:Class") when set, else by the URL's scheme.

Another store (DynamoDB, a review vendor's API, ...) is one new module with a class that
takes the URL and implements `ReviewStore`, plus `review.store_class` in the Serve config.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from serve.errors import ReviewDatabaseUrlError

ReviewStatus = Literal["pending", "allow", "block"]


@dataclass(frozen=True)
class ReviewItem:
    id: int
    content_id: str
    text: str | None
    has_image: bool
    author_id: int | None
    scores: Mapping[str, float]
    flagged_labels: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_version: str
    model_versions: Mapping[str, str]
    request_id: str
    status: ReviewStatus
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None


@dataclass(frozen=True)
class ItemFilter:
    """What a queue view narrows to: items that flagged `label`, under `policy_version`,
    queued at or before `created_before` (older than an age)."""

    label: str | None = None
    policy_version: str | None = None
    created_before: datetime | None = None

    def matches(self, item: ReviewItem) -> bool:
        return ((self.label is None or self.label in item.flagged_labels)
                and (self.policy_version is None or item.policy_version == self.policy_version)
                and (self.created_before is None or item.created_at <= self.created_before))


@dataclass(frozen=True)
class DecisionEvent:
    """One row of the decision log, as the feed reads it."""

    id: int
    content_id: str
    source: Literal["model", "reviewer"]
    decision: Literal["allow", "review", "block"]


@runtime_checkable
class ReviewStore(Protocol):
    """Every method is one transaction and safe to call from several threads. Unavailability
    raises `ReviewStoreError` (moderation parks the decision and retries); an unknown item
    `ReviewItemNotFound`; a second decision on an item `AlreadyDecided`."""

    @property
    def safe_url(self) -> str:
        """Where the store is, with any secret hidden (for logs and errors)."""
        ...

    def close(self) -> None: ...

    def record_model_decision(self, *, content_id: str, decision: str, model: str,
                              policy_version: str, request_id: str, text: str | None,
                              has_image: bool, author_id: int | None,
                              scores: Mapping[str, float], flagged_labels: Sequence[str],
                              reasons: Sequence[str], model_versions: Mapping[str, str],
                              idempotency_key: str | None = None, at: datetime | None = None,
                              thumbnail: bytes | None = None) -> int | None:
        """Log the model's decision; for `review`, also queue an item and return its id. A
        second call with the same `idempotency_key` writes nothing and returns the first
        call's item id. `thumbnail`: a small WebP of the item's image, kept with the item
        for reviewers (never the image's URL)."""
        ...

    def decide(self, item_id: int, *, decision: Literal["allow", "block"], reviewer: str,
               note: str | None = None) -> ReviewItem:
        """A reviewer's decision on a pending item, exactly once."""
        ...

    def get(self, item_id: int) -> ReviewItem: ...

    def list_items(self, *, status: ReviewStatus | None = "pending", limit: int = 50,
                   after_id: int = 0, where: ItemFilter | None = None) -> list[ReviewItem]:
        """Oldest first, `limit` at most, ids above `after_id`, matching `where`."""
        ...

    def count_items(self, *, status: ReviewStatus | None = "pending",
                    where: ItemFilter | None = None) -> int:
        """How many items `list_items` would page through."""
        ...

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's kept thumbnail (WebP), or None."""
        ...

    def backlog(self) -> tuple[int, datetime | None]:
        """(pending items, when the oldest pending one arrived)."""
        ...

    def decided(self) -> Iterator[ReviewItem]:
        """Every decided item, oldest decision first."""
        ...

    def decision_log(self, *, after_id: int = 0, limit: int = 10_000) -> list[DecisionEvent]:
        """Decisions (model and reviewer) with id > after_id, in id order."""
        ...

    def audit(self, *, content_id: str | None = None, before_id: int | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """Decision rows, oldest first (or newest first), optionally of one content id, ids
        below `before_id`, `limit` at most."""
        ...


SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(url: str, *, store_class: str | None = None) -> ReviewStore:
    """The review store for `url`: `store_class` ("package.module:Class", constructed with
    the URL) when given, else the SQL store for sqlite:// and postgresql:// URLs."""
    if store_class:
        module, _, name = store_class.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ReviewDatabaseUrlError(
                f"review.store_class {store_class!r} cannot be loaded: {e}; expected "
                "'package.module:Class'") from e
        try:
            store = cls(url)
        except TypeError as e:  # not a class, or one that does not take the URL
            raise ReviewDatabaseUrlError(
                f"review.store_class {store_class!r} cannot be constructed with the database "
                f"URL: {e}") from e
        if not isinstance(store, ReviewStore):
            raise ReviewDatabaseUrlError(
                f"review.store_class {store_class!r} does not implement "
                "serve.review.base.ReviewStore")
        return store
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in SQL_SCHEMES:
        raise ReviewDatabaseUrlError(
            f"review database URL {url!r}: no store for {scheme or 'a URL without a scheme'!r};"
            " use sqlite:///PATH or postgresql://USER@HOST:PORT/DB, or name a store class in "
            "review.store_class")
    from serve.review.store import SqlReviewStore

    return SqlReviewStore(url)
