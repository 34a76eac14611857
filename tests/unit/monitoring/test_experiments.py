from __future__ import annotations

import inspect
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from monitoring.experiments import (
    INSUFFICIENT,
    MIN_IMPRESSIONS,
    MIN_USERS,
    ExperimentInputError,
    ExperimentReport,
    analyze,
    analyze_moderation,
    choose_control,
    compare,
    join_events,
    moderation_calls,
    plan,
    rate_interval,
    ratio_estimate,
    wilson,
)
from monitoring.experiments_cli import experiment_app, report_cmd
from monitoring.interleaving import (
    TEAM_A,
    TEAM_B,
    credit,
    preference,
    preference_from_log,
    sign_test,
    team_draft,
)


# ---- the join -----------------------------------------------------------------------------
def _impressions() -> pd.DataFrame:
    return pd.DataFrame({"request_id": ["r1", "r1", "r2"], "item_id": [10, 11, 12],
                         "user_id": [1, 1, 2], "position": [0, 1, 0],
                         "ranker_variant": ["primary", "primary", "candidate"]})


def _events(rows: list[tuple[str | None, str, int, str, float | None, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_id", "request_id", "item_id", "event", "value",
                                       "received_ts"])


def test_join_counts_an_event_id_once_and_keeps_unmatched_events_aside() -> None:
    ev = _events([
        ("e1", "r1", 10, "click", None, 1),
        ("e1", "r1", 10, "click", None, 2),   # the same event, logged by a second replica
        ("e2", "r1", 11, "click", None, 3),
        ("e3", "r1", 10, "like", None, 4),
        ("e4", "r2", 12, "dwell", 5.0, 5),
        ("e5", "r2", 12, "dwell", 3.0, 6),
        ("e6", "r9", 10, "click", None, 7),   # unknown request
        ("e7", "r1", 12, "click", None, 8),   # item not served in r1
        (None, "r2", 12, "hide", None, 9),    # no id: its fields are its identity
        (None, "r2", 12, "hide", None, 9),
    ])
    j = join_events(_impressions(), ev)
    f = j.frame.set_index(["request_id", "item_id"])
    assert f["click"].tolist() == [1, 1, 0]
    assert f["like"].tolist() == [1, 0, 0]
    assert f["dwell"].tolist() == [0, 0, 8.0]
    assert f["hide"].tolist() == [0, 0, 1]
    assert f["share"].tolist() == [0, 0, 0]
    assert (j.events_read, j.duplicate_events, j.matched_events) == (10, 2, 6)
    assert sorted(j.unmatched["event_id"]) == ["e6", "e7"]


def test_join_with_no_events_and_a_doubly_logged_impression() -> None:
    imp = pd.concat([_impressions(), _impressions().iloc[:1]], ignore_index=True)
    j = join_events(imp, _events([]))
    assert len(j.frame) == 3 and j.duplicate_impressions == 1
    assert j.frame["click"].sum() == 0 and len(j.unmatched) == 0


# ---- clustered estimates ------------------------------------------------------------------
def test_ratio_estimate_by_hand() -> None:
    # R = 3/8; residuals y - R n = (0.25, -0.75, 0.5); var = 0.875 / 2 / 3 / (8/3)^2
    e = ratio_estimate(np.array([1, 0, 2]), np.array([2, 2, 4]))
    assert e.value == pytest.approx(0.375)
    assert e.se == pytest.approx(math.sqrt(0.875 / 6 / (8 / 3) ** 2))
    assert e.design_effect == pytest.approx(0.875 / 6 / (8 / 3) ** 2 / (0.375 * 0.625 / 8))


def _arm(rng: np.random.Generator, users: int, lift: float = 0.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user clicks and impressions: users differ a lot in CTR and in activity."""
    p = rng.beta(1.0, 12.0, users) * (1 + lift)
    n = 1 + rng.poisson(25, users)
    return rng.binomial(n, np.minimum(p, 1)), n


def test_aa_rejections_stay_near_alpha_and_the_naive_test_does_not() -> None:
    rng = np.random.default_rng(0)
    clustered = naive = 0
    for _ in range(200):
        (y1, n1), (y2, n2) = _arm(rng, 300), _arm(rng, 300)
        clustered += compare(ratio_estimate(y2, n2), ratio_estimate(y1, n1)).p_value < 0.05
        p = (y1.sum() + y2.sum()) / (n1.sum() + n2.sum())
        z = (y2.sum() / n2.sum() - y1.sum() / n1.sum()) / math.sqrt(
            p * (1 - p) * (1 / n1.sum() + 1 / n2.sum()))
        naive += 2 * stats.norm.sf(abs(z)) < 0.05
    assert 0.02 <= clustered / 200 <= 0.09
    assert naive / 200 > 0.2  # per-impression z-test: users' heterogeneity ignored


def _frame(rng: np.random.Generator, users: int, lifts: dict[str, float]) -> pd.DataFrame:
    rows = []
    for k, (name, lift) in enumerate(lifts.items()):
        y, n = _arm(rng, users, lift)
        uid = np.repeat(np.arange(users) + k * users, n)
        clicked = np.concatenate([np.arange(m) < c for c, m in zip(y, n, strict=True)])
        rows.append(pd.DataFrame({"request_id": [f"q{u}" for u in uid],
                                  "item_id": np.arange(len(uid)), "user_id": uid,
                                  "ranker_variant": name, "click": clicked}))
    return pd.concat(rows, ignore_index=True)


def _events_of(frame: pd.DataFrame) -> pd.DataFrame:
    hit = frame[frame["click"]]
    return pd.DataFrame({"event_id": [f"e{i}" for i in range(len(hit))],
                         "request_id": hit["request_id"].to_numpy(),
                         "item_id": hit["item_id"].to_numpy(), "event": "click"})


def test_a_big_effect_is_called_better_with_a_tiny_p() -> None:
    f = _frame(np.random.default_rng(1), 2000, {"primary": 0.0, "candidate": 0.3})
    rep = analyze(join_events(f.drop(columns="click"), _events_of(f)), stage="ranker")
    m = rep.metric("ctr", "candidate")
    assert rep.control == "primary" and m.verdict == "better"
    assert m.vs_control is not None and m.vs_control.p_value < 0.001
    assert m.vs_control.relative == pytest.approx(0.3, abs=0.08)
    assert m.vs_control.relative_ci[0] < m.vs_control.relative < m.vs_control.relative_ci[1]
    hide = rep.metric("hide_rate", "candidate")
    assert hide.guardrail and hide.verdict == "no significant difference"
    assert [v.name for v in rep.variants] == ["primary", "candidate"]
    assert rep.variants[0].users == 2000
    assert any("peeking" in c or "repeatedly" in c for c in rep.caveats)
    json.dumps(rep.to_dict())  # NaN-free, serialisable


def test_a_rising_guardrail_is_breached_and_users_in_two_variants_are_noted() -> None:
    f = _frame(np.random.default_rng(4), 1500, {"primary": 0.0, "candidate": 1.0})
    hides = _events_of(f).assign(event="hide")
    f.loc[0, "ranker_variant"] = "candidate"  # user 0 also saw the candidate
    rep = analyze(join_events(f.drop(columns="click"), hides), stage="ranker")
    hide = rep.metric("hide_rate", "candidate")
    assert hide.verdict == "breached" and rep.metric("ctr", "candidate").value == 0
    assert any("1 users were served more than one ranker variant" in n for n in rep.notes)


def test_an_unknown_control_names_the_variants() -> None:
    f = _frame(np.random.default_rng(2), 50, {"a": 0.0, "b": 0.0})
    with pytest.raises(ExperimentInputError, match="has a, b") as e:
        analyze(join_events(f, _events_of(f).iloc[:0]), stage="ranker", control="zzz")
    assert e.value.field == "control"


# ---- planning -----------------------------------------------------------------------------
def test_plan_matches_the_textbook_value() -> None:
    # Fleiss, Levin & Paik (2003) eq. 4.14 without continuity correction, p1 = 0.05,
    # p2 = 0.07, alpha 0.05 two-sided, power 0.8: 2212.2 per group (statsmodels'
    # samplesize_proportions_2indep_onetail agrees) -> 2213.
    p = plan(0.02, 0.05)
    assert p.impressions_per_variant_iid == p.impressions_per_variant == 2213
    assert p.treatment_rate == pytest.approx(0.07) and p.mde_relative == pytest.approx(0.4)
    r = plan(0.4, 0.05, relative=True, design_effect=2.0, impressions_per_user=40)
    assert r.impressions_per_variant_iid == 2213
    assert r.impressions_per_variant == 4425 and r.users_per_variant == 111
    assert plan(0.02, 0.05, power=0.9).impressions_per_variant_iid > 2213


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mde": 0.02, "baseline_rate": 1.5}, "baseline_rate"),
    ({"mde": -0.01, "baseline_rate": 0.05}, "mde"),
    ({"mde": 0.6, "baseline_rate": 0.5}, "mde"),
    ({"mde": 0.02, "baseline_rate": 0.05, "power": 1.0}, "power"),
])
def test_plan_rejects_impossible_inputs_naming_the_field(kwargs: dict[str, float],
                                                         field: str) -> None:
    with pytest.raises(ExperimentInputError) as e:
        plan(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


# ---- interleaving -------------------------------------------------------------------------
def test_team_draft_properties() -> None:
    rng = random.Random(0)
    for _ in range(300):
        pool = list(range(rng.randint(1, 15)))
        a = rng.sample(pool, rng.randint(0, len(pool)))
        b = rng.sample(pool, rng.randint(0, len(pool)))
        il = team_draft(a, b, rng=rng)
        assert len(set(il.items)) == len(il.items)  # no duplicates
        assert set(il.items) == set(a) | set(b)  # everything from the two lists
        picked: set[int] = set()
        both = True
        for k, (item, team) in enumerate(zip(il.items, il.teams, strict=True)):
            mine = a if team == TEAM_A else b
            # each pick is its ranker's best item not yet on the page
            assert item == next(x for x in mine if x not in picked)
            both = both and any(x not in picked for x in a) and any(x not in picked for x in b)
            picked.add(item)
            if both and k % 2 == 1:  # every full round holds one item of each team
                assert il.teams[k - 1] != il.teams[k]
        assert len(team_draft(a, b, length=3, rng=rng).items) == min(3, len(set(a) | set(b)))


def test_team_draft_coin_decides_the_first_pick_of_each_round() -> None:
    firsts = {team_draft([1, 2], [3, 4], rng=random.Random(s)).teams[0] for s in range(20)}
    assert firsts == {TEAM_A, TEAM_B}
    same = team_draft([5, 6, 7, 8], [5, 6, 7, 8], rng=random.Random(1))
    assert same.items == (5, 6, 7, 8) and sorted(same.teams) == [0, 0, 1, 1]


def test_credit_goes_to_the_team_that_contributed_the_item() -> None:
    assert credit([TEAM_A, TEAM_B, TEAM_B, TEAM_A], [True, True, False, True]) == (2, 1)
    assert credit([], []) == (0, 0)
    with pytest.raises(ValueError, match="same"):
        credit([TEAM_A], [True, False])


def test_sign_test_by_hand() -> None:
    p = sign_test(9, 1, 5)
    # two-sided exact binomial: 2 * P(X >= 9 | n = 10, 1/2) = 2 * 11 / 1024
    assert p.p_value == pytest.approx(22 / 1024)
    assert p.share == pytest.approx(0.9) and p.requests == 15
    assert p.ci[0] == pytest.approx(stats.beta.ppf(0.025, 9, 2))  # Clopper-Pearson
    assert p.ci[1] == pytest.approx(stats.beta.ppf(0.975, 10, 1))
    assert p.delta == pytest.approx((9 + 2.5) / 15 - 0.5)
    assert sign_test(0, 0, 4).p_value == 1.0
    pref = preference([0, 1, 2, 0], [1, 1, 0, 3])
    assert (pref.wins, pref.losses, pref.ties) == (2, 1, 1)


def test_preference_from_a_joined_log() -> None:
    imp = pd.DataFrame({
        "request_id": ["q1", "q1", "q2", "q2", "q3", "q3", "q4"],
        "item_id": [1, 2, 1, 2, 1, 2, 9],
        "team": [TEAM_A, TEAM_B, TEAM_B, TEAM_A, TEAM_A, TEAM_B, None]})
    ev = pd.DataFrame({"event_id": ["a", "b", "c", "d"], "request_id": ["q1", "q2", "q2", "q4"],
                       "item_id": [2, 1, 2, 9], "event": "click"})
    pref = preference_from_log(join_events(imp, ev).frame)
    # q1: B wins; q2: one click each, a tie; q3: no clicks, a tie; q4 was not interleaved
    assert (pref.wins, pref.losses, pref.ties) == (1, 0, 2)


def _interleaved(rng: np.random.Generator, requests: int, p_b: float) -> pd.DataFrame:
    """Interleaved control requests of 4 items (teams A B A B): the candidate team's items
    clicked with `p_b`, the control's with 0.2; plus their click column."""
    rid = np.repeat([f"il{i}" for i in range(requests)], 4)
    team = np.tile([TEAM_A, TEAM_B, TEAM_A, TEAM_B], requests)
    click = rng.random(len(rid)) < np.where(team == TEAM_B, p_b, 0.2)
    return pd.DataFrame({"request_id": rid, "item_id": np.arange(len(rid)) + 10**6,
                         "user_id": np.repeat(np.arange(requests) % 300, 4) + 10**5,
                         "ranker_variant": "control", "team": team.astype(float),
                         "interleaved_variant": "candidate", "click": click})


def test_interleaved_requests_are_tested_apart_and_left_out_of_the_ab_rates() -> None:
    rng = np.random.default_rng(5)
    ab = _frame(rng, 400, {"control": 0.0, "candidate": 0.0})
    ab["team"], ab["interleaved_variant"] = np.nan, None
    il = _interleaved(rng, 600, 0.4)
    f = pd.concat([ab, il], ignore_index=True)
    rep = analyze(join_events(f.drop(columns="click"), _events_of(f)), stage="ranker")
    assert len(rep.interleaving) == 1
    r = rep.interleaving[0]
    assert (r.variant, r.requests, r.impressions) == ("candidate", 600, 2400)
    assert r.clicks == int(il["click"].sum())
    assert r.verdict == "candidate preferred" and r.preference["p_value"] < 1e-6
    # the A/B numbers are those of the A/B traffic alone
    alone = analyze(join_events(ab.drop(columns="click"), _events_of(ab)), stage="ranker")
    assert rep.variants == alone.variants
    assert rep.metric("ctr", "control").value == alone.metric("ctr", "control").value
    assert any("interleaved requests" in n for n in rep.notes)
    assert rep.to_dict()["interleaving"][0]["preference"]["wins"] == r.preference["wins"]


# ---- the CLI ------------------------------------------------------------------------------
@pytest.fixture
def log(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    f = _frame(rng, 150, {"control": 0.0, "candidate": 0.5})
    f["position"] = 0
    f["ts"] = pd.Timestamp("2026-12-01T10:00:00Z") + pd.to_timedelta(
        rng.uniform(0, 3600, len(f)), unit="s")
    ev = _events_of(f)
    ev["user_id"] = f.loc[f["click"], "user_id"].to_numpy()
    ev["value"] = None
    ev["ts"] = pd.Timestamp("2026-12-01T10:30:00Z")
    ev["received_ts"] = ev["ts"]
    ev["replica"] = "a"
    ev = pd.concat([ev, ev.iloc[:5].assign(replica="b"),
                    ev.iloc[:3].assign(event_id=["x1", "x2", "x3"], request_id="gone")])
    root = tmp_path / "log"
    il = _interleaved(rng, 200, 0.5)
    il["ts"] = pd.Timestamp("2026-12-01T10:10:00Z")
    iev = _events_of(il).assign(user_id=il.loc[il["click"], "user_id"].to_numpy(),
                                value=None, ts=pd.Timestamp("2026-12-01T10:30:00Z"),
                                replica="a")
    iev["event_id"] = "i" + iev["event_id"]
    iev["received_ts"] = iev["ts"]
    f = pd.concat([f.assign(team=np.nan, interleaved_variant=None), il], ignore_index=True)
    ev = pd.concat([ev, iev], ignore_index=True)
    for kind, frame in (("feed", f.drop(columns="click")), ("events", ev)):
        d = root / kind / "date=2026-12-01" / "hour=10"
        d.mkdir(parents=True)
        frame.to_parquet(d / "r0-1.parquet", index=False)
    return root


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(experiment_app, list(args), env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_cli_report_table_and_json(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, text = _cli("report", "ranker", "--start", "2026-12-01T10:00:00Z", "--end",
                      "2026-12-01T11:00:00Z", "--log", str(log), "--out", str(out))
    assert code == 0, text
    assert "ctr" in text and "candidate" in text and "better" in text and "caveat" in text
    rep = json.loads(out.read_text())
    assert rep["control"] == "control"
    assert rep["events"]["duplicates"] == 5 and rep["events"]["unmatched"] == 3
    ctr = next(m for m in rep["metrics"] if m["metric"] == "ctr" and m["variant"] ==
               "candidate")
    assert ctr["verdict"] == "better" and ctr["vs_control"]["p_value"] < 0.05
    assert "interleaving (team-draft" in text and "candidate preferred" in text
    assert rep["interleaving"][0]["requests"] == 200
    code, text = _cli("report", "ranker", "--window", "1h", "--end", "2026-11-01T00:00:00Z",
                      "--log", str(log))
    assert code == 0 and "no feed impressions" in text


def test_cli_plan() -> None:
    code, text = _cli("plan", "--mde", "0.02", "--baseline-rate", "0.05")
    assert code == 0, text
    assert "2,213" in text and "absolute" in text
    code, text = _cli("plan", "--mde", "0.1", "--baseline-rate", "0.05", "--relative",
                      "--design-effect", "1.5", "--impressions-per-user", "20")
    assert code == 0 and "relative" in text and "users per variant" in text


@pytest.mark.parametrize(("args", "flag"), [
    (["report", "feed"], "STAGE"),
    (["report", "ranker", "--window", "1h", "--start", "2026-12-01T10:00:00Z"], "--window"),
    (["report", "ranker", "--window", "1h", "--since", "1h"], "--since"),
    (["report", "ranker", "--end", "noon"], "--end"),
    (["report", "ranker", "--window", "a day"], "--window"),
    (["report", "ranker", "--min-users", "-1"], "--min-users"),
    (["report", "ranker", "--rollout-config", "/no/such/rollout.yaml"], "--rollout-config"),
    (["report", "ranker", "--log", "/no/such/log"], "--log"),
    (["report", "ranker", "--start", "2026-12-01T10:00:00Z", "--end", "2026-12-01T11:00:00Z",
      "--control", "nope"], "--control"),
    (["report", "ranker", "--alpha", "2"], "--alpha"),
    (["plan", "--mde", "0.02", "--baseline-rate", "1.5"], "--baseline-rate"),
    (["plan", "--mde", "0.9", "--baseline-rate", "0.5"], "--mde"),
    (["plan", "--mde", "0.02", "--baseline-rate", "0.05", "--power", "1.2"], "--power"),
])
def test_cli_bad_input_exits_2_naming_the_flag(args: list[str], flag: str, log: Path) -> None:
    if args[0] == "report" and "--log" not in args:
        args = [*args, "--log", str(log)]
    code, text = _cli(*args)
    assert code == 2, text
    assert flag in text and "Traceback" not in text


def test_a_window_of_interleaved_requests_only_still_reports_the_preference() -> None:
    il = _interleaved(np.random.default_rng(8), 300, 0.35)
    rep = analyze(join_events(il.drop(columns="click"), _events_of(il)), stage="ranker")
    assert rep.variants == () and rep.metrics == () and rep.control == "control"
    assert rep.interleaving[0].verdict == "candidate preferred"
    assert "every impression in the window was interleaved" in rep.notes[0]


# ---- choosing the control -----------------------------------------------------------------
def _with(f: pd.DataFrame, variant: str, users: int, impressions: int, clicks: int
          ) -> pd.DataFrame:
    """`f` plus a small variant: `impressions` spread over `users`, the first `clicks`
    clicked (e.g. residual 'primary' traffic from before a rollout config was applied)."""
    uid = 10**6 + len(f) + np.arange(impressions) % users
    extra = pd.DataFrame({"request_id": [f"{variant}{i}" for i in range(impressions)],
                          "item_id": 10**7 + len(f) + np.arange(impressions), "user_id": uid,
                          "ranker_variant": variant, "click": np.arange(impressions) < clicks})
    return pd.concat([f, extra], ignore_index=True)


def _report(f: pd.DataFrame, **kwargs: Any) -> ExperimentReport:
    return analyze(join_events(f.drop(columns="click"), _events_of(f)), stage="ranker",
                   **kwargs)


def test_residual_primary_traffic_is_not_the_control() -> None:
    """The trial's case: 'primary' had 2 users and 1 click in 43 impressions (served before the
    rollout config was applied) and was taken as the control over 'control'."""
    f = _with(_frame(np.random.default_rng(10), 150, {"control": 0.0, "candidate": 0.0}),
              "primary", 2, 43, 1)
    rep = analyze(join_events(f.drop(columns="click"), _events_of(f)), stage="ranker")
    assert rep.control == "control"
    assert rep.control_rule == "the variant named 'control'"
    assert rep.metric("ctr", "primary").verdict == INSUFFICIENT


def test_the_rollout_configs_primary_is_the_control_and_control_wins_over_it() -> None:
    f = _with(_frame(np.random.default_rng(11), 150, {"base": 0.0, "control": 0.0}),
              "primary", 2, 43, 1)
    joined = join_events(f.drop(columns="click"), _events_of(f))
    rep = analyze(joined, stage="ranker", rollout_variants=("base", "control"))
    assert rep.control == "base" and rep.variants[0].name == "base"
    assert rep.control_rule == "the rollout config's primary (stages.ranker.variants[0])"
    assert any(n.startswith("primary: not in the rollout config") for n in rep.notes)
    explicit = analyze(joined, stage="ranker", control="control",
                       rollout_variants=("base", "control"))
    assert (explicit.control, explicit.control_rule) == ("control", "given (--control)")
    with pytest.raises(ExperimentInputError, match="primary 'gone'") as e:
        analyze(joined, stage="ranker", rollout_variants=("gone", "base"))
    assert e.value.field == "rollout_config"


def test_choose_control_order_of_rules() -> None:
    sizes = {"primary": 2, "x": 50, "control": 40, "y": 60}
    assert choose_control(["primary", "x", "control"], sizes)[0] == "control"
    assert choose_control(["primary", "x"], sizes)[0] == "primary"
    assert choose_control(["x", "y"], sizes) == (
        "y", "the variant with most users (no rollout config, no 'control' or 'primary')")
    assert choose_control(["x", "y"], sizes, primary="x")[0] == "x"


# ---- small samples: intervals and minimums --------------------------------------------------
def test_wilson_by_hand() -> None:
    z = 1.959963984540054
    assert wilson(0.0, 10, z) == pytest.approx((0.0, z * z / (10 + z * z)))
    assert wilson(0.5, 100, z) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # 50 of 100
    lo, hi = wilson(1.0, 4, z)
    assert hi == 1.0 and lo == pytest.approx(4 / (4 + z * z))
    assert all(math.isnan(x) for x in wilson(0.0, 0, z))


def test_rate_intervals_are_never_a_point_when_there_are_impressions() -> None:
    z = 1.959963984540054
    zero = ratio_estimate(np.zeros(3), np.array([10, 10, 10]))
    assert zero.value == 0 and zero.se == 0  # the delta method has no variance here
    # Kish's worst case: 3 users of 10 impressions each count as 3 trials
    assert rate_interval(zero, z) == pytest.approx((0.0, z * z / (3 + z * z)))
    lone = ratio_estimate(np.array([1.0]), np.array([43]))  # one user: no variance estimate
    lo, hi = rate_interval(lone, z)
    assert 0 < lo < 1 / 43 < hi < 1
    # with counts, Wilson on the clustered effective sample size ~ the delta method's Wald
    rng = np.random.default_rng(0)
    y, n = _arm(rng, 2000)
    e = ratio_estimate(y, n)
    lo, hi = rate_interval(e, z)
    assert lo == pytest.approx(e.value - z * e.se, rel=0.02)
    assert hi == pytest.approx(e.value + z * e.se, rel=0.02)
    dwell = ratio_estimate(np.zeros(3), np.array([1, 2, 3]), np.zeros(3))
    assert all(math.isnan(x) for x in rate_interval(dwell, z, binary=False))


def test_a_zero_click_arm_is_tested_with_the_pooled_variance() -> None:
    t = ratio_estimate(np.zeros(200), np.full(200, 10))
    yc = np.zeros(200)
    yc[:8] = 1
    c = ratio_estimate(yc, np.full(200, 10))
    pooled = 8 / 4000
    se = math.hypot(math.sqrt(pooled * (1 - pooled) / 200), c.se)
    got = compare(t, c)
    assert got.diff == pytest.approx(-0.004)
    assert got.p_value == pytest.approx(2 * stats.norm.sf(0.004 / se))
    assert got.p_value > 2 * stats.norm.sf(0.004 / c.se)  # what ignoring the zero arm gave


def test_variants_below_the_minimums_get_insufficient_data_not_a_p_value() -> None:
    """The trial's case: variants with no clicks from a handful of users were called worse
    (p = 1.7e-05) with an interval of [0, 0]."""
    f = _with(_frame(np.random.default_rng(12), 150, {"control": 0.0}), "tiny", 3, 40, 0)
    rep = _report(f)
    m = rep.metric("ctr", "tiny")
    assert m.verdict == INSUFFICIENT and m.vs_control is None
    assert m.ci[0] == 0 and m.ci[1] > 0.3  # 3 users: wide, not [0, 0]
    tiny = next(v for v in rep.variants if v.name == "tiny")
    assert not tiny.sufficient
    d = rep.to_dict()
    assert d["minimums"] == {"users": MIN_USERS, "impressions": MIN_IMPRESSIONS}
    ctr = next(x for x in d["metrics"] if x["metric"] == "ctr" and x["variant"] == "tiny")
    assert ctr["verdict"] == "insufficient data" and ctr["vs_control"] is None
    assert any("tiny (3 users, 40 impressions): below the minimum" in n
               for n in d["notes"])
    # the minimums are options: at 0 the comparison is made, with a defensible p-value
    loose = _report(f, min_users=0, min_impressions=0)
    cmp = loose.metric("ctr", "tiny").vs_control
    assert cmp is not None and cmp.p_value > 0.01
    with pytest.raises(ExperimentInputError) as e:
        _report(f, min_users=-1)
    assert e.value.field == "min_users"


def test_cli_minimum_defaults_are_the_documented_ones() -> None:
    params = inspect.signature(report_cmd).parameters
    assert params["min_users"].default == MIN_USERS == 100
    assert params["min_impressions"].default == MIN_IMPRESSIONS == 1000


def test_cli_report_says_insufficient_data_and_which_rule_chose_the_control(
        log: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, text = _cli("report", "ranker", "--start", "2026-12-01T10:00:00Z", "--end",
                      "2026-12-01T11:00:00Z", "--log", str(log), "--out", str(out),
                      "--min-users", "1000")
    assert code == 0, text
    assert "control: control, chosen as the variant named 'control'" in text
    assert "insufficient data" in text and "better" not in text
    rep = json.loads(out.read_text())
    assert rep["minimums"]["users"] == 1000 and rep["control_rule"]
    assert {m["verdict"] for m in rep["metrics"]} == {"control", "insufficient data"}


def test_cli_rollout_config_names_the_control(log: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "rollout.yaml"
    cfg.write_text("stages:\n  ranker:\n    variants:\n"
                   "      - {name: candidate, bundle_version: v2, weight: 90}\n"
                   "      - {name: control, bundle_version: v1, weight: 10}\n")
    window = ["--start", "2026-12-01T10:00:00Z", "--end", "2026-12-01T11:00:00Z"]
    code, text = _cli("report", "ranker", *window, "--log", str(log), "--rollout-config",
                      str(cfg))
    assert code == 0, text
    assert ("control: candidate, chosen as the rollout config's primary "
            "(stages.ranker.variants[0])") in text
    cfg.write_text("stages:\n  retrieval:\n    variants:\n"
                   "      - {name: a, bundle_version: v2, weight: 100}\n")
    code, text = _cli("report", "ranker", *window, "--log", str(log), "--rollout-config",
                      str(cfg))
    assert code == 2 and "--rollout-config" in text and "no variants for stage" in text


# ---- moderation ---------------------------------------------------------------------------
def _calls(rng: np.random.Generator, contents: int, block: dict[str, float]) -> pd.DataFrame:
    """Two calls per content id (assignment hashes the content id, so both in one variant);
    per variant, blocked with the given probability; one image-only call per variant."""
    rows = []
    for k, (name, p) in enumerate(block.items()):
        cid = np.repeat([f"{name}-c{i}" for i in range(contents)], 2)
        blocked = rng.random(len(cid)) < p
        rows.append(pd.DataFrame({
            "request_id": [f"{name}-r{i}" for i in range(len(cid))], "content_id": cid,
            "content": "text", "decision": np.where(blocked, "block", "allow"),
            "outcome_spam": np.where(blocked, "block", "allow"),
            "outcome_abuse": "allow", "degraded": "", "variant": name}))
        rows.append(pd.DataFrame({"request_id": [f"{name}-img"], "content_id": [f"img{k}"],
                                  "content": "image", "decision": "block",
                                  "outcome_spam": "allow", "outcome_abuse": "block",
                                  "degraded": "", "variant": name}))
    f = pd.concat(rows, ignore_index=True)
    return pd.concat([f, f.iloc[:1]], ignore_index=True)  # one call logged twice


def test_moderation_rates_per_variant_clustered_by_content_id() -> None:
    calls = _calls(np.random.default_rng(20), 600, {"control": 0.05, "candidate": 0.12})
    mc = moderation_calls(calls)
    assert (mc.image_only, mc.duplicates) == (2, 1) and len(mc.frame) == 2400
    assert [m.name for m in mc.metrics] == ["block_rate", "review_rate", "abuse_flag_rate",
                                            "spam_flag_rate", "degraded_rate"]
    rep = analyze_moderation(calls)
    assert rep.stage == "moderation" and (rep.unit, rep.row) == ("content ids", "calls")
    assert rep.control == "control" and rep.variants[1].users == 600
    assert rep.variants[1].impressions == 1200
    block = rep.metric("block_rate", "candidate")
    assert block.verdict == "higher"  # not "better": that needs reviewers' decisions
    assert block.value == pytest.approx(
        (calls.iloc[:-1].query("variant == 'candidate' and content == 'text'")["decision"]
         == "block").mean())
    assert rep.metric("degraded_rate", "candidate").guardrail
    assert any("reviewers' decisions" in n for n in rep.notes)
    with pytest.raises(ExperimentInputError, match="no 'decision' column"):
        analyze_moderation(calls.drop(columns="decision"))


def test_cli_reports_the_moderation_stage(tmp_path: Path) -> None:
    calls = _calls(np.random.default_rng(21), 600, {"control": 0.05, "candidate": 0.12})
    calls["ts"] = pd.Timestamp("2026-12-01T10:20:00Z")
    d = tmp_path / "log" / "moderation" / "date=2026-12-01" / "hour=10"
    d.mkdir(parents=True)
    calls.to_parquet(d / "r0-1.parquet", index=False)
    out = tmp_path / "m.json"
    code, text = _cli("report", "moderation", "--start", "2026-12-01T10:00:00Z", "--end",
                      "2026-12-01T11:00:00Z", "--log", str(tmp_path / "log"), "--out",
                      str(out))
    assert code == 0, text
    assert "block_rate" in text and "content ids" in text and "higher" in text
    rep = json.loads(out.read_text())
    assert rep["stage"] == "moderation" and rep["events"]["image_only"] == 2


# ---- plan labels, option names ---------------------------------------------------------------
def test_cli_plan_labels_impressions_unless_it_can_compute_users() -> None:
    code, text = _cli("plan", "--mde", "0.02", "--baseline-rate", "0.05")
    assert code == 0, text
    assert "impressions needed per variant" in text and "users and impressions" not in text
    assert "not computed: needs --impressions-per-user" in text
    code, text = _cli("plan", "--mde", "0.02", "--baseline-rate", "0.05",
                      "--impressions-per-user", "20")
    assert code == 0, text
    assert "users and impressions needed per variant" in text and "111 (at 20" in text


def test_window_is_the_option_and_since_a_hidden_deprecated_alias(log: Path) -> None:
    args = ["report", "ranker", "--end", "2026-11-01T00:00:00Z", "--log", str(log)]
    r = CliRunner().invoke(experiment_app, [*args, "--since", "1h"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "--since is deprecated; use --window" in r.stderr
    assert "no feed impressions" in r.stdout
    r = CliRunner().invoke(experiment_app, [*args, "--window", "1h"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "deprecated" not in r.output
    _, text = _cli("report", "--help")
    assert "--window" in text and "--since" not in text
