"""How far two ranked lists agree: the numbers a shadow or canary is judged by.

- `overlap_at_k`: the share of the primary's top k that the other list also has in its top k.
- `rbo`: rank-biased overlap (Webber, Moffat & Zobel 2010), extrapolated form. It weights
  agreement at the top more than below, needs no common item set (unlike Kendall's tau,
  which is undefined for two top-k lists with different items) and lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def overlap_at_k(primary: Sequence[Hashable], other: Sequence[Hashable], k: int) -> float:
    """|top-k(primary) ∩ top-k(other)| / min(k, |top-k(primary)|); 1.0 for two empty lists."""
    a, b = list(primary)[:k], set(list(other)[:k])
    if not a:
        return 1.0 if not b else 0.0
    return sum(1 for x in a if x in b) / len(a)


def rbo(primary: Sequence[Hashable], other: Sequence[Hashable], p: float = 0.9) -> float:
    """Rank-biased overlap, extrapolated (RBO_ext, eq. 32 of the paper), for lists of unique
    items. Identical lists give 1.0, disjoint lists 0.0."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    s, t = list(primary), list(other)
    if not s and not t:
        return 1.0
    if not s or not t:
        return 0.0
    if len(s) > len(t):
        s, t = t, s
    sl, ll = len(s), len(t)
    seen_s: set[Hashable] = set()
    seen_t: set[Hashable] = set()
    overlap = 0
    total = 0.0
    x_d: list[int] = [0] * (ll + 1)
    for d in range(1, ll + 1):
        if d <= sl:
            a = s[d - 1]
            if a in seen_t:
                overlap += 1
            seen_s.add(a)
        b = t[d - 1]
        if b in seen_s:
            overlap += 1
        seen_t.add(b)
        x_d[d] = overlap
        total += (overlap / d) * p ** d
    x_s, x_l = x_d[sl], x_d[ll]
    # terms for depths past the shorter list (eq. 32): extrapolate its agreement
    tail = sum(x_s * (d - sl) / (sl * d) * p ** d for d in range(sl + 1, ll + 1))
    value = (1 - p) / p * (total + tail) + ((x_l - x_s) / ll + x_s / sl) * p ** ll
    return max(0.0, min(1.0, value))
