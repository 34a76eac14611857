"""`funnel serve`'s Serve config: the deployments it names are the ones the app builds."""

from __future__ import annotations

from serve.config import parse_app_args
from serve.runner import absent_deployments


def test_deployments_the_app_leaves_out_are_named() -> None:
    base = {"bundle": "artifacts/latest"}
    assert absent_deployments(parse_app_args(base)) == set()
    assert absent_deployments(parse_app_args(
        {**base, "rollout": {"shadow_scorer": False}, "moderation": {"enabled": False}})) == {
        "ShadowScorer", "ModerationModels"}
