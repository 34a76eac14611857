"""A/B analysis of the impression log: outcome events joined to served impressions, per
variant rates with confidence intervals that respect per-user clustering, the difference
vs the control with its p-value, guardrails, and the sample size an experiment needs.

Pure pandas/numpy/scipy; `funnel experiment` (monitoring/experiments_cli.py) reads the log
and prints. Interleaving (team-draft, the sign test) lives in monitoring/interleaving.py.

The method. Users are the randomisation unit (variants are assigned by a hash of the user
id), so impressions of one user are not independent: a per-impression z-test understates the
variance and calls A/A experiments significant far more often than alpha. Every metric here
is a ratio of sums over users, sum_u y_u / sum_u n_u (clicks over impressions, say), and its
variance comes from the delta method on the user-level sums (Deng, Lu and Litz, "Applying the
Delta Method in Metric Analytics", KDD 2018):

    R = sum(y) / sum(n),  e_u = y_u - R * n_u,  Var(R) ~ var(e) / (users * mean(n)**2)

The variants' users are disjoint, so the difference's variance is the sum of the two; its
z-test gives the p-value, and the relative difference's interval uses the delta method on
R_t / R_c. The design effect (clustered variance / the binomial one) says how much larger
an experiment must be than a per-impression calculation suggests; `plan` takes it.

Small samples. A rate's interval is the Wilson score interval on the clustered effective
sample size, n_eff = R (1 - R) / Var(R): the delta method's interval where counts are large,
and still an interval at zero (or all) successes, where the delta method's variance is 0
and a Wald interval would collapse to [0, 0]; there n_eff falls back to Kish's effective
sample size at perfect within-user correlation, (sum n)^2 / sum n^2, the conservative end.
The test substitutes the same binomial variance, at the two arms' pooled rate, for an arm
without variance. Below `min_users` or `min_impressions` per variant (documented defaults,
MIN_USERS and MIN_IMPRESSIONS) a comparison gives no p-value and no verdict: "insufficient
data".

The control is `choose_control`'s: an explicit one; else the rollout config's primary
(its stage's first variant); else a variant named `control`; else `primary` (what serving
logs without a rollout config); else the variant with most users. The report says which
rule chose it.

Moderation (`analyze_moderation`): content ids are the randomisation unit (assignment
hashes the content id) and calls with text are the rows; the rates are block, review,
per-label flag and degraded (a guardrail). Whether a higher block rate is better needs
reviewers' decisions, which the log does not hold, so those verdicts are `higher` /
`lower`, not `better` / `worse`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from funnel.contracts import names
from funnel.contracts.errors import InvalidInputError

STAGES: dict[str, str] = {"ranker": "ranker_variant", "retrieval": "retrieval_variant",
                          "moderation": "variant"}
FEED_STAGES = ("ranker", "retrieval")
EVENT_TYPES = names.EVENT_TYPES
# Per variant, below these a comparison reports "insufficient data" instead of a p-value.
# 100 users: the delta method is a central limit theorem over users, and with fewer its
# variance estimate is itself too noisy for the interval's coverage. 1,000 impressions: at a
# 5 % CTR about 50 clicks, the least at which the normal approximation of a rate's
# difference is fair; rarer metrics (hide, report) need far more, which `plan` says.
MIN_USERS = 100
MIN_IMPRESSIONS = 1000
INSUFFICIENT = "insufficient data"


@dataclass(frozen=True)
class MetricSpec:
    """A per-row metric: `event`'s indicator (or, for dwell, its summed value)."""

    name: str
    event: str
    guardrail: bool = False  # a guardrail breaks when it rises significantly
    binary: bool = True      # a 0/1 indicator (a rate); False for dwell seconds
    judged: bool = True      # higher is better; False: verdicts say higher / lower


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("ctr", "click"), MetricSpec("like_rate", "like"),
    MetricSpec("comment_rate", "comment"), MetricSpec("share_rate", "share"),
    MetricSpec("dwell_s_per_impression", "dwell", binary=False),
    MetricSpec("hide_rate", "hide", guardrail=True),
    MetricSpec("report_rate", "report", guardrail=True),
)
MODERATION_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("block_rate", "block", judged=False),
    MetricSpec("review_rate", "review", judged=False),
    MetricSpec("degraded_rate", "degraded", guardrail=True),
)

SEQUENTIAL_CAVEAT = (
    "Fixed-horizon test: the p-values and intervals hold when the experiment is read once, at "
    "the sample size planned in advance (`funnel experiment plan`). Reading it repeatedly and "
    "stopping at the first p < alpha inflates the false-positive rate (about 0.14 after 5 "
    "looks and 0.19 after 10 at alpha 0.05). To look early, use a stricter per-look threshold "
    "(alpha spending, e.g. O'Brien-Fleming) or a sequential test.")
MULTIPLE_CAVEAT = (
    "p-values are per metric and per variant, uncorrected: choose the primary metric (ctr) "
    "before the experiment; with m candidates, compare each at alpha / m (Bonferroni).")


class ExperimentInputError(InvalidInputError):
    """An unusable analysis input (a stage, a control, a plan parameter). CLI exit 2, naming
    `field`."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


# ---- the join -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Joined:
    """Impressions with one column per event type (1 if the impression got that event, for
    dwell the summed seconds), and the events no impression matched, kept aside."""

    frame: pd.DataFrame
    unmatched: pd.DataFrame
    events_read: int
    duplicate_events: int
    duplicate_impressions: int

    @property
    def matched_events(self) -> int:
        return self.events_read - self.duplicate_events - len(self.unmatched)


def join_events(impressions: pd.DataFrame, events: pd.DataFrame) -> Joined:
    """impressions ⋈ events on (request_id, item_id). An event id counts once even when two
    replicas logged it (the earliest received is kept); an impression logged twice counts
    once; events whose impression is not in `impressions` are returned in `unmatched`."""
    keys = ["request_id", "item_id"]
    imp = impressions.drop_duplicates(keys)
    ev = events
    if len(ev) and "received_ts" in ev.columns:
        ev = ev.sort_values("received_ts", kind="stable")
    ev = _dedupe(ev)
    hit = pd.MultiIndex.from_frame(ev[keys]).isin(pd.MultiIndex.from_frame(imp[keys]))
    matched, unmatched = ev[hit], ev[~hit].reset_index(drop=True)
    frame = imp.reset_index(drop=True)
    if len(matched):
        value = (pd.to_numeric(matched["value"], errors="coerce").fillna(0.0)
                 if "value" in matched.columns else 0.0)
        agg = (matched.assign(_n=1, _v=value).groupby([*keys, "event"])
               .agg(n=("_n", "size"), v=("_v", "sum")))
        indicator = pd.Series(1, index=agg.index).unstack("event", fill_value=0)
        indicator = indicator.drop(columns="dwell", errors="ignore")
        if "dwell" in agg.index.get_level_values("event"):
            indicator["dwell"] = agg["v"].xs("dwell", level="event")
        frame = frame.merge(indicator.reset_index(), on=keys, how="left")
    for e in EVENT_TYPES:
        frame[e] = frame[e].fillna(0).astype(np.float64) if e in frame.columns else 0.0
    return Joined(frame=frame, unmatched=unmatched, events_read=len(events),
                  duplicate_events=len(events) - len(ev),
                  duplicate_impressions=len(impressions) - len(imp))


def _dedupe(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per event id; rows without an id are told apart by their own fields."""
    fields = [c for c in ev.columns if c not in ("event_id", "received_ts", "replica")]
    if "event_id" not in ev.columns:
        return ev.drop_duplicates(fields)
    has = ev["event_id"].notna()
    if has.all():
        return ev.drop_duplicates("event_id")
    return pd.concat([ev[has].drop_duplicates("event_id"), ev[~has].drop_duplicates(fields)])


# ---- clustered estimates ------------------------------------------------------------------
@dataclass(frozen=True)
class RatioEstimate:
    """sum(y) / sum(n) over users, with its delta-method standard error."""

    value: float
    se: float
    users: int
    impressions: int
    design_effect: float  # clustered variance / the per-impression (i.i.d.) variance
    # Kish's effective sample size if each user's impressions were perfectly correlated,
    # (sum n)^2 / sum n^2: the fallback n_eff where the clustered variance is undefined or 0
    n_eff_min: float = math.nan


def ratio_estimate(y: np.ndarray, n: np.ndarray, y2: np.ndarray | None = None
                   ) -> RatioEstimate:
    """`y`, `n`: per-user sums of the metric and of impressions; `y2`: per-user sums of the
    squared per-impression metric (defaults to `y`, right for 0/1 metrics)."""
    y, n = np.asarray(y, np.float64), np.asarray(n, np.float64)
    users, total = len(n), float(n.sum())
    if users == 0 or total == 0:
        return RatioEstimate(math.nan, math.nan, users, int(total), math.nan)
    r = float(y.sum()) / total
    kish = total ** 2 / float(n @ n)
    if users < 2:
        return RatioEstimate(r, math.nan, users, int(total), math.nan, kish)
    e = y - r * n
    var = float(e @ e) / (users - 1) / users / (total / users) ** 2
    sq = float(np.asarray(y if y2 is None else y2, np.float64).sum())
    naive = max(sq / total - r * r, 0.0) / total
    return RatioEstimate(r, math.sqrt(var), users, int(total),
                         var / naive if naive > 0 else math.nan, kish)


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` seen on `n` trials (an effective, possibly
    fractional, number): inside [0, 1], and wider than a point at p = 0 or 1."""
    if not (math.isfinite(p) and math.isfinite(n) and n > 0):
        return (math.nan, math.nan)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def effective_n(e: RatioEstimate) -> float:
    """Trials that would give a binomial rate the clustered variance: R (1 - R) / Var(R);
    Kish's worst case where that is undefined (no variance: 0 or all successes, one user)."""
    if 0 < e.value < 1 and math.isfinite(e.se) and e.se > 0:
        return e.value * (1 - e.value) / e.se ** 2
    return e.n_eff_min


def rate_interval(e: RatioEstimate, z: float, *, binary: bool = True) -> tuple[float, float]:
    """A rate's interval: Wilson on the effective sample size; for a non-rate (dwell
    seconds), the delta method's, floored at 0, and undefined without a variance."""
    if binary:
        return wilson(e.value, effective_n(e), z)
    if not (math.isfinite(e.se) and e.se > 0):
        return (math.nan, math.nan)
    return (max(0.0, e.value - z * e.se), e.value + z * e.se)


def _test_se(e: RatioEstimate, pooled: float, binary: bool) -> float:
    """The arm's standard error for the test: the delta method's, or for a rate without
    variance (no success at all, or only successes) the binomial one at the pooled rate on
    Kish's worst-case effective sample size: a zero-click arm is not certain to be zero."""
    if not binary or (math.isfinite(e.se) and e.se > 0) or not math.isfinite(pooled):
        return e.se
    return math.sqrt(pooled * (1 - pooled) / e.n_eff_min) if e.n_eff_min > 0 else math.nan


@dataclass(frozen=True)
class Comparison:
    diff: float
    diff_ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float


def compare(treatment: RatioEstimate, control: RatioEstimate, *, alpha: float = 0.05,
            binary: bool = True) -> Comparison:
    """Treatment minus control (disjoint users), two-sided z-test on the clustered variance.
    `binary`: the metric is a rate (a 0/1 indicator per impression)."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    t, c = treatment, control
    pooled = ((t.value * t.impressions + c.value * c.impressions)
              / (t.impressions + c.impressions)) if t.impressions + c.impressions else math.nan
    se_t, se_c = _test_se(t, pooled, binary), _test_se(c, pooled, binary)
    diff, se = t.value - c.value, math.hypot(se_t, se_c)
    if math.isnan(se):
        p = math.nan
    elif se > 0:
        p = float(2 * stats.norm.sf(abs(diff) / se))
    else:  # no variance at all (every user alike): only an exact tie is no difference
        p = 1.0 if diff == 0 else 0.0
    if c.value > 0:
        rel = t.value / c.value - 1
        se_rel = math.sqrt((se_t / c.value) ** 2 + (t.value * se_c / c.value ** 2) ** 2)
    else:
        rel = se_rel = math.nan
    return Comparison(diff, (diff - z * se, diff + z * se), rel,
                      (rel - z * se_rel, rel + z * se_rel), p)


# ---- the report ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantSummary:
    """Volumes of a variant. For moderation, `users` counts content ids and `impressions`
    calls (the report's `unit` and `row` say so)."""

    name: str
    impressions: int
    users: int
    requests: int
    sufficient: bool = True  # at least the minimum users and impressions per variant


@dataclass(frozen=True)
class MetricResult:
    metric: str
    variant: str
    guardrail: bool
    value: float
    ci: tuple[float, float]
    design_effect: float
    vs_control: Comparison | None = None
    # better | worse | higher | lower | breached | no significant difference | control |
    # insufficient data (this variant or the control is below the minimums: no test)
    verdict: str = ""


@dataclass(frozen=True)
class LatencyResult:
    variant: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p99_ratio_vs_control: float


@dataclass(frozen=True)
class InterleavingResult:
    """Team-draft interleaving of the control's ranker with `variant`'s: the requests that
    were interleaved and the sign test on which team's items got more clicks."""

    variant: str
    requests: int
    impressions: int
    clicks: int
    preference: dict[str, Any]
    verdict: str


FEED_METHOD = ("delta method on user-level ratio-of-sums (users are the randomisation unit); "
               "two-sided z-test of the difference vs the control; Wilson intervals on the "
               "clustered effective sample size")
MODERATION_METHOD = ("delta method on content-level ratio-of-sums (content ids are the "
                     "randomisation unit: assignment hashes the content id); two-sided z-test "
                     "of the difference vs the control; Wilson intervals on the clustered "
                     "effective sample size")


@dataclass(frozen=True)
class ExperimentReport:
    stage: str
    control: str
    alpha: float
    variants: tuple[VariantSummary, ...]
    metrics: tuple[MetricResult, ...]
    events: Mapping[str, int]
    latency: tuple[LatencyResult, ...] = ()
    notes: tuple[str, ...] = ()
    method: str = FEED_METHOD
    caveats: tuple[str, ...] = (SEQUENTIAL_CAVEAT, MULTIPLE_CAVEAT)
    window: Mapping[str, str] = field(default_factory=dict)
    interleaving: tuple[InterleavingResult, ...] = ()
    control_rule: str = ""  # why `control` is the control (choose_control)
    minimums: Mapping[str, int] = field(default_factory=dict)  # {users, impressions}
    unit: str = "users"      # what `users` counts (content ids for moderation)
    row: str = "impressions"  # what `impressions` counts (calls for moderation)

    def metric(self, name: str, variant: str) -> MetricResult:
        return next(m for m in self.metrics if m.metric == name and m.variant == variant)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if not math.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def choose_control(variants: Sequence[str], sizes: Mapping[str, int], *,
                   control: str | None = None, primary: str | None = None,
                   stage: str = "ranker", unit_name: str = "users") -> tuple[str, str]:
    """(the control, the rule that chose it). In order: `control` if given; the rollout
    config's `primary` (its stage's first variant, docs/rollout.md); a variant named
    'control'; 'primary' (serving's name for traffic without a rollout config, e.g. from
    before one was applied); the variant with most users (`sizes`)."""
    have = ", ".join(sorted(variants)) or "none"
    if control is not None:
        if control not in variants:
            raise ExperimentInputError(f"{control!r} is not a variant of the window; the log "
                                       f"has {have}", field="control")
        return control, "given (--control)"
    if primary is not None:
        if primary not in variants:
            raise ExperimentInputError(
                f"the rollout config's primary {primary!r} (stages.{stage}.variants[0]) "
                f"served nothing in the window; the log has {have}", field="rollout_config")
        return primary, f"the rollout config's primary (stages.{stage}.variants[0])"
    if "control" in variants:
        return "control", "the variant named 'control'"
    if "primary" in variants:
        return "primary", ("the variant named 'primary' (served without a rollout config; "
                           "pass --rollout-config or --control if a rollout was running)")
    best = max(variants, key=lambda v: (sizes[v], v))
    return best, (f"the variant with most {unit_name} (no rollout config, no 'control' or "
                  "'primary')")


def _check_common(alpha: float, min_users: int, min_impressions: int) -> None:
    if not 0 < alpha < 1:
        raise ExperimentInputError(f"alpha {alpha!r}: expected 0 < alpha < 1", field="alpha")
    for name, v in (("min_users", min_users), ("min_impressions", min_impressions)):
        if not (isinstance(v, int | np.integer) and v >= 0):
            raise ExperimentInputError(f"{name} {v!r}: expected a whole number >= 0",
                                       field=name)


def analyze(joined: Joined, *, stage: str, control: str | None = None,
            rollout_variants: Sequence[str] | None = None, alpha: float = 0.05,
            min_users: int = MIN_USERS, min_impressions: int = MIN_IMPRESSIONS,
            window: Mapping[str, str] | None = None) -> ExperimentReport:
    """Per variant of the feed `stage`: volumes, each metric with its interval, and for every
    other variant the difference vs the control with its p-value and a verdict.
    `rollout_variants`: the stage's variants in the rollout config, the primary first."""
    if stage not in FEED_STAGES:
        raise ExperimentInputError(f"stage {stage!r}: expected one of "
                                   f"{', '.join(FEED_STAGES)} (moderation: analyze_moderation)",
                                   field="stage")
    _check_common(alpha, min_users, min_impressions)
    col = STAGES[stage]
    f = joined.frame
    if col not in f.columns:
        raise ExperimentInputError(f"the impressions have no {col!r} column", field="stage")
    if f.empty:
        raise ExperimentInputError("no impressions to analyse", field="window")
    f = f.assign(**{col: f[col].fillna("primary").astype(str)})
    minimums = {"users": min_users, "impressions": min_impressions}
    interleaved = _interleaving(f, alpha) if stage == "ranker" else ()
    if interleaved:  # mixed pages belong to neither arm of the A/B comparison
        mixed, f = f, f[f["team"].isna()]
        if f.empty:
            return ExperimentReport(
                stage=stage, control=str(mixed[col].mode().iloc[0]), alpha=alpha,
                variants=(), metrics=(), events=_event_counts(joined),
                notes=("every impression in the window was interleaved: no A/B traffic to "
                       "compare; the interleaving table is the result",),
                window=dict(window or {}), interleaving=interleaved,
                control_rule="the variant that served the interleaved requests",
                minimums=minimums)
    ab = _ab(f, col=col, unit="user_id", metrics=METRICS, stage=stage, control=control,
             rollout_variants=rollout_variants, alpha=alpha, minimums=minimums,
             unit_name="users", row_name="impressions")
    notes = ab.notes
    if interleaved:
        notes.append(f"{sum(r.requests for r in interleaved)} interleaved requests are "
                     "analysed apart (interleaving) and left out of the A/B rates: their pages "
                     "mix two rankers")
    latency = _latency(f, col, ab.order) if "latency_ms" in f.columns else ()
    if not latency:
        notes.append("no latency_ms in the impression log: latency guardrails are the "
                     "rollout's (p99_latency_ratio, from the serving metrics)")
    return ExperimentReport(stage=stage, control=ab.control, alpha=alpha, variants=ab.variants,
                            metrics=ab.metrics, events=_event_counts(joined),
                            latency=latency, notes=tuple(notes), window=dict(window or {}),
                            interleaving=interleaved, control_rule=ab.control_rule,
                            minimums=minimums)


@dataclass(frozen=True)
class ModerationCalls:
    """The moderation log's calls a text head scored, one row per request id, with a 0/1
    column per metric; the metrics; and how many calls were left out."""

    frame: pd.DataFrame
    metrics: tuple[MetricSpec, ...]
    image_only: int
    duplicates: int


def moderation_calls(calls: pd.DataFrame) -> ModerationCalls:
    """The stage's variants are text heads, so image-only calls (which never reach one) are
    left out. Metrics: block and review rates (the call's decision), each label's flag rate
    (its outcome was review or block) and the degraded rate (a model was unavailable: the
    guardrail)."""
    for c in ("content_id", "decision"):
        if c not in calls.columns:
            raise ExperimentInputError(f"the moderation log has no {c!r} column",
                                       field="stage")
    f = calls
    dup = 0
    if "request_id" in f.columns:
        n = len(f)
        f = f.drop_duplicates("request_id")
        dup = n - len(f)
    image_only = 0
    if "content" in f.columns:
        texty = np.array(["text" in str(c) for c in f["content"]], dtype=bool)
        image_only = int((~texty).sum())
        f = f[texty]
    decision = f["decision"].fillna("").astype(str)
    cols: dict[str, Any] = {"block": (decision == "block").astype(np.float64),
                            "review": (decision == "review").astype(np.float64)}
    degraded = (f["degraded"].fillna("").astype(str) if "degraded" in f.columns
                else pd.Series("", index=f.index))
    cols["degraded"] = (degraded != "").astype(np.float64)
    labels = sorted(c.removeprefix("outcome_") for c in f.columns if c.startswith("outcome_"))
    for lb in labels:
        cols[f"flag_{lb}"] = f[f"outcome_{lb}"].isin(["review", "block"]).astype(np.float64)
    metrics = (*MODERATION_METRICS[:2],
               *(MetricSpec(f"{lb}_flag_rate", f"flag_{lb}", judged=False) for lb in labels),
               MODERATION_METRICS[2])
    variant = (f["variant"] if "variant" in f.columns else pd.Series(None, index=f.index))
    frame = pd.DataFrame({"variant": variant.fillna("primary").astype(str),
                          "content_id": f["content_id"].astype(str),
                          "request_id": (f["request_id"] if "request_id" in f.columns
                                         else pd.Series(np.arange(len(f)), index=f.index)),
                          **cols}).reset_index(drop=True)
    return ModerationCalls(frame, metrics, image_only, dup)


def analyze_moderation(calls: pd.DataFrame, *, control: str | None = None,
                       rollout_variants: Sequence[str] | None = None, alpha: float = 0.05,
                       min_users: int = MIN_USERS, min_impressions: int = MIN_IMPRESSIONS,
                       window: Mapping[str, str] | None = None) -> ExperimentReport:
    """The moderation stage's A/B report from the moderation log: per variant, content ids
    and calls, the decision and flag rates with intervals, and the difference vs the control.
    `min_users` / `min_impressions` count content ids / calls."""
    _check_common(alpha, min_users, min_impressions)
    mc = moderation_calls(calls)
    if mc.frame.empty:
        raise ExperimentInputError("no moderation calls with text to analyse", field="window")
    minimums = {"users": min_users, "impressions": min_impressions}
    ab = _ab(mc.frame, col="variant", unit="content_id", metrics=mc.metrics,
             stage="moderation", control=control, rollout_variants=rollout_variants,
             alpha=alpha, minimums=minimums, unit_name="content ids", row_name="calls")
    notes = ab.notes
    if mc.image_only:
        notes.append(f"{mc.image_only:,} image-only calls left out: no text head (the stage's "
                     "variants) scored them")
    notes.append("these rates say how often each variant blocks, sends to review or flags a "
                 "label, not whether it is right: 'higher' / 'lower' is no judgement. "
                 "Precision needs reviewers' decisions (`funnel review export`), and agreement "
                 "with the primary is the rollout's overlap_at_k / rank_correlation guardrails "
                 "(`funnel rollout status`)")
    return ExperimentReport(stage="moderation", control=ab.control, alpha=alpha,
                            variants=ab.variants, metrics=ab.metrics,
                            events={"calls": len(mc.frame) + mc.image_only,
                                    "duplicates": mc.duplicates, "image_only": mc.image_only},
                            notes=tuple(notes), method=MODERATION_METHOD,
                            caveats=(SEQUENTIAL_CAVEAT,
                                     MULTIPLE_CAVEAT.replace("(ctr)", "(block_rate, say)")),
                            window=dict(window or {}), control_rule=ab.control_rule,
                            minimums=minimums, unit="content ids", row="calls")


@dataclass(frozen=True)
class _AB:
    control: str
    control_rule: str
    order: list[str]
    variants: tuple[VariantSummary, ...]
    metrics: tuple[MetricResult, ...]
    notes: list[str]


def _ab(f: pd.DataFrame, *, col: str, unit: str, metrics: Sequence[MetricSpec], stage: str,
        control: str | None, rollout_variants: Sequence[str] | None, alpha: float,
        minimums: Mapping[str, int], unit_name: str, row_name: str) -> _AB:
    """The A/B comparison of `f`'s rows (one per impression or call), variants in `col`,
    clustered by `unit`."""
    names = [m.event for m in metrics]
    squares = [f"{e}2" for e in names]
    users = (f.assign(_n=1, **{f"{e}2": f[e] ** 2 for e in names})
             .groupby([col, unit], sort=False)[["_n", *names, *squares]].sum())
    by_variant: dict[str, pd.DataFrame] = {
        str(v): g.droplevel(0) for v, g in users.groupby(level=0, sort=False)}
    sizes = {v: len(g) for v, g in by_variant.items()}
    ctrl, rule = choose_control(list(by_variant), sizes, control=control, stage=stage,
                                primary=rollout_variants[0] if rollout_variants else None,
                                unit_name=unit_name)
    order = [ctrl, *sorted(v for v in by_variant if v != ctrl)]
    requests = {str(k): int(n) for k, n in f.groupby(col)["request_id"].nunique().items()}
    rows = {v: int(by_variant[v]["_n"].sum()) for v in order}
    enough = {v: sizes[v] >= minimums["users"] and rows[v] >= minimums["impressions"]
              for v in order}
    summaries = tuple(VariantSummary(v, rows[v], sizes[v], int(requests[v]), enough[v])
                      for v in order)
    z = float(stats.norm.ppf(1 - alpha / 2))
    results: list[MetricResult] = []
    for spec in metrics:
        est: dict[str, RatioEstimate] = {
            v: ratio_estimate(g[spec.event].to_numpy(), g["_n"].to_numpy(),
                              g[f"{spec.event}2"].to_numpy()) for v, g in by_variant.items()}
        for v in order:
            e = est[v]
            ci = rate_interval(e, z, binary=spec.binary)
            if v == ctrl:
                verdict, cmp = "control", None
            elif not (enough[v] and enough[ctrl]):
                verdict, cmp = INSUFFICIENT, None
            else:
                cmp = compare(e, est[ctrl], alpha=alpha, binary=spec.binary)
                verdict = _verdict(cmp, spec, alpha)
            results.append(MetricResult(spec.name, v, spec.guardrail, e.value, ci,
                                        e.design_effect, cmp, verdict))
    notes = []
    several = int((users.reset_index().groupby(unit)[col].nunique() > 1).sum())
    if several:
        notes.append(f"{several} {unit_name} were served more than one {stage} variant (the "
                     "salt or weights changed in the window); they count in each, and the "
                     "variants are treated as independent")
    low = [v for v in order if not enough[v]]
    if low and len(order) > 1:
        who = ("the control is, so every comparison is" if ctrl in low
               else "comparisons of " + ", ".join(low) + " are")
        notes.append(
            f"{', '.join(f'{v} ({sizes[v]:,} {unit_name}, {rows[v]:,} {row_name})' for v in low)}"
            f": below the minimum per variant of {minimums['users']:,} {unit_name} and "
            f"{minimums['impressions']:,} {row_name}; {who} '{INSUFFICIENT}' (no p-value, no "
            "verdict; --min-users, --min-impressions)")
    if len(order) == 1:
        notes.append(f"only one {stage} variant ({ctrl}) in the window: nothing to compare")
    if rollout_variants:
        extra = [v for v in order if v not in rollout_variants]
        if extra:
            notes.append(f"{', '.join(extra)}: not in the rollout config's {stage} variants "
                         "(traffic from before it was applied, or from another config)")
    return _AB(ctrl, rule, order, summaries, tuple(results), notes)


def _event_counts(joined: Joined) -> dict[str, int]:
    events = {"read": joined.events_read, "duplicates": joined.duplicate_events,
              "matched": joined.matched_events, "unmatched": len(joined.unmatched),
              "duplicate_impressions": joined.duplicate_impressions}
    if len(joined.unmatched) and "event" in joined.unmatched.columns:
        for name, n in joined.unmatched["event"].value_counts().items():
            events[f"unmatched_{name}"] = int(n)
    return events


def _interleaving(f: pd.DataFrame, alpha: float) -> tuple[InterleavingResult, ...]:
    """Per interleaved variant, the sign test over its interleaved requests (clicks credited
    to the team that contributed the clicked item)."""
    from monitoring.interleaving import preference_from_log

    if "team" not in f.columns or not f["team"].notna().any():
        return ()
    rows = f[f["team"].notna()]
    variant = (rows["interleaved_variant"].fillna("unknown").astype(str)
               if "interleaved_variant" in rows.columns else pd.Series("unknown", rows.index))
    out = []
    for name, g in rows.groupby(variant, sort=True):
        pref = preference_from_log(g, alpha=alpha)
        if pref.wins + pref.losses == 0:
            verdict = "no clicks to compare yet"
        elif pref.p_value >= alpha:
            verdict = "no significant preference"
        else:
            verdict = "candidate preferred" if pref.wins > pref.losses else "control preferred"
        out.append(InterleavingResult(str(name), int(g["request_id"].nunique()), len(g),
                                      int((g["click"] > 0).sum()), pref.to_dict(), verdict))
    return tuple(out)


def _verdict(cmp: Comparison, spec: MetricSpec, alpha: float) -> str:
    if math.isnan(cmp.p_value) or cmp.p_value >= alpha:
        return "no significant difference"
    if spec.guardrail:
        return "breached" if cmp.diff > 0 else "better"
    if not spec.judged:
        return "higher" if cmp.diff > 0 else "lower"
    return "better" if cmp.diff > 0 else "worse"


def _latency(f: pd.DataFrame, col: str, order: Sequence[str]) -> tuple[LatencyResult, ...]:
    per_request = f.dropna(subset=["latency_ms"]).drop_duplicates("request_id")
    q = {str(v): np.quantile(g["latency_ms"].to_numpy(np.float64), [0.5, 0.95, 0.99])
         for v, g in per_request.groupby(col) if len(g)}
    if order[0] not in q:
        return ()
    base = q[order[0]][2]
    return tuple(LatencyResult(v, int((per_request[col] == v).sum()), float(q[v][0]),
                               float(q[v][1]), float(q[v][2]),
                               float(q[v][2] / base) if base > 0 else math.nan)
                 for v in order if v in q)


# ---- planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Sample size per variant for a two-sided test of two rates, equal allocation."""

    baseline_rate: float
    treatment_rate: float
    mde_absolute: float
    mde_relative: float
    alpha: float
    power: float
    impressions_per_variant_iid: int  # if impressions were independent
    design_effect: float
    impressions_per_variant: int
    impressions_per_user: float | None
    users_per_variant: int | None
    formula: str = ("n = (z(1-alpha/2) sqrt(2 p(1-p)) + z(power) sqrt(p1(1-p1) + p2(1-p2)))^2"
                    " / (p2-p1)^2, p = (p1+p2)/2 (Fleiss, Levin & Paik 2003, eq. 4.14, no "
                    "continuity correction); impressions = n * design effect")

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def plan(mde: float, baseline_rate: float, alpha: float = 0.05, power: float = 0.8, *,
         relative: bool = False, design_effect: float = 1.0,
         impressions_per_user: float | None = None) -> Plan:
    """Impressions (and users, given `impressions_per_user`) per variant to detect a change
    of `mde` in a rate of `baseline_rate`: absolute (0.02 = two points) unless `relative`
    (0.02 = 2 %). `design_effect`: the report's clustered / i.i.d. variance ratio."""
    checks = [("baseline_rate", 0 < baseline_rate < 1, "0 < rate < 1"),
              ("mde", mde > 0 and math.isfinite(mde), "a positive number"),
              ("alpha", 0 < alpha < 1, "0 < alpha < 1"),
              ("power", 0 < power < 1, "0 < power < 1"),
              ("design_effect", 0 < design_effect <= 1000, "0 < design effect <= 1000"),
              ("impressions_per_user", impressions_per_user is None or
               impressions_per_user >= 1, "at least 1")]
    given = {"baseline_rate": baseline_rate, "mde": mde, "alpha": alpha, "power": power,
             "design_effect": design_effect, "impressions_per_user": impressions_per_user}
    for name, ok, allowed in checks:
        if not ok:
            raise ExperimentInputError(f"{name} {given[name]!r}: expected {allowed}",
                                       field=name)
    p1 = baseline_rate
    delta = mde * p1 if relative else mde
    p2 = p1 + delta
    if not 0 < p2 < 1:
        raise ExperimentInputError(
            f"mde {mde!r}{' (relative)' if relative else ''} on a baseline of {p1!r} gives a "
            f"rate of {p2:.6g}; the treatment rate must be between 0 and 1", field="mde")
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pbar = (p1 + p2) / 2
    n = ((za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2)))
         ** 2 / delta ** 2)
    n_iid = math.ceil(n)
    total = math.ceil(n * design_effect)
    users = (None if impressions_per_user is None
             else math.ceil(total / impressions_per_user))
    return Plan(p1, p2, delta, delta / p1, alpha, power, n_iid, design_effect, total,
                impressions_per_user, users)
