"""`/v1/moderate` without the web framework: score, decide by policy, record, answer.

Text and image are scored concurrently by a `ContentScorer` (in the app: the moderation
deployment, which batches). Labels scored by both (nudity) take the higher score. The
policy turns the scores into allow | review | block. Every decision goes to the decision log,
and a `review` also creates a review-queue item, in one transaction
(`ReviewStore.record_model_decision`).

Degrading safely: if a model does not answer within `timeout_s` or fails, the response is
still 200 with `degraded` naming it, and the decision is at least `review` (never `allow` on
missing evidence), so the item lands in the human-review queue. Bad content (corrupt image)
is the caller's error (InvalidContent, 422), not a degradation. If the decision cannot be
recorded, the decision is parked in a local spool (`serve/review/spool.py`) and written
when the database answers again; the response says `degraded: ["review_queue"]` and has no
`review_id` yet. Only if the spool cannot be written either does the request fail with 503
(retry): a review item is never silently dropped.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from serve import cost
from serve.errors import InvalidContent, RequestTooLarge, ReviewStoreError
from serve.moderation.media import ImageInfo, thumbnail_webp
from serve.moderation.policy import Decision, ModerationPolicy, more_severe
from serve.review.base import ReviewStore
from serve.review.spool import ReviewSpool

log = logging.getLogger("funnel.moderation")
T = TypeVar("T")


class ContentScorer(Protocol):
    async def score_text(self, text: str) -> Mapping[str, float]:
        """Scores in [0, 1] per text label."""
        ...

    async def score_image(self, image: bytes) -> Mapping[str, float]:
        """Scores per image label; InvalidContent if the image cannot be decoded."""
        ...


@dataclass(frozen=True)
class ModerationInput:
    content_id: str
    request_id: str
    text: str | None = None
    image: ImageInfo | None = None
    author_id: int | None = None
    locale: str | None = None
    reported: bool = False  # a user reported it: a person looks at it, whatever the models say


@dataclass(frozen=True)
class ModerationOutcome:
    content_id: str
    labels: dict[str, float]
    decision: Decision
    reasons: tuple[str, ...]
    policy_version: str
    model_versions: dict[str, str]
    request_id: str
    review_id: int | None
    degraded: tuple[str, ...] = field(default=())
    timings_ms: dict[str, float] = field(default_factory=dict)


def write_record(store: ReviewStore, key: str, record: Mapping[str, Any]) -> int | None:
    """Write one decision record (as `ModerationService` builds it, or as the spool kept it:
    JSON, so the thumbnail is base64 there)."""
    thumb = record.get("thumbnail")
    return store.record_model_decision(
        **{**record, "at": datetime.fromisoformat(record["at"]),
           "thumbnail": base64.b64decode(thumb) if thumb else None},
        idempotency_key=key)


def _thumbnail_b64(data: bytes) -> str | None:
    with cost.section(cost.INGRESS):
        thumb = thumbnail_webp(data)
    return base64.b64encode(thumb).decode() if thumb is not None else None


class ModerationService:
    def __init__(self, *, scorer: ContentScorer, policy: ModerationPolicy,
                 store: ReviewStore | None, model_versions: Mapping[str, str],
                 timeout_s: float = 5.0,
                 spool: ReviewSpool | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 new_key: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.scorer = scorer
        self.spool = spool
        self._clock = clock
        self._new_key = new_key
        self.policy = policy
        self.store = store
        self.model_versions = dict(model_versions)
        self.timeout_s = timeout_s

    async def _bounded(self, name: str, call: Awaitable[T], degraded: list[str]) -> T | None:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except (InvalidContent, RequestTooLarge):
            raise
        except Exception as e:  # timeout, replica down, model error: degrade, do not fail
            log.warning("moderation model %s failed: %r", name, e)
            degraded.append(name)
            return None

    async def moderate(self, inp: ModerationInput, *, scorer: ContentScorer | None = None,
                       text_version: str | None = None) -> ModerationOutcome:
        """`scorer` / `text_version`: the rollout's variant of the text model for this item
        (default: the service's own)."""
        t0 = time.perf_counter()
        sc = scorer or self.scorer
        versions = dict(self.model_versions)
        if text_version:
            versions["moderation_text"] = text_version
        degraded: list[str] = []
        calls: list[tuple[str, Awaitable[Any]]] = []
        if inp.text is not None:
            calls.append(("moderation_text", sc.score_text(inp.text)))
        if inp.image is not None:
            calls.append(("moderation_image", sc.score_image(inp.image.data)))
        results = await asyncio.gather(*(self._bounded(n, c, degraded) for n, c in calls))
        cpu = cost.Lap()  # the request's CPU here (the models' is charged where they run)
        labels: dict[str, float] = {}
        used: dict[str, str] = {}
        for (name, _), scores in zip(calls, results, strict=True):
            if scores is None:
                continue
            used[name] = versions.get(name, "unknown")
            for label, s in scores.items():
                labels[label] = max(labels.get(label, 0.0), round(float(s), 6))
        t1 = time.perf_counter()
        verdict = self.policy.decide(labels)
        decision, reasons = verdict.decision, verdict.reasons
        if degraded:
            decision = more_severe(decision, "review")
            reasons = (*reasons, *(f"{n}: unavailable; held for human review" for n in degraded))
        if inp.reported:
            decision = more_severe(decision, "review")
            reasons = (*reasons, "reported by a user; held for human review")
        flagged = [lb for lb, s in labels.items()
                   if lb in self.policy.thresholds and s >= self.policy.thresholds[lb].review_at]
        review_id = None
        if self.store is not None:
            record = {"content_id": inp.content_id, "decision": decision,
                      "model": "+".join(sorted(used)) or "none",
                      "policy_version": self.policy.version, "request_id": inp.request_id,
                      "text": inp.text, "has_image": inp.image is not None,
                      "author_id": inp.author_id, "scores": labels, "flagged_labels": flagged,
                      "reasons": list(reasons), "model_versions": used,
                      "at": self._clock().isoformat()}
            if decision == "review" and inp.image is not None:
                record["thumbnail"] = await asyncio.to_thread(_thumbnail_b64, inp.image.data)
            cpu.charge(cost.INGRESS)
            review_id, parked = await asyncio.to_thread(self._record, record)
            cpu.mark()
            if parked:
                degraded.append("review_queue")
        cpu.charge(cost.INGRESS)
        t2 = time.perf_counter()
        return ModerationOutcome(
            content_id=inp.content_id, labels=labels, decision=decision, reasons=reasons,
            policy_version=self.policy.version, model_versions=used,
            request_id=inp.request_id, review_id=review_id, degraded=tuple(degraded),
            timings_ms={"score": round((t1 - t0) * 1000, 3),
                        "record": round((t2 - t1) * 1000, 3)})

    def _record(self, record: dict[str, Any]) -> tuple[int | None, bool]:
        """(review item id, parked). Parked: the database did not answer; the spool keeps the
        record until the ingress's drain writes it."""
        with cost.section(cost.INGRESS):  # a worker thread, in the request's context
            return self._record_now(record)

    def _record_now(self, record: dict[str, Any]) -> tuple[int | None, bool]:
        assert self.store is not None
        key = self._new_key()
        if self.spool is None:
            return write_record(self.store, key, record), False
        if not self.spool.pending:  # else: behind the parked ones, to keep their order
            try:
                return write_record(self.store, key, record), False
            except ReviewStoreError as e:
                log.warning("review database unavailable; parking decisions: %s", e)
        self.spool.park(key, record)
        return None, True
