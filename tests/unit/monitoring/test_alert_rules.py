"""Static checks of the alert rules and the Grafana dashboard.

Every expression must parse as PromQL and name only series Funnel exports, with labels
those series have; every alert needs a severity, a summary, a description and a runbook
link to a heading that exists. The series Funnel exports come from the declarations
themselves: the serving registry and the review-queue collector (monitoring.metrics), the
rollout collector, the drift monitor's registry. An integration test checks the same names
against a live stack's `/metrics`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics, rollout_metrics
from monitoring.drift_watch import DriftMetrics

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "monitoring" / "alerts" / "funnel-rules.yaml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "funnel-dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"

ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")
SEVERITIES = {"page", "ticket"}
RUNBOOK_URL = re.compile(r"^docs/runbooks/(?P<file>[a-z0-9-]+\.md)#(?P<anchor>[a-z0-9_-]+)$")
# functions whose range argument must be a counter (or a histogram's counters)
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
# Grafana's built-in interval variables, replaced by a duration before parsing
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|"
                               r"interval|range)\}")


@dataclass(frozen=True)
class Series:
    name: str
    counter: bool  # a counter's _total or a histogram's _bucket/_sum/_count
    labels: frozenset[str] | None  # None: not known (the family has no samples to show them)
    le: frozenset[str] = field(default_factory=frozenset)  # bucket bounds, as exported


def _series_of(exposition: bytes) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for fam in text_string_to_metric_families(exposition.decode()):
        if not fam.name.startswith("funnel_"):
            continue
        names = {"counter": [f"{fam.name}_total"],
                 "histogram": [f"{fam.name}_bucket", f"{fam.name}_sum", f"{fam.name}_count"]
                 }.get(fam.type, [fam.name])
        for name in names:
            samples = [s for s in fam.samples if s.name == name]
            labels = (frozenset(k for s in samples for k in s.labels) if samples else None)
            out[name] = Series(name, counter=fam.type in ("counter", "histogram"),
                               labels=labels,
                               le=frozenset(s.labels["le"] for s in samples if "le" in s.labels))
    return out


@pytest.fixture(scope="module")
def known() -> dict[str, Series]:
    drift = DriftMetrics(CollectorRegistry())
    review = CollectorRegistry(auto_describe=False)
    review.register(metrics.ReviewBacklog(0, 0.0, spool=(0, 0.0)))
    # monitoring.metrics declares into prometheus_client's default registry
    return {**_series_of(generate_latest(metrics.REGISTRY)),
            **_series_of(rollout_metrics.render({})), **_series_of(generate_latest(review)),
            **_series_of(drift.render())}


def _load_rules() -> dict[str, Any]:
    with RULES.open() as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{RULES.name}: a mapping with `groups`, got {type(doc)}"
    return doc


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _load_rules().get("groups", []) for r in g.get("rules", [])]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page (headings inside code blocks left out)."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            text = m.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def _problems(expr: str, known: dict[str, Series]) -> list[str]:
    """What is wrong with `expr`: unknown series or labels, rate() of a gauge, a bucket
    bound the histogram does not have. Raises ValueError when it does not parse."""
    problems: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                problems.append(f"selector without a metric name: {node}")
                return
            s = known.get(node.name)
            if s is None:
                problems.append(f"{node.name} is not a metric Funnel exports")
                return
            for m in node.matchers.matchers:
                if s.labels is not None and m.name not in s.labels:
                    problems.append(f"{node.name} has no label {m.name!r} "
                                    f"(it has {sorted(s.labels)})")
                if (m.name == "le" and m.op == promql_parser.MatchOp.Equal and s.le
                        and m.value not in s.le):
                    problems.append(f"{node.name} has no bucket le={m.value!r} "
                                    f"(it has {sorted(s.le, key=float)})")
        elif isinstance(node, promql_parser.Call) and node.func.name in COUNTER_FUNCTIONS:
            arg = node.args[0]
            if isinstance(arg, promql_parser.MatrixSelector):
                s = known.get(arg.vector_selector.name or "")
                if s is not None and not s.counter:
                    problems.append(f"{node.func.name}() of the gauge {s.name}")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return problems


# ---- the rules file --------------------------------------------------------------------
def test_rules_file_is_a_prometheus_rule_file_of_alerts() -> None:
    doc = _load_rules()
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names)), f"group names repeat: {names}"
    alerts = [r["alert"] for r in _alerts()]
    assert len(alerts) == len(set(alerts)), f"alert names repeat: {alerts}"
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules"} and g["rules"], g["name"]
        for r in g["rules"]:
            assert "alert" in r and set(r) <= ALERT_KEYS, f"{g['name']}: {sorted(r)}"


def test_rules_cover_the_alerts_the_runbooks_promise() -> None:
    """The issue's alert families, each with at least one rule."""
    exprs = {r["alert"]: r["expr"] for r in _alerts()}
    wanted = {
        "feature drift": 'funnel_drift_dataset_drifted{group="features"}',
        "prediction drift": 'funnel_drift_column_drifted{group="predictions"}',
        "moderation drift": 'funnel_drift_column_drifted{group="moderation"}',
        "moderation rate shift": "funnel_moderation_decisions_total",
        "moderation label shift": "funnel_moderation_label_outcomes_total",
        "latency SLO burn": 'funnel_request_duration_seconds_bucket{route="/v1/feed",le="0.15"}',
        "error budget": 'code=~"5..',
        "degraded responses": "funnel_responses_degraded_total",
        "guardrail breach": "funnel_rollout_guardrail_breached",
        "rollback": 'funnel_rollout_decisions_total{action="rollback"}',
        "review depth": "funnel_review_queue_depth",
        "review age": "funnel_review_queue_oldest_age_seconds",
        "impression loss": 'outcome=~"dropped|failed"',
        "drift monitor": "funnel_drift_last_success_timestamp_seconds",
        "drift runs": 'funnel_drift_runs_total{outcome="failed"}',
    }
    missing = [k for k, needle in wanted.items()
               if not any(needle in e for e in exprs.values())]
    assert not missing


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Funnel[A-Z][A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    ann = rule["annotations"]
    for key in REQUIRED_ANNOTATIONS:
        assert isinstance(ann.get(key), str) and ann[key].strip(), f"no {key}"
    if "for" in rule:
        assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
    m = RUNBOOK_URL.match(ann["runbook_url"])
    assert m, f"runbook_url {ann['runbook_url']!r}: want docs/runbooks/<page>.md#<anchor>"
    page = RUNBOOKS / m["file"]
    assert page.is_file(), f"no runbook {page.relative_to(ROOT)}"
    assert m["anchor"] in _anchors(page), f"{m['file']} has no heading #{m['anchor']}"
    assert m["anchor"] == rule["alert"].lower(), "the heading is the alert's name"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_alert_expr_parses_and_uses_only_funnel_metrics(rule: dict[str, Any],
                                                        known: dict[str, Series]) -> None:
    assert _problems(rule["expr"], known) == []


def test_runbook_index_lists_every_alert() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    assert [r["alert"] for r in _alerts() if r["alert"] not in index] == []


# ---- the checks themselves -------------------------------------------------------------
def test_problems_catches_typos_gauge_rates_and_unknown_buckets(
        known: dict[str, Series]) -> None:
    assert _problems('sum(rate(funnel_requests_total{route="/v1/feed"}[5m]))', known) == []
    assert _problems("rate(funnel_request_total[5m])", known) == [
        "funnel_request_total is not a metric Funnel exports"]
    assert _problems('funnel_requests_total{routes="/v1/feed"}', known)[0].startswith(
        "funnel_requests_total has no label 'routes'")
    assert _problems("rate(funnel_impression_buffered_records[5m])", known) == [
        "rate() of the gauge funnel_impression_buffered_records"]
    assert _problems('funnel_request_duration_seconds_bucket{le="0.151"}', known)[0].startswith(
        "funnel_request_duration_seconds_bucket has no bucket le='0.151'")
    assert _problems("up", known) == ["up is not a metric Funnel exports"]
    with pytest.raises(ValueError):
        _problems("rate(funnel_requests_total[5m]", known)


def test_anchors_follow_github_and_skip_code_blocks(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Drift: features, predictions\n```bash\n# not a heading\n```\n"
                    "## FunnelFeatureDrift\n")
    assert _anchors(page) == {"drift-features-predictions", "funnelfeaturedrift"}


# ---- the dashboard ---------------------------------------------------------------------
def _dashboard_panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def test_dashboard_has_a_prometheus_datasource_variable_used_by_every_panel() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in _dashboard_panels() if p["type"] != "row"]
    ids = [p["id"] for p in _dashboard_panels()]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]


@pytest.mark.parametrize("panel", [p for p in _dashboard_panels() if p["type"] != "row"],
                         ids=lambda p: p["title"])
def test_dashboard_queries_parse_and_use_only_funnel_metrics(panel: dict[str, Any],
                                                             known: dict[str, Series]) -> None:
    for t in panel["targets"]:
        expr = GRAFANA_INTERVALS.sub("5m", t["expr"])
        assert "$" not in expr, f"unknown dashboard variable in {t['expr']!r}"
        assert _problems(expr, known) == []


@pytest.mark.parametrize("rule", [r for r in _alerts() if "console_url" in r["annotations"]],
                         ids=lambda r: r["alert"])
def test_a_console_link_is_a_page_the_console_serves(rule: dict[str, Any]) -> None:
    from serve.console.app import router

    pages = {getattr(r, "path", "") for r in router.routes
             if "GET" in getattr(r, "methods", set())}
    assert rule["annotations"]["console_url"] in pages


def test_drift_review_and_rollout_alerts_link_the_console() -> None:
    linked = {r["annotations"]["runbook_url"].split("#")[0].rsplit("/", 1)[-1]
              for r in _alerts() if "console_url" in r["annotations"]}
    assert linked == {"drift.md", "review-backlog.md", "rollout-guardrail.md"}
