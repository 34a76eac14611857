"""Hand-written fakes implementing real interfaces, for unit tests of pure logic only."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    from serve.types import Items

T = TypeVar("T")


class HashingTextEncoder:
    """A deterministic TextEncoder: a unit vector seeded by each text's sha256.

    Same text, same vector; different texts, (almost) orthogonal vectors. Enough to test
    feature plumbing without loading all-MiniLM-L6-v2."""

    name = "fake-hashing-encoder"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


@dataclass(frozen=True)
class Info:
    """One catalog row for `items_of` (test data)."""

    author_id: int = 100
    topic: str = "news"
    language: str = "en"
    created_at_s: float = 0.0
    verdict: str = "allow"


def items_of(rows: Sequence[tuple[int, Info | None]]) -> Items:
    """`serve.types.Items` for (item id, its catalog row, or None: unknown to the catalog)."""
    from serve.types import Items

    cats: dict[str, list[str]] = {"topic": [], "modality": ["text"], "language": [],
                                  "verdict": []}

    def code(col: str, name: str) -> int:
        if name not in cats[col]:
            cats[col].append(name)
        return cats[col].index(name)

    n = len(rows)
    known = np.asarray([r is not None for _, r in rows], bool)
    full = [r or Info() for _, r in rows]
    created = np.asarray([r.created_at_s for r in full], np.float64)
    return Items(ids=np.asarray([i for i, _ in rows], np.int64), known=known,
                 rows=np.arange(n, dtype=np.int64),
                 author_id=np.asarray([r.author_id for r in full], np.int64),
                 topic=np.asarray([code("topic", r.topic) for r in full], np.int32),
                 modality=np.zeros(n, np.int32),
                 language=np.asarray([code("language", r.language) for r in full], np.int32),
                 verdict=np.asarray([code("verdict", r.verdict) for r in full], np.int32),
                 created_at_s=created, created_ns=(created * 1e9).astype(np.int64),
                 categories={k: np.asarray(v, dtype=object) for k, v in cats.items()})


class FakeRetrieval:
    """Stands in for serve.retrieval.TwoTowerRetrieval: random unit item vectors, a user
    vector seeded by the user id, exact search. Same methods, no bundle."""

    def __init__(self, features: object, item_ids: np.ndarray, *, dim: int = 8,
                 seed: int = 0) -> None:
        self.features = features
        self.item_ids = np.sort(np.asarray(item_ids, dtype=np.int64))
        v = np.random.default_rng(seed).normal(size=(len(self.item_ids), dim))
        self.vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        self.dim = dim
        self.index = SimpleNamespace(ntotal=len(self.item_ids))  # readiness reads it

    def user_vector(self, user: object, aligned: object = None,
                    recent_clicks: object = None) -> np.ndarray:
        uid = int(user.user_id)  # type: ignore[attr-defined]
        v = np.random.default_rng(uid).normal(size=self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def search(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        top, s = self.search_positions(user_vec, k)
        return self.item_ids[top], s

    def search_positions(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.vectors @ user_vec
        top = np.argsort(-s, kind="stable")[:k]
        return top, s[top]

    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.item_ids, item_ids).clip(0, len(self.item_ids) - 1)
        found = self.item_ids[pos] == item_ids
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        out[found] = self.vectors[pos[found]]
        return out

    @property
    def sorted_item_ids(self) -> np.ndarray:
        return self.item_ids

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        out = np.zeros((len(positions), self.dim), dtype=np.float32)
        ok = positions >= 0
        out[ok] = self.vectors[positions[ok]]
        return out


class FakeRanker:
    """A serve.ranker.client.Ranker whose logits are a fixed function of the dense inputs,
    that can be switched to fail (as Triton does when it is down)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from serve.errors import RankerUnavailable

        self.calls += 1
        if self.fail:
            raise RankerUnavailable("fake Triton is down")
        n = len(inputs["dense"])
        # click logit grows with the item hash, so ranked order differs from retrieval order
        base = (inputs["item_hash"].astype(np.float64) % 97) / 10.0 - 4.0
        return np.stack([base, base - 1, base - 2, base - 2, -base - 3], axis=1).astype(
            np.float32).reshape(n, 5)


class FixedLogitsRanker:
    """A serve.ranker.client.Ranker returning the same logits row for every item."""

    def __init__(self, row: Sequence[float]) -> None:
        self.row = np.asarray(row, dtype=np.float32)

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.tile(self.row, (len(inputs["dense"]), 1))


class FakeContentScorer:
    """A moderation `ContentScorer` returning fixed scores, or failing/hanging on demand."""

    def __init__(self, text: dict[str, float] | None = None,
                 image: dict[str, float] | None = None, *, fail: str | None = None,
                 hang: str | None = None) -> None:
        self.text, self.image, self.fail, self.hang = text or {}, image or {}, fail, hang

    async def _maybe(self, which: str) -> None:
        import asyncio

        if self.fail == which:
            raise RuntimeError(f"{which} replica crashed")
        if self.hang == which:
            await asyncio.sleep(3600)

    async def score_text(self, text: str) -> dict[str, float]:
        await self._maybe("text")
        return dict(self.text)

    async def score_image(self, image: bytes) -> dict[str, float]:
        await self._maybe("image")
        return dict(self.image)


class FakeHandle:
    """A Ray Serve deployment handle over a plain object: `h.method.remote(*a)` awaits
    `obj.method(*a)` (sync or async), as the real handle's response does."""

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> object:
        import inspect

        fn = getattr(self._obj, name)

        class _Method:
            @staticmethod
            async def remote(*args: object, **kwargs: object) -> object:
                out = fn(*args, **kwargs)
                return await out if inspect.isawaitable(out) else out

        return _Method()


class MemoryReviewStore:
    """serve.review.base.ReviewStore in a dict, for unit tests of moderation, review and
    export logic; held to the SQL store's contract by test_store_contract.py. `down = True`
    makes every call fail as an unreachable database does."""

    def __init__(self, url: str = "memory://") -> None:
        import threading

        self.url = url
        self.down = False
        self._lock = threading.Lock()
        self._items: dict[int, Any] = {}
        self._log: list[dict[str, Any]] = []
        self._keys: dict[str, int | None] = {}
        self._thumbnails: dict[int, bytes | None] = {}

    @property
    def safe_url(self) -> str:
        return self.url

    def close(self) -> None:
        return None

    def _check(self) -> None:
        from serve.errors import ReviewStoreError

        if self.down:
            raise ReviewStoreError(f"review database unavailable ({self.url}): down")

    def _append(self, **row: Any) -> None:
        self._log.append({"id": len(self._log) + 1, "note": None, "idempotency_key": None,
                          "request_id": None, **row})

    def record_model_decision(self, *, content_id: str, decision: str, model: str,
                              policy_version: str, request_id: str, text: str | None,
                              has_image: bool, author_id: int | None,
                              scores: Mapping[str, float], flagged_labels: Sequence[str],
                              reasons: Sequence[str], model_versions: Mapping[str, str],
                              idempotency_key: str | None = None, at: datetime | None = None,
                              thumbnail: bytes | None = None) -> int | None:
        from serve.review.base import ReviewItem

        self._check()
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._keys:
                return self._keys[idempotency_key]
            now = at or datetime.now(UTC)
            item_id = None
            if decision == "review":
                item_id = len(self._items) + 1
                self._items[item_id] = ReviewItem(
                    id=item_id, content_id=content_id, text=text, has_image=has_image,
                    author_id=author_id, scores={k: float(v) for k, v in scores.items()},
                    flagged_labels=tuple(flagged_labels), reasons=tuple(reasons),
                    policy_version=policy_version, model_versions=dict(model_versions),
                    request_id=request_id, status="pending", created_at=now, decided_at=None,
                    decided_by=None, decision_note=None)
                self._thumbnails[item_id] = thumbnail
            self._append(content_id=content_id, review_item_id=item_id, source="model",
                         decision=decision, actor=model, policy_version=policy_version,
                         request_id=request_id, at=now, idempotency_key=idempotency_key)
            if idempotency_key is not None:
                self._keys[idempotency_key] = item_id
            return item_id

    def decide(self, item_id: int, *, decision: Literal["allow", "block"], reviewer: str,
               note: str | None = None) -> Any:
        from dataclasses import replace

        from serve.errors import AlreadyDecided

        self._check()
        with self._lock:
            item = self.get(item_id)
            if item.status != "pending":
                raise AlreadyDecided(f"review item {item_id} was already decided "
                                     f"({item.status}) by {item.decided_by}")
            item = replace(item, status=decision, decided_at=datetime.now(UTC),
                           decided_by=reviewer, decision_note=note)
            self._items[item_id] = item
            self._append(content_id=item.content_id, review_item_id=item_id,
                         source="reviewer", decision=decision, actor=reviewer,
                         policy_version=item.policy_version, note=note, at=item.decided_at)
            return item

    def get(self, item_id: int) -> Any:
        from serve.errors import ReviewItemNotFound

        self._check()
        if item_id not in self._items:
            raise ReviewItemNotFound(f"no review item with id {item_id}")
        return self._items[item_id]

    def list_items(self, *, status: str | None = "pending", limit: int = 50,
                   after_id: int = 0, where: Any = None) -> list[Any]:
        self._check()
        rows = [i for k, i in sorted(self._items.items())
                if k > after_id and (status is None or i.status == status)
                and (where is None or where.matches(i))]
        return rows[:limit]

    def count_items(self, *, status: str | None = "pending", where: Any = None) -> int:
        return len(self.list_items(status=status, limit=len(self._items), where=where))

    def thumbnail(self, item_id: int) -> bytes | None:
        self._check()
        return self._thumbnails.get(item_id)

    def backlog(self) -> tuple[int, datetime | None]:
        self._check()
        pending = [i for i in self._items.values() if i.status == "pending"]
        return len(pending), min((i.created_at for i in pending), default=None)

    def decided(self) -> Iterator[Any]:
        self._check()
        done = [i for i in self._items.values() if i.status != "pending"]
        yield from sorted(done, key=lambda i: (i.decided_at, i.id))

    def decision_log(self, *, after_id: int = 0, limit: int = 10_000) -> list[Any]:
        from serve.review.base import DecisionEvent

        self._check()
        return [DecisionEvent(id=r["id"], content_id=r["content_id"], source=r["source"],
                              decision=r["decision"])
                for r in self._log if r["id"] > after_id][:limit]

    def audit(self, *, content_id: str | None = None, before_id: int | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        self._check()
        rows = [dict(r) for r in self._log
                if (content_id is None or r["content_id"] == content_id)
                and (before_id is None or r["id"] < before_id)]
        if newest_first:
            rows.reverse()
        return rows if limit is None else rows[:limit]


def on_virtual_time(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on an event loop with virtual time (looptime): sleeps and timeouts take no
    real time and CPU work takes no loop time, so what a test measures with the loop's clock
    is exact on any machine, busy or not."""
    import looptime

    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0.0)) as runner:
        return runner.run(coro)
