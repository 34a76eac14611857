"""The metric declarations: one node's processes add up in multiprocess mode, the known
label values exist before the first event, and names follow Prometheus conventions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics

WORKER = """
from monitoring import metrics
metrics.observe_request("/v1/feed", 200, 0.042)
metrics.observe_feed(route="/v1/feed", timings_ms={"total": 30.0, "ranker_call": 3.0},
                     candidates={"ann": 200}, filtered={"seen": 4}, degraded=["ranker"],
                     items=20, cold_start=False, ranker_rows=180, ranker_variant="primary")
metrics.IMPRESSIONS_BUFFERED.labels("feed").set(5)
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_processes_of_a_node_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):  # two replicas
        subprocess.run([sys.executable, "-c", WORKER], env=env, check=True,
                       cwd=Path(__file__).parents[3])
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    got = samples(metrics.render([metrics.ReviewBacklog(3, 120.0)]).decode())
    assert got[("funnel_requests_total", (("code", "200"), ("route", "/v1/feed")))] == 2
    assert got[("funnel_request_duration_seconds_count", (("route", "/v1/feed"),))] == 2
    assert got[("funnel_degraded_total", (("route", "/v1/feed"), ("stage", "ranker")))] == 2
    assert got[("funnel_responses_degraded_total", (("route", "/v1/feed"),))] == 2
    assert got[("funnel_feed_filtered_total", (("reason", "seen"),))] == 8
    assert got[("funnel_ranker_batch_rows_sum", (("variant", "primary"),))] == 360
    # the review queue comes from its database, once per scrape
    assert got[("funnel_review_queue_depth", ())] == 3
    assert got[("funnel_review_queue_oldest_age_seconds", ())] == 120
    # initialised at import: a zero, not a missing series, before any event
    assert got[("funnel_impression_records_total",
                (("kind", "moderation"), ("outcome", "failed")))] == 0
    assert got[("funnel_degraded_total",
                (("route", "/v1/moderate"), ("stage", "moderation_image")))] == 0


def test_a_database_that_does_not_answer_shows_in_the_scrape() -> None:
    got = samples(metrics.render([metrics.ReviewBacklog(None, None)]).decode())
    assert got[("funnel_review_queue_up", ())] == 0
    assert not any(name == "funnel_review_queue_depth" for name, _ in got)


def test_names_follow_prometheus_conventions() -> None:
    from prometheus_client import REGISTRY

    names = {fam.name for fam in REGISTRY.collect() if fam.name.startswith("funnel_")}
    assert {"funnel_requests", "funnel_request_duration_seconds",
            "funnel_feed_stage_duration_seconds", "funnel_moderation_decisions",
            "funnel_impression_records"} <= names
    for fam in REGISTRY.collect():
        if not fam.name.startswith("funnel_"):
            continue
        if fam.type == "histogram" and "duration" in fam.name:
            assert fam.name.endswith("_seconds"), fam.name
        for s in fam.samples:  # bounded label sets: no ids, no free text
            assert not {"user_id", "item_id", "request_id"} & set(s.labels), s
