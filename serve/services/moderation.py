"""The moderation use case (`POST /v1/moderate`, gRPC `Moderate`): score, decide and record
one item through `serve.moderation.service.ModerationService`, with the rollout's text-model
variant for the content, then observe it (metrics, the impression log) and let this
replica's feed see a non-allow decision at once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from monitoring import metrics
from serve import cost
from serve.api import ModerateRequest


class ModerateService:
    """`moderate(request, image, request_id)` -> `ModerationOutput`; raises FunnelError on
    bad content or an unreachable review store.

    `core` is the `ModerationService`; `scorer_for(version)` a scorer of that text-model
    version (the rollout's variant); `models` the moderation models' handle-like object
    with `score_text(text, version)` -> scores by label (for the rollout's shadow
    comparisons)."""

    def __init__(self, *, core: Any, text_labels: tuple[str, ...],
                 scorer_for: Callable[[str], Any],
                 score_text: Callable[[str, str], Awaitable[Mapping[str, float]]],
                 refresh_verdicts: Callable[[], Awaitable[None]], rollout: Any = None,
                 impressions: Any = None, replica: str = "",
                 on_request: Callable[[], None] = lambda: None) -> None:
        self.core = core
        self.text_labels = text_labels
        self._scorer_for = scorer_for
        self._score_text = score_text
        self._refresh_verdicts = refresh_verdicts
        self.rollout = rollout
        self.impressions = impressions
        self.replica = replica
        self._on_request = on_request

    async def moderate(self, req: ModerateRequest, image: Any, rid: str) -> Any:
        self._on_request()
        # the HTTP edge starts the request's cost ledger (serve/cost.py); gRPC gets one here
        with (self.rollout.serving() if self.rollout else contextlib.nullcontext(),
              cost.request("moderate")):
            return await self._moderate_once(req, image, rid)

    async def _moderate_once(self, req: ModerateRequest, image: Any, rid: str) -> Any:
        from serve.moderation.media import check_text
        from serve.moderation.service import ModerationInput

        cpu = cost.Lap()
        text = check_text(req.text) if req.text and req.text.strip() else None
        inp = ModerationInput(content_id=req.content_id, request_id=rid, text=text,
                              image=image, author_id=req.author_id, locale=req.locale,
                              reported=req.reported)
        a = self.rollout.router.assign("moderation", req.content_id) if self.rollout else None
        cpu.charge(cost.INGRESS)
        if a is None:
            out = await self.core.moderate(inp)
        else:  # the rollout's text-model variant for this content (sticky by content id)
            self.rollout.router.begin(a)
            try:
                out = await self.core.moderate(inp, scorer=self._scorer_for(a.bundle_version),
                                               text_version=a.bundle_version)
            except BaseException:
                self.rollout.router.end(a, failed=False)
                raise
            self.rollout.after_moderation(
                a, text=text, scores=out.labels, degraded=out.degraded,
                latency_ms=out.timings_ms.get("score", 0.0), text_labels=self.text_labels,
                score_text=self._score_text)
        cpu = cost.Lap()
        variant = a.variant if a is not None else "primary"
        c = cost.current()
        if c is not None:
            c.variant = variant
        self.observe(inp, out, variant)
        cpu.charge(cost.INGRESS)
        if out.decision != "allow":  # a model's allow never changes what the feed serves
            await self._refresh_verdicts()  # this replica's feed sees its decision at once
        return out

    def observe(self, inp: Any, out: Any, variant: str) -> None:
        content = "+".join(k for k, v in (("text", inp.text), ("image", inp.image)) if v)
        outcomes = self.core.policy.outcomes(out.labels)
        metrics.observe_moderation(route="/v1/moderate", decision=out.decision,
                                   content=content, label_outcomes=outcomes,
                                   degraded=out.degraded)
        if self.impressions is not None:
            from serve.impression_records import moderation_columns

            cols, n = moderation_columns(
                request_id=out.request_id, ts_us=time.time_ns() // 1000,
                content_id=out.content_id, content=content, decision=out.decision,
                scores=out.labels, outcomes=outcomes, labels=self.core.policy.labels,
                degraded=out.degraded, policy_version=out.policy_version,
                model_versions=out.model_versions, variant=variant,
                review_id=out.review_id, replica=self.replica)
            self.impressions.append(cols, n)
