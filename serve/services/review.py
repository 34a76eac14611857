"""The review queue's use cases: list items by status, record a reviewer's decision (which
the feed serves at once), with the query checked field by field."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from serve.api import MAX_ID, parse_uint
from serve.review.base import ReviewItem, ReviewStore

STATUSES = ("pending", "allow", "block", "all")


@dataclass(frozen=True)
class ListQuery:
    status: str
    limit: int
    after_id: int


def parse_list_query(params: dict[str, str], *, max_limit: int
                     ) -> tuple[ListQuery | None, list[dict[str, Any]]]:
    """`?status=&limit=&after_id=` -> the query, or the problems, each naming its field."""
    status = params.get("status", "pending")
    problems = []
    if status not in STATUSES:
        problems.append({"field": "status", "message": "one of pending, allow, block, all",
                         "given": status})
    limit_text = params.get("limit", "50")
    limit = parse_uint(limit_text, maximum=max_limit)
    if limit is None or limit < 1:
        problems.append({"field": "limit", "message": f"an integer in 1..{max_limit}",
                         "given": limit_text})
    after_text = params.get("after_id", "0")
    after = parse_uint(after_text)
    if after is None:
        problems.append({"field": "after_id", "message": f"an integer in 0..{MAX_ID}",
                         "given": after_text})
    if problems or limit is None or after is None:
        return None, problems
    return ListQuery(status, limit, after), []


class ReviewService:
    """Over any `ReviewStore`; store calls run in a worker thread (they block)."""

    def __init__(self, store: ReviewStore, *,
                 refresh_verdicts: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self._refresh_verdicts = refresh_verdicts

    async def list(self, q: ListQuery) -> tuple[list[ReviewItem], int | None]:
        """A page of items and the `after_id` of the next page (None: this was the last)."""
        items = await asyncio.to_thread(
            self.store.list_items, status=None if q.status == "all" else q.status,  # type: ignore[arg-type]
            limit=q.limit, after_id=q.after_id)
        return items, (items[-1].id if len(items) == q.limit else None)

    async def decide(self, review_id: int, *, decision: Literal["allow", "block"], reviewer: str,
                     note: str | None) -> ReviewItem:
        item = await asyncio.to_thread(self.store.decide, review_id, decision=decision,
                                       reviewer=reviewer, note=note)
        await self._refresh_verdicts()
        return item
