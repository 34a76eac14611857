"""ModerateService without Ray: decide, record, observe; a non-allow decision reaches this
replica's feed at once; a rollout variant scores with its own text model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve.api import ModerateRequest
from serve.moderation.service import ModerationService
from serve.services.moderation import ModerateService
from tests.fakes import FakeContentScorer, MemoryReviewStore
from tests.unit.serve.services.conftest import LABELS, POLICY, RecordingLog


def _req(**kw: Any) -> ModerateRequest:
    return ModerateRequest.model_validate({"content_id": "c1", "text": "hello there", **kw})


def _service(scores: dict[str, float], *, rollout: Any = None,
             scorer_for: Any = None) -> tuple[ModerateService, list[str], RecordingLog]:
    store = MemoryReviewStore()
    core = ModerationService(scorer=FakeContentScorer(text=scores), policy=POLICY, store=store,
                             model_versions={"moderation_text": "b1"}, timeout_s=1.0)
    refreshed: list[str] = []

    async def refresh() -> None:
        refreshed.append("yes")

    async def score_text(text: str, version: str) -> dict[str, float]:
        return {k: scores.get(k, 0.0) for k in LABELS}

    log = RecordingLog()
    svc = ModerateService(core=core, text_labels=LABELS,
                          scorer_for=scorer_for or (lambda v: FakeContentScorer(text=scores)),
                          score_text=score_text, refresh_verdicts=refresh, rollout=rollout,
                          impressions=log, replica="r0")
    return svc, refreshed, log


@pytest.mark.parametrize(("abuse", "decision", "refreshes"), [
    (0.1, "allow", 0), (0.6, "review", 1), (0.95, "block", 1)])
def test_the_decision_is_recorded_logged_and_a_non_allow_reaches_the_feed(
        abuse: float, decision: str, refreshes: int) -> None:
    svc, refreshed, log = _service({"abuse": abuse})
    out = asyncio.run(svc.moderate(_req(), None, "rid"))
    assert out.decision == decision
    assert (out.review_id is not None) == (decision == "review")
    assert len(refreshed) == refreshes
    cols, n = log.rows[0]
    assert n == 1 and cols["decision"] == decision and cols["variant"] == "primary"


def test_a_report_holds_harmless_content_for_review() -> None:
    svc, refreshed, _ = _service({"abuse": 0.0})
    out = asyncio.run(svc.moderate(_req(reported=True), None, "rid"))
    assert out.decision == "review" and out.review_id is not None and refreshed


@dataclass
class Assigned:
    stage: str = "moderation"
    variant: str = "candidate"
    bundle_version: str = "v2"


@dataclass
class FakeRouter:
    begun: list[Any] = field(default_factory=list)
    ended: list[tuple[Any, bool]] = field(default_factory=list)

    def assign(self, stage: str, key: str) -> Assigned:
        return Assigned()

    def begin(self, a: Any) -> None:
        self.begun.append(a)

    def end(self, a: Any, *, failed: bool) -> None:
        self.ended.append((a, failed))


class FakeRollout:
    """The three calls ModerateService makes of a RolloutRuntime."""

    def __init__(self) -> None:
        self.router = FakeRouter()
        self.after: list[dict[str, Any]] = []

    def serving(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def after_moderation(self, a: Any, **kw: Any) -> None:
        self.after.append({"a": a, **kw})


def test_a_rollout_variant_scores_with_its_own_text_model_and_is_reported() -> None:
    rollout, versions = FakeRollout(), []

    def scorer_for(version: str) -> FakeContentScorer:
        versions.append(version)
        return FakeContentScorer(text={"abuse": 0.95})

    svc, _, log = _service({"abuse": 0.0}, rollout=rollout, scorer_for=scorer_for)
    out = asyncio.run(svc.moderate(_req(), None, "rid"))
    assert versions == ["v2"] and out.decision == "block"  # the variant's model decided
    assert out.model_versions["moderation_text"] == "v2"
    assert rollout.router.begun and rollout.after[0]["scores"] == out.labels
    assert log.rows[0][0]["variant"] == "candidate"


def test_a_failing_variant_frees_its_slot_and_raises() -> None:
    rollout = FakeRollout()

    class Broken:
        async def score_text(self, text: str) -> dict[str, float]:
            raise asyncio.CancelledError

        async def score_image(self, image: bytes) -> dict[str, float]:
            return {}

    svc, _, _ = _service({}, rollout=rollout, scorer_for=lambda v: Broken())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(svc.moderate(_req(), None, "rid"))
    assert rollout.router.ended and rollout.router.ended[0][1] is False
