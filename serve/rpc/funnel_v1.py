"""gRPC: the funnel.v1 services (GetFeed, Moderate) over the replica's services."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from funnel.contracts.errors import FunnelError
from serve.api import FeedRequest, ModerateRequest
from serve.errors import VALIDATION_ERROR, Overloaded
from serve.grpc_api import MalformedMessage
from serve.rpc.common import grpc_error, grpc_fail, grpc_observed, grpc_request_id
from serve.services.replica import MODERATION_DISABLED


class FunnelV1Rpc:
    """Mixin of the Serve deployment; `self.services` is its `ReplicaServices`."""

    services: Any

    async def GetFeed(self, request: Any, grpc_context: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return await get_feed(self.services, request, grpc_context)
        finally:
            grpc_observed("GetFeed", grpc_context, started)

    async def Moderate(self, request: Any, grpc_context: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return await moderate(self.services, request, grpc_context)
        finally:
            grpc_observed("Moderate", grpc_context, started)


async def get_feed(services: Any, request: Any, grpc_context: Any) -> Any:
    from serve.grpc_api import feed_payload, feed_response
    from serve.protos.funnel.v1 import feed_pb2

    rid = grpc_request_id(grpc_context)
    if isinstance(request, MalformedMessage):
        return grpc_fail(grpc_context, 400, request.code, request.detail(), rid,
                         feed_pb2.GetFeedResponse())
    try:
        req = FeedRequest.model_validate(feed_payload(request))
    except ValidationError as e:
        return grpc_error(grpc_context, e, rid, feed_pb2.GetFeedResponse())
    try:
        body, _ = await services.feed.run(req, rid)
    except Overloaded as e:
        return grpc_error(grpc_context, e, rid, feed_pb2.GetFeedResponse())
    return feed_response(body)


async def moderate(services: Any, request: Any, grpc_context: Any) -> Any:
    from serve.grpc_api import moderate_fields, moderate_response
    from serve.moderation.media import inspect_image
    from serve.protos.funnel.v1 import moderation_pb2

    rid = grpc_request_id(grpc_context)
    empty = moderation_pb2.ModerateResponse()
    if isinstance(request, MalformedMessage):
        return grpc_fail(grpc_context, 400, request.code, request.detail(), rid, empty)
    if services.moderation is None:
        return grpc_fail(grpc_context, 503, "moderation_disabled", MODERATION_DISABLED,
                         rid, empty)
    fields, image = moderate_fields(request)
    try:
        req = ModerateRequest.model_validate(fields)
    except ValidationError as e:
        return grpc_error(grpc_context, e, rid, empty)
    if not image and req.missing_content():
        return grpc_fail(grpc_context, 422, VALIDATION_ERROR, NO_CONTENT, rid, empty)
    try:
        info = inspect_image(image, field="image") if image else None
        out = await services.moderation.moderate(req, info, rid)
    except FunnelError as e:
        return grpc_error(grpc_context, e, rid, empty)
    return moderate_response(out)


NO_CONTENT = [{"field": "text", "message": "give at least one of text or image"},
              {"field": "image", "message": "give at least one of text or image"}]
