"""Simulated ranker experiments on the synthetic generator's hidden ground truth
(`funnel bench experiments`): does the A/B report detect a truly better ranker at the
planned sample size, does it keep A/A false positives at alpha, and how many impressions
does team-draft interleaving need for the same detection rate?

The world. Users and posts are the demo profile's, with its hidden model
(training.data.synthetic.HiddenTruth): a shown post is examined with the position-bias
probability and clicked with sigmoid(affinity - 1.2 - 2 * harmful); liked and hidden with the
generator's own formulas. A simulated user (drawn with replacement from the profile's users,
so a run can have more users than the profile) makes 1 + Poisson(3) requests; a request
draws 40 candidates the way the generator does (a third from followed authors, a third
popularity-weighted, a third uniform) and serves the top 10 of a ranker's scores.

Users' click propensity. With `user_click_sd` > 0 each simulated user also gets an offset on
the click logit, N(0, sd): users who click a lot and users who rarely do, as on real
traffic. The generator's own users differ only in what they like (sd 0, the default).

The rankers. Control: the true affinity plus N(0, 1.5) noise per candidate (the noise of the
generator's own logged ranker); candidate: plus N(0, 1.2). The candidate's true CTR lift is
computed from the expected click probabilities of 200,000 requests (no click noise).

The A/B runs go through the report's own code: simulated impressions and events (with 1 %
of events logged twice by two replicas and 0.5 % for unknown impressions) are joined by
`join_events` and analysed by `analyze`; the sample size is `plan`'s, for an MDE equal to
the true lift, the baseline and design effect measured on a pilot A/A run; more A/A runs at
that size estimate the false-positive rate. Interleaving runs use `team_draft`, `credit`
and `preference` on the same users, candidates and rankers.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from monitoring.experiments import analyze, join_events, plan
from monitoring.interleaving import credit, preference, team_draft
from training.data.synthetic import (
    HiddenTruth,
    click_probability,
    examine_probability,
    generate_with_truth,
    hide_probability,
    like_probability,
)

Say = Callable[[str], None]
CONTROL, CANDIDATE = "control", "candidate"


@dataclass(frozen=True)
class Settings:
    candidates: int = 40
    page: int = 10
    control_noise: float = 1.5
    candidate_noise: float = 1.2
    extra_requests_mean: float = 3.0  # requests per user: 1 + Poisson(this)
    alpha: float = 0.05
    duplicate_rate: float = 0.01
    unmatched_rate: float = 0.005
    # per-user click propensity: a simulated user's offset on the click logit, N(0, sd).
    # 0 is the generator as it is (users differ only by what they like); real users also
    # differ in how much they click at all, which widens the A/B test's user-level variance
    # and leaves interleaving's within-request comparison untouched
    user_click_sd: float = 0.0


class World:
    """Candidate pools, rankers and engagement drawn from the hidden truth."""

    def __init__(self, truth: HiddenTruth, settings: Settings) -> None:
        self.t, self.s = truth, settings
        pop = np.exp(truth.quality)
        self.popular_cdf = np.cumsum(pop / pop.sum())
        keys = truth.follow_keys
        self.fol_user, self.fol_author = keys // truth.n_users, keys % truth.n_users
        self.fol_start = np.searchsorted(self.fol_user, np.arange(truth.n_users + 1))
        by_author = np.argsort(truth.post_author, kind="stable")
        self.posts_by_author = by_author
        self.author_start = np.searchsorted(truth.post_author[by_author],
                                            np.arange(truth.n_users + 1))
        self.exam = examine_probability(np.arange(settings.page))

    def users(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(latent user of each simulated user, simulated user of each request)."""
        latent = rng.integers(0, self.t.n_users, n)
        per = 1 + rng.poisson(self.s.extra_requests_mean, n)
        return latent, np.repeat(np.arange(n), per)

    def offsets(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Click-logit offsets of `n` simulated users (no draw when the sd is 0, so the
        random stream is that of the generator-as-is world)."""
        if self.s.user_click_sd <= 0:
            return np.zeros(n)
        return rng.normal(0.0, self.s.user_click_sd, n)

    def pools(self, latent_users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        r, c = len(latent_users), self.s.candidates
        u = np.repeat(latent_users, c)
        src = rng.random(r * c)
        out = np.where(src < 0.66, np.searchsorted(self.popular_cdf, rng.random(r * c)),
                       rng.integers(0, self.t.n_posts, r * c))
        out = np.minimum(out, self.t.n_posts - 1)
        social = np.flatnonzero(src < 0.33)
        su = u[social]
        n_fol = self.fol_start[su + 1] - self.fol_start[su]
        ok = n_fol > 0
        social, su, n_fol = social[ok], su[ok], n_fol[ok]
        author = self.fol_author[self.fol_start[su] + (rng.random(len(su)) * n_fol)
                                 .astype(np.int64)]
        n_posts = self.author_start[author + 1] - self.author_start[author]
        ok = n_posts > 0
        pick = self.author_start[author[ok]] + (rng.random(int(ok.sum())) * n_posts[ok]
                                                ).astype(np.int64)
        out[social[ok]] = self.posts_by_author[pick]
        return out.reshape(r, c)

    def affinity(self, latent_users: np.ndarray, pools: np.ndarray) -> np.ndarray:
        """True affinities; -inf for a post drawn twice into one pool (after its first
        draw), so that no ranker serves it twice, as merged candidates are deduplicated."""
        c = pools.shape[1]
        aff = self.t.affinity(np.repeat(latent_users, c), pools.ravel()).reshape(pools.shape)
        order = np.argsort(pools, axis=1, kind="stable")
        srt = np.take_along_axis(pools, order, 1)
        again = np.zeros(pools.shape, bool)
        np.put_along_axis(again, order[:, 1:], srt[:, 1:] == srt[:, :-1], 1)
        aff[again] = -np.inf
        return aff

    def rank(self, aff: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        """Column indexes of each request's top `page` candidates, best first."""
        scores = aff + rng.normal(0, noise, aff.shape)
        top = np.argpartition(-scores, self.s.page, axis=1)[:, :self.s.page]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        return np.take_along_axis(top, order, 1)

    def engage(self, aff: np.ndarray, harmful: np.ndarray, rng: np.random.Generator,
               offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Clicks, likes and hides of pages (requests x positions) with these affinities;
        `offset`: each request's user's click-logit offset."""
        examined = rng.random(aff.shape) < self.exam
        shifted = aff if offset is None else aff + offset[:, None]
        click = examined & (rng.random(aff.shape) < click_probability(shifted, harmful))
        like = click & (rng.random(aff.shape) < like_probability(aff))
        hide = examined & ~click & (rng.random(aff.shape) < hide_probability(aff, harmful))
        return {"click": click, "like": like, "hide": hide}

    def true_ctr(self, noise: float, requests: int, rng: np.random.Generator) -> float:
        latent = rng.integers(0, self.t.n_users, requests)
        pools = self.pools(latent, rng)
        aff = self.affinity(latent, pools)
        top = self.rank(aff, noise, rng)
        a = np.take_along_axis(aff, top, 1) + self.offsets(requests, rng)[:, None]
        harm = self.t.harmful[np.take_along_axis(pools, top, 1)]
        return float((self.exam * click_probability(a, harm)).mean())


# ---- A/B ----------------------------------------------------------------------------------
def ab_run(world: World, n_users: int, noises: tuple[float, float], rng: np.random.Generator
           ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Impression and event frames of one A/B experiment over `n_users` users, each user in
    arm 0 or 1 with probability 1/2 (user ids are 0..n_users-1 in order of arrival)."""
    s = world.s
    latent, req_user = world.users(n_users, rng)
    offset = world.offsets(n_users, rng)
    arm = (rng.random(n_users) < 0.5).astype(np.int64)
    r = len(req_user)
    pools = world.pools(latent[req_user], rng)
    aff = world.affinity(latent[req_user], pools)
    req_arm = arm[req_user]
    top = np.empty((r, s.page), np.int64)
    for a, noise in enumerate(noises):
        rows = np.flatnonzero(req_arm == a)
        top[rows] = world.rank(aff[rows], noise, rng)
    items = np.take_along_axis(pools, top, 1)
    page_aff = np.take_along_axis(aff, top, 1)
    ev = world.engage(page_aff, world.t.harmful[items], rng, offset[req_user])
    imp = pd.DataFrame({
        "request_id": np.repeat(np.arange(r), s.page), "item_id": items.ravel() + 1,
        "user_id": np.repeat(req_user, s.page),
        "position": np.tile(np.arange(s.page), r),
        "ranker_variant": np.where(np.repeat(req_arm, s.page) == 1, CANDIDATE, CONTROL)})
    parts = []
    for name, hit in ev.items():
        flat = np.flatnonzero(hit.ravel())
        parts.append(pd.DataFrame({"request_id": flat // s.page, "item_id": items.ravel()[flat]
                                   + 1, "user_id": req_user[flat // s.page], "event": name}))
    events = pd.concat(parts, ignore_index=True)
    events["event_id"] = np.arange(len(events))
    events["received_ts"] = np.arange(len(events))
    events["replica"] = "r0"
    dup = events.sample(frac=s.duplicate_rate, random_state=rng.integers(2**31))
    dup = dup.assign(received_ts=dup["received_ts"] + len(events), replica="r1")
    lost = events.sample(frac=s.unmatched_rate, random_state=rng.integers(2**31))
    lost = lost.assign(request_id=-1 - np.arange(len(lost)), event_id=-1 - np.arange(len(lost)))
    events = pd.concat([events, dup, lost], ignore_index=True)
    truth = {"events": len(events) - len(dup) - len(lost), "duplicates": len(dup),
             "unmatched": len(lost)}
    return imp, events, truth


def ab_analyse(imp: pd.DataFrame, events: pd.DataFrame, users: int, alpha: float
               ) -> dict[str, Any]:
    """The report's analysis of the experiment's first `users` users."""
    joined = join_events(imp[imp["user_id"] < users], events[events["user_id"] < users])
    # no minimum sample: the benchmark measures the test's power at every size, the
    # report's "insufficient data" guard included would hide the small prefixes
    rep = analyze(joined, stage="ranker", control=CONTROL, alpha=alpha, min_users=0,
                  min_impressions=0)
    m = rep.metric("ctr", CANDIDATE)
    c = m.vs_control
    assert c is not None
    f = joined.frame  # the per-impression z-test the report does NOT use, for contrast
    c1 = f.loc[f["ranker_variant"] == CONTROL, "click"].to_numpy()
    c2 = f.loc[f["ranker_variant"] == CANDIDATE, "click"].to_numpy()
    pooled = (c1.sum() + c2.sum()) / (len(c1) + len(c2))
    z = (c2.mean() - c1.mean()) / math.sqrt(pooled * (1 - pooled) * (1 / len(c1) + 1 / len(c2)))
    return {"p": c.p_value, "diff": c.diff, "better": m.verdict == "better",
            "impressions": len(f), "naive_p": float(2 * stats.norm.sf(abs(z))),
            "join": rep.events, "design_effect": [rep.metric("ctr", v).design_effect
                                                  for v in (CONTROL, CANDIDATE)],
            "ctr_control": rep.metric("ctr", CONTROL).value}


# ---- interleaving -------------------------------------------------------------------------
def interleaving_run(world: World, requests: int, noises: tuple[float, float],
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the clicks credited to (control, candidate) on a team-draft page."""
    s = world.s
    n_users = max(1, math.ceil(requests / (1 + s.extra_requests_mean) * 1.2))
    latent, req_user = world.users(n_users, rng)
    while len(req_user) < requests:  # rare: fewer requests than expected
        more, extra = world.users(n_users, rng)
        latent = np.concatenate([latent, more])
        req_user = np.concatenate([req_user, extra + len(latent) - len(more)])
    req_user = req_user[:requests]
    offset = world.offsets(len(latent), rng)
    pools = world.pools(latent[req_user], rng)
    aff = world.affinity(latent[req_user], pools)
    lists = [world.rank(aff, noise, rng) for noise in noises]
    coin = random.Random(int(rng.integers(2**31)))
    pages = np.empty((requests, s.page), np.int64)
    teams = np.empty((requests, s.page), np.int64)
    for i, (a, b) in enumerate(zip(lists[0].tolist(), lists[1].tolist(), strict=True)):
        il = team_draft(a, b, length=s.page, rng=coin)
        pages[i], teams[i] = il.items, il.teams
    page_aff = np.take_along_axis(aff, pages, 1)
    clicks = world.engage(page_aff, world.t.harmful[np.take_along_axis(pools, pages, 1)],
                          rng, offset[req_user])["click"]
    credits = np.array([credit(t, c) for t, c in zip(teams, clicks, strict=True)])
    return credits[:, 0], credits[:, 1]


# ---- the benchmark ------------------------------------------------------------------------
def _crossing(sizes: Sequence[float], rates: Sequence[float], target: float = 0.8
              ) -> float | None:
    """Where the detection curve first reaches `target`, interpolated in log(size)."""
    for i, (n, r) in enumerate(zip(sizes, rates, strict=True)):
        if r >= target:
            if i == 0:
                return float(n)
            n0, r0 = sizes[i - 1], rates[i - 1]
            w = (target - r0) / (r - r0)
            return float(math.exp(math.log(n0) + w * (math.log(n) - math.log(n0))))
    return None


def run(*, profile: str = "demo", runs: int = 50, aa_runs: int = 250, seed: int = 0,
        settings: Settings | None = None, say: Say = print) -> dict[str, Any]:
    s = settings or Settings()
    t0 = time.perf_counter()
    say(f"generating the {profile} profile and its hidden truth")
    _, truth = generate_with_truth(profile, seed=seed)
    world = World(truth, s)
    rng = np.random.default_rng(seed + 1)
    ctr_c = world.true_ctr(s.control_noise, 200_000, np.random.default_rng(seed + 2))
    ctr_t = world.true_ctr(s.candidate_noise, 200_000, np.random.default_rng(seed + 2))
    lift = ctr_t / ctr_c - 1
    say(f"true CTR: control {ctr_c:.4f}, candidate {ctr_t:.4f} (lift {lift:+.2%}); users' "
        f"click propensity sd {s.user_click_sd:g}")

    # pilot: an A/A run measures the baseline and the design effect, as a team would
    imp, ev, _ = ab_run(world, 4000, (s.control_noise, s.control_noise), rng)
    pilot = ab_analyse(imp, ev, 4000, s.alpha)
    de = float(np.mean(pilot["design_effect"]))
    per_user = pilot["impressions"] / 4000
    plans = {pw: plan(lift, pilot["ctr_control"], s.alpha, pw, relative=True,
                      design_effect=de, impressions_per_user=per_user) for pw in (0.8, 0.9)}
    n80, n90 = (plans[pw].users_per_variant or 0 for pw in (0.8, 0.9))
    say(f"pilot: CTR {pilot['ctr_control']:.4f}, design effect {de:.2f}, "
        f"{per_user:.1f} impressions/user; plan: {n80:,} users per variant (power 0.8), "
        f"{n90:,} (0.9)")

    grid_users = sorted({round(f * n80) for f in (0.25, 0.5, 0.75, 1.0)} | {n90})
    ab: dict[int, list[dict[str, Any]]] = {g: [] for g in grid_users}
    aa: dict[int, list[dict[str, Any]]] = {g: [] for g in (n80, n90)}
    join_ok = True
    t_ab = time.perf_counter()
    for i in range(runs):
        imp, ev, want = ab_run(world, 2 * n90, (s.control_noise, s.candidate_noise), rng)
        for g in grid_users:
            ab[g].append(ab_analyse(imp, ev, 2 * g, s.alpha))
        got = ab[n90][-1]["join"]
        join_ok &= (got["duplicates"], got["unmatched"]) == (want["duplicates"],
                                                              want["unmatched"])
        imp, ev, _ = ab_run(world, 2 * n90, (s.control_noise, s.control_noise), rng)
        for g in (n80, n90):
            aa[g].append(ab_analyse(imp, ev, 2 * g, s.alpha))
        if (i + 1) % 10 == 0:
            say(f"A/B: {i + 1}/{runs} runs ({time.perf_counter() - t_ab:.0f}s)")
    ab_curve = [{"users_per_variant": g,
                 "impressions": int(np.mean([r["impressions"] for r in ab[g]])),
                 "detected": sum(r["better"] for r in ab[g])} for g in grid_users]
    aa_rows = [{"users_per_variant": g,
                "impressions": int(np.mean([r["impressions"] for r in aa[g]])),
                "significant": sum(r["p"] < s.alpha for r in aa[g]),
                "significant_naive_z_test": sum(r["naive_p"] < s.alpha for r in aa[g])}
               for g in (n80, n90)]

    # interleaving: the same world, rankers and users; detection vs requests
    grid_req = [500, 1000, 2000, 3000, 4000, 6000, 8000]
    il: dict[int, list[bool]] = {g: [] for g in grid_req}
    il_aa: dict[int, list[bool]] = {g: [] for g in grid_req}
    outcomes = np.zeros(3, np.int64)  # wins, losses, ties over every run's requests
    t_il = time.perf_counter()
    for i in range(runs):
        ca, cb = interleaving_run(world, grid_req[-1], (s.control_noise, s.candidate_noise),
                                  rng)
        outcomes += [(cb > ca).sum(), (cb < ca).sum(), (cb == ca).sum()]
        for g in grid_req:
            pref = preference(ca[:g], cb[:g], alpha=s.alpha)
            il[g].append(pref.p_value < s.alpha and pref.wins > pref.losses)
        ca, cb = interleaving_run(world, grid_req[-1], (s.control_noise, s.control_noise), rng)
        for g in grid_req:
            il_aa[g].append(preference(ca[:g], cb[:g], alpha=s.alpha).p_value < s.alpha)
        if (i + 1) % 10 == 0:
            say(f"interleaving: {i + 1}/{runs} runs ({time.perf_counter() - t_il:.0f}s)")
    il_curve = [{"requests": g, "impressions": g * s.page, "detected": sum(il[g]),
                 "aa_significant": sum(il_aa[g])} for g in grid_req]
    ab_n = _crossing([r["impressions"] for r in ab_curve],
                     [r["detected"] / runs for r in ab_curve])
    il_n = _crossing([r["impressions"] for r in il_curve],
                     [r["detected"] / runs for r in il_curve])
    # the same figure from a power model: the sign test's normal approximation at the
    # pooled win share, and the plan's own number for the A/B test
    wins, losses, ties = (int(x) for x in outcomes)
    share = wins / (wins + losses)
    z = float(stats.norm.ppf(1 - s.alpha / 2) + stats.norm.ppf(0.8))
    il_model = (z * 0.5 / (share - 0.5)) ** 2 / ((wins + losses) / outcomes.sum()) * s.page
    # more A/A runs at the planned size (their own random stream, so the figures above do
    # not depend on how many): 50 runs cannot tell a 5 % false-positive rate from 10 %
    aa_rng = np.random.default_rng(seed + 3)
    aa_p = []
    t_aa = time.perf_counter()
    for i in range(aa_runs):
        imp, ev, _ = ab_run(world, 2 * n80, (s.control_noise, s.control_noise), aa_rng)
        aa_p.append(ab_analyse(imp, ev, 2 * n80, s.alpha)["p"])
        if (i + 1) % 50 == 0:
            say(f"A/A calibration: {i + 1}/{aa_runs} runs ({time.perf_counter() - t_aa:.0f}s)")
    aa_k = sum(p < s.alpha for p in aa_p)
    aa_ci = (stats.binomtest(aa_k, aa_runs).proportion_ci(method="exact") if aa_runs else None)
    result: dict[str, Any] = {
        "benchmark": "experiments", "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "profile": profile, "seed": seed, "runs": runs, "alpha": s.alpha,
        "settings": s.__dict__,
        "truth": {"ctr_control": ctr_c, "ctr_candidate": ctr_t, "relative_lift": lift,
                  "absolute_lift": ctr_t - ctr_c, "requests": 200_000},
        "pilot": {"users": 4000, "ctr": pilot["ctr_control"], "design_effect": de,
                  "impressions_per_user": per_user},
        "plan": {str(pw): p.to_dict() for pw, p in plans.items()},
        "ab": {"curve": ab_curve, "aa": aa_rows, "join_counts_exact": bool(join_ok),
               "detected_at_plan_80": next(r["detected"] for r in ab_curve
                                           if r["users_per_variant"] == n80),
               "detected_at_plan_90": next(r["detected"] for r in ab_curve
                                           if r["users_per_variant"] == n90),
               "impressions_for_80pct_detection": ab_n},
        "interleaving": {"curve": il_curve, "impressions_for_80pct_detection": il_n,
                         "pooled": {"wins": wins, "losses": losses, "ties": ties,
                                    "win_share": share,
                                    "impressions_for_80pct_power_model": il_model}},
        "aa_calibration": {
            "runs": aa_runs, "users_per_variant": n80, "significant": aa_k,
            "rate": aa_k / aa_runs if aa_runs else None,
            "rate_ci95": [aa_ci.low, aa_ci.high] if aa_ci else None,
            "p_values_uniform_ks_p": (float(stats.kstest(aa_p, "uniform").pvalue)
                                      if aa_runs else None)},
        "impressions_ratio_ab_over_interleaving": (ab_n / il_n if ab_n and il_n else None),
        "impressions_ratio_model": 2 * plans[0.8].impressions_per_variant / il_model,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    say(f"A/B at plan (0.8): {result['ab']['detected_at_plan_80']}/{runs} detected; A/A "
        f"{aa_rows[0]['significant']}/{runs} significant; 80 % detection: A/B "
        f"{ab_n or float('nan'):,.0f} impressions, interleaving {il_n or float('nan'):,.0f}")
    return result
