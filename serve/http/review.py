"""HTTP: the human-review queue (reviewers and admins): list items, record a decision as
the authenticated caller."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from funnel.contracts.errors import FunnelError
from serve.api import MAX_ID, ReviewDecisionIn, ReviewItemOut, ReviewList, parse_uint
from serve.errors import VALIDATION_ERROR
from serve.http.common import (
    authorized,
    error,
    funnel_error,
    parse_payload,
    request_id_of,
    services_of,
)
from serve.services.review import parse_list_query

router = APIRouter()


@router.get("/v1/review")
async def review_list(request: Request) -> Response:
    s, rid = services_of(request), request_id_of(request)
    _, denied = await authorized(request, rid, "reviewer")
    if denied is not None:
        return denied
    q, problems = parse_list_query(dict(request.query_params),
                                   max_limit=s.args.review.max_list_limit)
    if q is None:
        return error(422, VALIDATION_ERROR, problems, rid)
    try:
        items, next_after = await s.review.list(q)
    except FunnelError as e:
        return funnel_error(e, rid)
    body = ReviewList(items=[ReviewItemOut.model_validate(i, from_attributes=True)
                             for i in items], next_after_id=next_after)
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/v1/review/{item_id}")
async def review_decide(item_id: str, request: Request) -> Response:
    s, rid = services_of(request), request_id_of(request)
    who, denied = await authorized(request, rid, "reviewer")
    if denied is not None:
        return denied
    review_id = parse_uint(item_id)
    if review_id is None:
        return error(422, VALIDATION_ERROR, [{"field": "item_id", "message":
                                              f"a review item id in 0..{MAX_ID}",
                                              "given": item_id}], rid)
    d, bad = await parse_payload(request, ReviewDecisionIn, 64 * 1024, rid)
    if bad is not None:
        return bad
    try:
        # the authenticated caller decides; a `reviewer` in the body is ignored
        item = await s.review.decide(review_id, decision=d.decision, reviewer=who.name,
                                     note=d.note)
    except FunnelError as e:
        return funnel_error(e, rid)
    body = ReviewItemOut.model_validate(item, from_attributes=True)
    headers = {}
    if "reviewer" in d.model_fields_set:
        headers = {"deprecation": "true", "warning": f'299 funnel "the body\'s reviewer field '
                   f'is deprecated and ignored; decisions are recorded as the authenticated '
                   f'caller ({who.name})"'}
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
