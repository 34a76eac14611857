"""HTTP: the feed (`POST /v1/feed`) and the outcomes of served items (`POST /v1/events`)."""

import math
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from serve import cost
from serve.api import EventIn, EventsRequest, EventsResponse, FeedRequest
from serve.errors import VALIDATION_ERROR, EventsNotDurable, Overloaded
from serve.events import time_problems
from serve.http.common import (
    error,
    funnel_error,
    parse_json_body,
    parse_payload,
    request_id_of,
    services_of,
    timed_json,
)

router = APIRouter()


@router.post("/v1/feed")
async def feed(request: Request) -> Response:
    started = time.perf_counter()
    s, rid = services_of(request), request_id_of(request)
    req, bad = await parse_payload(request, FeedRequest, s.args.max_body_bytes, rid)
    if bad is not None:
        return bad
    try:
        body, stage_ms = await s.feed.run(req, rid)
    except Overloaded as e:
        refused = funnel_error(e, rid)
        refused.headers["retry-after"] = str(max(1, math.ceil(e.retry_after_s)))
        return refused
    # `handler` is the whole endpoint (parse, pipeline, serialise): what a client sees beyond
    # it is transport, the Serve proxy hop and HTTP
    with cost.section(cost.INGRESS):
        return timed_json(body.model_dump_json(), {
            **stage_ms, "handler": round((time.perf_counter() - started) * 1000, 3)})


@router.post("/v1/events", status_code=202)
async def events(request: Request) -> Response:
    """Outcomes of served items: one event, or `{"events": [...]}` (at most 500). 202:
    durable (fsync'd in the replica's spool), logged for experiment analysis (joined to
    impressions there) and applied to the online feature store; a repeated event id is
    answered as a duplicate and logged once. 503: not stored, retry."""
    s, rid = services_of(request), request_id_of(request)
    payload, bad = await parse_json_body(request, s.args.max_body_bytes, rid)
    if bad is not None:
        return bad
    batch = isinstance(payload, dict) and "events" in payload
    try:
        evs = (EventsRequest.model_validate(payload).events if batch
               else [EventIn.model_validate(payload)])
    except ValidationError as e:
        return funnel_error(e, rid)
    problems = time_problems(evs, datetime.now(UTC), prefix="events" if batch else "")
    if problems:
        return error(422, VALIDATION_ERROR, problems, rid)
    try:
        accepted, duplicates = await s.events.ingest(evs)
    except EventsNotDurable as e:  # nothing acknowledged: the client retries
        refused = funnel_error(e, rid)
        refused.headers["retry-after"] = "1"
        return refused
    body = EventsResponse(accepted=accepted, duplicates=duplicates, request_id=rid)
    return Response(body.model_dump_json(), status_code=202, media_type="application/json")
