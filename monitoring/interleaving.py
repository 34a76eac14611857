"""Team-draft interleaving of two rankers and the sign test on the per-request preference.

Pure functions: the serving side interleaves one request's two lists with `team_draft`,
logs which team each position came from, and the analysis credits clicks (`credit`) and
tests the preference over requests (`sign_test`, `preference`, or `preference_from_log` on
impressions joined to their events by monitoring.experiments.join_events).

Team-draft (Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008, Algorithm 2): like two captains picking players, in each round a coin
decides which ranker picks first; each picks its highest-ranked item not yet on the page.
The team with fewer picks always picks next, so every round of two positions holds one item
of each team, and neither ranker is favoured by position. A click is credited to the team
that contributed the clicked item; a request prefers the ranker whose team got more clicks
(a tie otherwise, including no clicks). Under the null (equal rankers) a non-tied request is
a fair coin, so wins vs losses is a sign test (an exact binomial test at 1/2), and the share
of wins gets a Clopper-Pearson interval.

One deviation from the paper: the paper stops when either list runs out; here the other list
keeps filling the page (its picks still count for its team), so a page is never shorter
than the longer list allows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

TEAM_A, TEAM_B = 0, 1  # A: the first list (the control), B: the second (the candidate)


@dataclass(frozen=True)
class Interleaving:
    """The merged page and, per position, the team that contributed the item."""

    items: tuple[Hashable, ...]
    teams: tuple[int, ...]


def team_draft(a: Sequence[Hashable], b: Sequence[Hashable], *, length: int | None = None,
               rng: random.Random | None = None) -> Interleaving:
    """Interleave rankings `a` and `b` into at most `length` items (default: all distinct
    items of both). `rng` flips the coins; seed it with the request id to make the page
    reproducible."""
    coin = rng or random.Random()
    limit = len(set(a) | set(b)) if length is None else length
    items: list[Hashable] = []
    teams: list[int] = []
    seen: set[Hashable] = set()
    ia = ib = 0
    picks = [0, 0]
    while len(items) < limit:
        while ia < len(a) and a[ia] in seen:
            ia += 1
        while ib < len(b) and b[ib] in seen:
            ib += 1
        a_left, b_left = ia < len(a), ib < len(b)
        if not (a_left or b_left):
            break
        if a_left and b_left:
            team = (TEAM_A if picks[0] < picks[1] or
                    (picks[0] == picks[1] and coin.random() < 0.5) else TEAM_B)
        else:
            team = TEAM_A if a_left else TEAM_B
        item = a[ia] if team == TEAM_A else b[ib]
        items.append(item)
        teams.append(team)
        seen.add(item)
        picks[team] += 1
    return Interleaving(tuple(items), tuple(teams))


def credit(teams: ArrayLike, clicked: ArrayLike) -> tuple[int, int]:
    """(clicks credited to A, clicks credited to B) for one page."""
    t = np.asarray(teams, np.int64)
    c = np.asarray(clicked, bool)
    if t.shape != c.shape:
        raise ValueError(f"teams has {t.size} positions, clicked {c.size}; expected the same")
    b = int((c & (t == TEAM_B)).sum())
    return int(c.sum()) - b, b


@dataclass(frozen=True)
class Preference:
    """B (the candidate) against A over requests: wins, losses, ties, the share of non-tied
    requests B wins with its Clopper-Pearson interval, and the sign test's two-sided p."""

    wins: int
    losses: int
    ties: int
    share: float
    ci: tuple[float, float]
    p_value: float
    delta: float  # (wins + ties / 2) / requests - 1/2 (Chapelle et al. 2012)
    method: str = "sign test (exact binomial, p = 1/2) on non-tied requests; Clopper-Pearson"

    @property
    def requests(self) -> int:
        return self.wins + self.losses + self.ties

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}


def sign_test(wins: int, losses: int, ties: int = 0, *, alpha: float = 0.05) -> Preference:
    if min(wins, losses, ties) < 0:
        raise ValueError(f"counts must be non-negative; got wins={wins}, losses={losses}, "
                         f"ties={ties}")
    n = wins + losses
    total = n + ties
    delta = (wins + ties / 2) / total - 0.5 if total else math.nan
    if n == 0:
        return Preference(wins, losses, ties, math.nan, (0.0, 1.0), 1.0, delta)
    res = stats.binomtest(wins, n, 0.5)
    ci = res.proportion_ci(confidence_level=1 - alpha, method="exact")
    return Preference(wins, losses, ties, wins / n, (float(ci.low), float(ci.high)),
                      float(res.pvalue), delta)


def preference(credit_a: ArrayLike, credit_b: ArrayLike, *, alpha: float = 0.05
               ) -> Preference:
    """The sign test over requests, given each request's credited clicks per team."""
    a, b = np.asarray(credit_a), np.asarray(credit_b)
    return sign_test(int((b > a).sum()), int((b < a).sum()), int((b == a).sum()), alpha=alpha)


def preference_from_log(frame: pd.DataFrame, *, team: str = "team", outcome: str = "click",
                        alpha: float = 0.05) -> Preference:
    """The sign test over the interleaved requests of a joined impression log: one row per
    served item, its `team` (TEAM_A / TEAM_B; null for requests that were not interleaved)
    and `outcome` (1 if clicked). A request without clicks is a tie."""
    rows = frame.dropna(subset=[team])
    if rows.empty:
        return sign_test(0, 0, 0, alpha=alpha)
    t = rows[team].to_numpy(np.int64)
    hit = rows[outcome].to_numpy(np.float64) > 0
    per = pd.DataFrame({"request_id": rows["request_id"].to_numpy(),
                        "a": hit & (t == TEAM_A), "b": hit & (t == TEAM_B)})
    sums = per.groupby("request_id", sort=False)[["a", "b"]].sum()
    return preference(sums["a"].to_numpy(), sums["b"].to_numpy(), alpha=alpha)
