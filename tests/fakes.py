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
