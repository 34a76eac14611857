"""HTTP: `POST /v1/moderate`, one item's labels and decision (held for review if doubtful)."""

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from funnel.contracts.errors import FunnelError
from serve import cost
from serve.api import ModerateRequest, ModerateResponse
from serve.errors import VALIDATION_ERROR
from serve.http.common import (
    error,
    funnel_error,
    parse_payload,
    request_id_of,
    services_of,
    timed_json,
)
from serve.services.replica import MODERATION_DISABLED

router = APIRouter()


@router.post("/v1/moderate")
async def moderate(request: Request) -> Response:
    from serve.moderation.media import decode_base64_image

    started = time.perf_counter()
    s, rid = services_of(request), request_id_of(request)
    if s.moderation is None:
        return error(503, "moderation_disabled", MODERATION_DISABLED, rid)
    req, bad = await parse_payload(request, ModerateRequest,
                                   s.args.moderation.max_body_bytes, rid)
    if bad is not None:
        return bad
    if req.missing_content():
        return error(422, VALIDATION_ERROR, req.missing_content(), rid)
    try:
        with cost.section(cost.INGRESS):
            image = decode_base64_image(req.image_base64) if req.image_base64 else None
        out = await s.moderation.moderate(req, image, rid)
    except FunnelError as e:
        return funnel_error(e, rid)
    with cost.section(cost.INGRESS):
        return timed_json(response_body(out, rid).model_dump_json(), {
            **out.timings_ms, "handler": round((time.perf_counter() - started) * 1000, 3)})


def response_body(out: Any, rid: str) -> ModerateResponse:
    """The answer for a `ModerationOutput`."""
    return ModerateResponse(
        content_id=out.content_id, labels=out.labels, decision=out.decision,
        reasons=list(out.reasons), policy_version=out.policy_version,
        model_versions=out.model_versions, request_id=rid, review_id=out.review_id,
        degraded=list(out.degraded))
