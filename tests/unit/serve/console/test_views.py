"""The console's view logic: filters, ages, drift alert states, rollout rows, sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from serve.console import views
from serve.console.sessions import Sessions, same_token

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_the_queue_filter_parses_and_reports_bad_fields() -> None:
    q = views.parse_queue({"label": "abuse", "policy": "p-1", "older_than": "2h",
                           "after_id": "7"}, labels=("abuse", "spam"), now=NOW)
    assert (q.where.label, q.where.policy_version, q.where.created_before, q.after_id) == (
        "abuse", "p-1", NOW - timedelta(hours=2), 7)
    assert q.query_string() == "label=abuse&policy=p-1&older_than=2h"
    bad = views.parse_queue({"label": "<x>", "policy": "a b", "older_than": "soon",
                             "after_id": "-1"}, labels=("abuse",), now=NOW)
    assert [p["field"] for p in bad.problems] == ["label", "policy", "older_than", "after_id"]
    assert bad.where == views.ItemFilter() and bad.after_id == 0


@pytest.mark.parametrize(("text", "want"), [("30m", timedelta(minutes=30)),
                                            ("1d12h", timedelta(days=1, hours=12)),
                                            ("0m", None), ("", None), ("2x", None)])
def test_ages(text: str, want: timedelta | None) -> None:
    assert views.parse_age(text) == want


def test_short_ages() -> None:
    assert [views.age(timedelta(seconds=s)) for s in (5, 125, 3 * 3600 + 300, 2 * 86400 + 7200)
            ] == ["5s", "2m", "3h 5m", "2d 2h"]


@pytest.mark.parametrize(("path", "want"), [
    ("/console/review/3?label=x", "/console/review/3?label=x"),
    ("https://evil.example/console/", "/console/review"), ("//evil", "/console/review"),
    ("/console//evil.example", "/console/review"), (None, "/console/review")])
def test_after_sign_in_only_console_paths(path: str | None, want: str) -> None:
    assert views.safe_next(path) == want


def _summary(stamp: str, end: datetime, *, features: bool, predictions: bool,
             status: str = "ok") -> dict[str, Any]:
    return {"stamp": stamp, "status": "ok", "report": "report.html",
            "window": {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()},
            "groups": {"features": {"status": status, "dataset_drifted": features,
                                    "any_drifted": features, "drifted_share": 0.6 if features
                                    else 0.1, "drifted_columns": 6, "columns": 10,
                                    "rows": 5000},
                       "predictions": {"status": "ok", "dataset_drifted": False,
                                       "any_drifted": predictions, "drifted_share": 0.2,
                                       "drifted_columns": 1, "columns": 5, "rows": 5000}},
            "columns": [{"column": "age", "group": "features", "score": 0.3, "threshold": 0.1,
                         "drifted": True},
                        {"column": "hour", "group": "features", "score": 0.01,
                         "threshold": 0.1, "drifted": False}]}


def test_drift_alert_states_follow_the_rules_90_minutes() -> None:
    s = [_summary("t3", NOW, features=True, predictions=True),
         _summary("t2", NOW - timedelta(hours=1), features=True, predictions=True),
         _summary("t1", NOW - timedelta(hours=2), features=True, predictions=False),
         _summary("t0", NOW - timedelta(hours=3), features=False, predictions=False)]
    m = {x.group: x for x in views.drift_monitors(s, now=NOW)}
    assert m["features"].state == "firing"      # breached since the window ending 2 h ago
    assert m["predictions"].state == "pending"  # since 1 h ago: not yet the rule's 90 min
    assert m["moderation"].state == "no verdict"
    assert m["features"].windows[0].top[0]["column"] == "age"
    later = {x.group: x for x in views.drift_monitors(s, now=NOW + timedelta(minutes=31))}
    assert later["predictions"].state == "firing"
    one_long = [_summary("t3", NOW, features=True, predictions=False)]  # one 1 h window
    assert views.drift_monitors(one_long, now=NOW)[0].state == "pending"
    thin = [_summary("t3", NOW, features=False, predictions=False, status="insufficient data")]
    assert views.drift_monitors(thin, now=NOW)[0].state == "no verdict"
    ok = [_summary("t4", NOW, features=False, predictions=False), *s]
    assert views.drift_monitors(ok, now=NOW)[0].state == "ok"


def test_rollout_rows_name_roles_and_guardrails() -> None:
    status = {"stages": {"ranker": {
        "status": "canary", "step": 0, "steps": [10, 100], "step_age_s": 12.0,
        "waiting_for": "20 requests", "weights": {"control": 90.0, "cand": 10.0},
        "shadows": ["shadowy"],
        "variants": {"control": {"bundle_version": "v1", "window": {"requests": 90}},
                     "cand": {"bundle_version": "v2", "window": {"requests": 10, "errors": 1},
                              "guardrails": [{"metric": "error_rate", "k": None,
                                              "bound": ["max", 0.02], "value": 0.1,
                                              "holds": False, "waiting_for": ""}]},
                     "shadowy": {"bundle_version": "v3", "window": {"comparisons": 4}}}}}}
    [st] = views.rollout_stages(status)
    assert [(v.name, v.role) for v in st.variants] == [
        ("control", "primary"), ("cand", "canary"), ("shadowy", "shadow")]
    assert st.variants[1].guardrails[0]["kind"] == "max" and st.can_promote and st.can_rollback
    done = views.rollout_stages({"stages": {"ranker": {**status["stages"]["ranker"],
                                                       "status": "rolled_back"}}})[0]
    assert not done.can_promote and not done.can_rollback


def test_sessions_are_signed_with_the_shared_secret() -> None:
    s = Sessions("a-secret-of-enough-length", max_age_s=60)
    cookie, session = s.issue("rita", 3)
    assert s.read(cookie) == session
    assert s.read(cookie[:-2] + "xx") is None
    assert Sessions("another-secret-of-length", max_age_s=60).read(cookie) is None
    assert Sessions("a-secret-of-enough-length", max_age_s=60).read("garbage") is None
    login_cookie, token = s.login_token()
    assert s.read_login(login_cookie) == token and s.read(login_cookie) is None
    assert same_token(token, token) and not same_token(token, "x") and not same_token(None, "")
    with pytest.raises(ValueError):
        Sessions("short", max_age_s=60)
