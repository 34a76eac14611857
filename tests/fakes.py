"""Hand-written fakes implementing real interfaces, for unit tests of pure logic only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


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

    def user_vector(self, user: object) -> np.ndarray:
        uid = int(user["user_id"].iloc[0])  # type: ignore[index]
        v = np.random.default_rng(uid).normal(size=self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def search(self, user_vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.vectors @ user_vec
        top = np.argsort(-s, kind="stable")[:k]
        return self.item_ids[top], s[top]

    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.item_ids, item_ids).clip(0, len(self.item_ids) - 1)
        found = self.item_ids[pos] == item_ids
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        out[found] = self.vectors[pos[found]]
        return out


class FakeRanker:
    """A serve.ranker_client.Ranker whose logits are a fixed function of the dense inputs,
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
    """A serve.ranker_client.Ranker returning the same logits row for every item."""

    def __init__(self, row: Sequence[float]) -> None:
        self.row = np.asarray(row, dtype=np.float32)

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.tile(self.row, (len(inputs["dense"]), 1))


class FakeScorer:
    """A moderation `Scorer` returning fixed scores, or failing/hanging on demand."""

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
