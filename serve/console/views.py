"""What the console's pages show, computed from plain data (framework-free, unit-tested):
the queue's filter from a query string, ages, each drift monitor's windows and alert state,
and each rollout stage's variants against their guardrails."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from serve.api import MAX_ID, parse_uint
from serve.review.base import ItemFilter

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_POLICY = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
STAMP = re.compile(r"^\d{8}T\d{6}Z$")


def parse_age(text: str) -> timedelta | None:
    """'30m', '2h', '1d', '1d12h' -> the duration; None when not one (or zero)."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mins = (int(g or 0) for g in m.groups())
    out = timedelta(days=d, hours=h, minutes=mins)
    return out if timedelta(0) < out <= timedelta(days=3650) else None


def age(delta: timedelta) -> str:
    """A short age: 45s, 12m, 3h 5m, 2d 4h."""
    s = max(int(delta.total_seconds()), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


@dataclass(frozen=True)
class QueueQuery:
    where: ItemFilter
    after_id: int
    values: dict[str, str]          # what the filter form shows back
    problems: list[dict[str, str]] = field(default_factory=list)

    def query_string(self) -> str:
        """The filter as a query string (for the next item and the next page)."""
        from urllib.parse import urlencode

        return urlencode({k: v for k, v in self.values.items() if v})


def parse_queue(params: Mapping[str, str], *, labels: Sequence[str], now: datetime
                ) -> QueueQuery:
    """`?label=&policy=&older_than=&after_id=`; a bad field is reported (and not applied)."""
    problems = []
    label = params.get("label", "").strip()
    if label and label not in labels:
        problems.append({"field": "label", "message": f"one of {', '.join(labels)}"})
        label = ""
    policy = params.get("policy", "").strip()
    if policy and not _POLICY.match(policy):
        problems.append({"field": "policy", "message": "a policy version (letters, digits, "
                         ". _ : -)"})
        policy = ""
    older = params.get("older_than", "").strip()
    older_td = parse_age(older) if older else None
    if older and older_td is None:
        problems.append({"field": "older_than", "message": "an age such as 30m, 2h or 1d"})
        older = ""
    after_text = params.get("after_id", "0") or "0"
    after = parse_uint(after_text)
    if after is None:
        problems.append({"field": "after_id", "message": f"an integer in 0..{MAX_ID}"})
        after = 0
    where = ItemFilter(label=label or None, policy_version=policy or None,
                       created_before=now - older_td if older_td else None)
    return QueueQuery(where, after, {"label": label, "policy": policy, "older_than": older},
                      problems)


def safe_next(path: str | None) -> str:
    """Where to go after sign-in: a console path only (never another site)."""
    if path and path.startswith("/console/") and not path.startswith("/console//") \
            and "\\" not in path and "://" not in path:
        return path
    return "/console/review"


# ---- drift -------------------------------------------------------------------------------
# the alert rules (monitoring/alerts) fire after their condition holds for 90 minutes
ALERT_FOR = timedelta(minutes=90)


@dataclass(frozen=True)
class MonitorWindow:
    stamp: str
    start: str
    end: str
    status: str                     # ok | insufficient data | empty
    breached: bool                  # the alert rule's condition held in this window
    drifted_share: float | None
    drifted_columns: int
    columns: int
    rows: int
    top: list[dict[str, Any]]       # the columns, most drifted first (score vs threshold)
    report: bool


@dataclass(frozen=True)
class Monitor:
    group: str
    alert: str                      # the alert rule this monitor feeds
    condition: str
    state: str                      # firing | pending | ok | no verdict
    windows: list[MonitorWindow]


_ALERTS = {
    "features": ("FunnelFeatureDrift", "the share of drifted feature columns reaches the "
                 "dataset-drift share"),
    "predictions": ("FunnelPredictionDrift", "a prediction column drifted"),
    "moderation": ("FunnelModerationDrift", "a moderation score column drifted"),
}


def drift_monitors(summaries: Sequence[Mapping[str, Any]], *, now: datetime
                   ) -> list[Monitor]:
    """Per monitor (feature, prediction, moderation), its latest windows (newest first) and
    the alert's state: firing (the condition has held in every window since one that ended
    at least the rule's 90 minutes ago: the monitor's gauges have said so that long),
    pending (it holds in the newest window), ok, or no verdict."""
    out = []
    for group, (alert, condition) in _ALERTS.items():
        windows = []
        for s in summaries:
            g = (s.get("groups") or {}).get(group)
            cols = [c for c in s.get("columns") or [] if c.get("group") == group]
            cols.sort(key=lambda c: (not c.get("drifted"), -(c.get("score") or 0) /
                                     max(c.get("threshold") or 1e-9, 1e-9)))
            if g is None:
                status = "empty" if s.get("status") == "empty" else "not compared"
                breached = False
            else:
                status = g.get("status", "ok")
                breached = status == "ok" and bool(
                    g.get("dataset_drifted") if group == "features" else g.get("any_drifted"))
            w = s.get("window") or {}
            windows.append(MonitorWindow(
                stamp=str(s.get("stamp", "")), start=str(w.get("start", "")),
                end=str(w.get("end", "")), status=status, breached=breached,
                drifted_share=(g or {}).get("drifted_share"),
                drifted_columns=int((g or {}).get("drifted_columns") or 0),
                columns=int((g or {}).get("columns") or 0), rows=int((g or {}).get("rows") or 0),
                top=cols[:5], report=bool(s.get("report"))))
        out.append(Monitor(group, alert, condition, _state(windows, now), windows))
    return out


def _state(windows: Sequence[MonitorWindow], now: datetime) -> str:
    judged = [w for w in windows if w.status == "ok"]
    if not judged:
        return "no verdict"
    if not judged[0].breached:
        return "ok"
    run = []
    for w in judged:
        if not w.breached:
            break
        run.append(w)
    try:
        held = now - datetime.fromisoformat(run[-1].end)  # since the first breach was written
    except (TypeError, ValueError):
        return "pending"
    return "firing" if held >= ALERT_FOR else "pending"


# ---- rollout -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantRow:
    name: str
    role: str                       # primary | canary | variant | shadow
    bundle_version: str
    weight: float | None
    requests: int
    errors: int
    p99_ms: float | None
    comparisons: int
    overlap: dict[str, float | None]
    rank_correlation: float | None
    usd_per_1k: float | None
    guardrails: list[dict[str, Any]]


@dataclass(frozen=True)
class StageView:
    name: str
    status: str
    step: int
    steps: list[float]
    step_age_s: float
    waiting_for: Any
    variants: list[VariantRow]
    can_promote: bool
    can_rollback: bool


def rollout_stages(status: Mapping[str, Any]) -> list[StageView]:
    out = []
    for name, st in (status.get("stages") or {}).items():
        weights = st.get("weights") or {}
        shadows = set(st.get("shadows") or [])
        names = list(weights) + [s for s in st.get("shadows") or [] if s not in weights]
        rows = []
        for i, n in enumerate(names):
            v = (st.get("variants") or {}).get(n, {})
            w = v.get("window") or {}
            role = ("shadow" if n in shadows else "primary" if i == 0
                    else "canary" if st.get("status") == "canary" else "variant")
            rows.append(VariantRow(
                name=n, role=role, bundle_version=str(v.get("bundle_version", "")),
                weight=weights.get(n), requests=int(w.get("requests") or 0),
                errors=int(w.get("errors") or 0), p99_ms=w.get("p99_ms"),
                comparisons=int(w.get("comparisons") or 0),
                overlap=dict(w.get("overlap_at_k") or {}),
                rank_correlation=w.get("rank_correlation"), usd_per_1k=v.get("usd_per_1k"),
                guardrails=[{**g, "kind": g["bound"][0], "limit": g["bound"][1]}
                            for g in v.get("guardrails") or []]))
        status_ = str(st.get("status", ""))
        out.append(StageView(
            name=name, status=status_, step=int(st.get("step") or 0),
            steps=list(st.get("steps") or []), step_age_s=float(st.get("step_age_s") or 0),
            waiting_for=st.get("waiting_for"), variants=rows,
            can_promote=bool(st.get("steps")) and status_ not in ("rolled_back", "complete"),
            can_rollback=status_ != "rolled_back"))
    return out


def age_seconds(seconds: float) -> str:
    return age(timedelta(seconds=max(seconds, 1)))
