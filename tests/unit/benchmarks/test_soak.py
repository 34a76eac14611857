"""The soak bench's pure parts: durations, answers in full, the rollout it applies."""

from __future__ import annotations

import pytest

from benchmarks.soak import parse_duration, rollout_config
from serve.rollout.config import RolloutConfig


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400),
                                               ("600", 600), ("2.5m", 150)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "10m5", "-1m", "ten minutes"])
def test_a_bad_duration_names_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="use e.g. 10m, 90s"):
        parse_duration(text)


def test_the_soak_rollout_is_a_valid_config_with_a_canary_and_a_shadow() -> None:
    cfg = RolloutConfig.model_validate(rollout_config("v1", "v2"))
    ranker = cfg.stages["ranker"]
    assert [(v.name, v.weight) for v in ranker.variants] == [("control", 90), ("canary", 10)]
    assert [s.sample_rate for s in ranker.shadows] == [0.2]
    assert ranker.promotion is not None and ranker.promotion.auto_rollback
