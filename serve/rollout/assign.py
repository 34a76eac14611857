"""Sticky variant assignment: a stable hash of (salt, key) picks a bucket in [0, 10000), and
cumulative weights map buckets to variants.

The same user gets the same variant on every replica and every request, with no state to
share: the hash is SHA-256, not Python's per-process `hash`. A salt per experiment makes
experiments independent (a user in the 5 % of one is not more likely to be in the 5 % of
another). Raising a canary's weight from 5 to 25 % keeps the first 5 % where they were, so
promotion only ever moves users from the primary to the canary, never back and forth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(salt: str, key: int | str) -> int:
    """The key's bucket in [0, BUCKETS) under `salt`."""
    h = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") % BUCKETS


def pick(names: Sequence[str], weights: Sequence[float], b: int) -> str:
    """The variant whose cumulative weight range (percent, in order) holds bucket `b`.

    The primary (first) fills from the top of the range and the others from the bottom, so
    a canary growing from 5 to 25 % takes buckets [0, 500) then [0, 2500): its first users
    stay in it."""
    if not names:
        raise ValueError("no variants to pick from")
    edge = 0.0
    for name, w in zip(names[1:], weights[1:], strict=True):
        edge += w * BUCKETS / 100.0
        if b < edge:
            return name
    return names[0]


def assign(salt: str, key: int | str, names: Sequence[str], weights: Sequence[float]) -> str:
    return pick(names, weights, bucket(salt, key))
