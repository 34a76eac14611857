"""The chart's `rollout` schema is generated from the pydantic rollout model
(serve/rollout/chart_schema.py): written once under `$defs`, and enforced by Helm."""

from __future__ import annotations

import json
from typing import get_args

import helm_python
import pytest

from funnel.contracts.rollout import GUARDRAIL_METRICS, STAGES, GuardrailMetric
from serve.rollout.chart_schema import CHART_SCHEMA, main, updated
from tests.unit.charts.test_chart import CANARY_OK, render_docs


def test_the_chart_schema_is_what_the_rollout_model_generates() -> None:
    chart = json.loads(CHART_SCHEMA.read_text())
    assert updated(chart) == chart, "run `python -m serve.rollout.chart_schema`"
    assert main(["--check"]) == 0


def test_every_stage_refers_to_the_one_stage_schema() -> None:
    chart = json.loads(CHART_SCHEMA.read_text())
    stages = chart["properties"]["rollout"]["properties"]["stages"]["properties"]
    assert set(stages) == set(STAGES)
    assert {json.dumps(s) for s in stages.values()} == {'{"$ref": "#/$defs/rolloutStage"}'}
    guardrail = chart["$defs"]["rolloutStage"]["properties"]["guardrails"]["items"]
    assert guardrail["properties"]["metric"]["enum"] == list(GUARDRAIL_METRICS)
    assert set(get_args(GuardrailMetric)) == set(GUARDRAIL_METRICS)


def test_check_fails_on_a_stale_schema(tmp_path: pytest.TempPathFactory) -> None:
    chart = json.loads(CHART_SCHEMA.read_text())
    chart["$defs"]["rolloutStage"]["properties"]["guardrails"]["items"]["properties"][
        "metric"]["enum"].pop()
    stale = tmp_path / "values.schema.json"  # type: ignore[operator]
    stale.write_text(json.dumps(chart, indent=2) + "\n")
    assert main(["--check", "--schema", str(stale)]) == 1
    assert main(["--schema", str(stale)]) == 0
    assert main(["--check", "--schema", str(stale)]) == 0


def test_helm_refuses_an_unknown_guardrail_through_the_shared_stage_schema() -> None:
    stage = {**CANARY_OK, "guardrails": [{"metric": "latency_p42", "max": 1.0}]}
    with pytest.raises(helm_python.HelmError) as e:
        render_docs({"rollout": {"stages": {"retrieval": stage}}})
    assert "guardrails" in str(e.value) and "metric" in str(e.value), str(e.value)
    ok = {**CANARY_OK, "guardrails": [{"metric": "error_rate", "max": 0.05}]}
    assert render_docs({"rollout": {"stages": {"retrieval": ok}}})
