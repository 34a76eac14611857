"""The gRPC edge: `funnel.v1.Feed` and `funnel.v1.Moderation` through Ray Serve's gRPC proxy.

Serve routes each RPC to the ingress deployment's method of the same name (`GetFeed`,
`Moderate`); this module holds what those methods need without the web framework: the
servicer-registration functions the Serve config names (`grpc_options.grpc_servicer_functions`),
message <-> payload conversion, and the one error table shared with HTTP: a status code
chosen from the HTTP status each error class declares. The status details carry the JSON
body an HTTP client gets, its `error` named by the same function (`serve.errors.error_code`).

Ray Serve's gRPC proxy listens on all interfaces (`[::]:<port>`); it has no host setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from serve.grpc_build import ensure_stubs

# The one error table: HTTP status (what each Funnel error class and each HTTP edge answer
# uses) -> gRPC status code.
GRPC_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code_for(http_status: int) -> grpc.StatusCode:
    return GRPC_BY_HTTP.get(http_status, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class MalformedMessage:
    """What a method receives in place of its request when the bytes do not parse as the
    method's message type. The handler answers INVALID_ARGUMENT; without this, the parse
    error would surface from inside grpcio as UNKNOWN, a server error to the client."""

    method: str
    error: str
    # the body's `error` name (HTTP's twin for a body that does not parse is `invalid_json`)
    code: ClassVar[str] = "malformed_message"

    def detail(self) -> str:
        return f"the request is not a valid message for {self.method}: {self.error}"


def _lenient(method: str, parse: Callable[[bytes], Any] | None
             ) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def parse_or_mark(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as e:  # DecodeError, or anything a broken payload provokes
            return MalformedMessage(method, f"{type(e).__name__}: {e}"[:300])

    return parse_or_mark


def _lenient_handlers(service: str, handlers: Mapping[str, Any]) -> dict[str, Any]:
    return {name: h._replace(request_deserializer=_lenient(
        name if name.startswith("/") else f"/{service}/{name}", h.request_deserializer))
        for name, h in handlers.items()}


class _LenientServer:
    """The server handed to a generated `add_*Servicer_to_server`, passing its method
    handlers on with request parsers that mark malformed bytes (MalformedMessage) instead of
    raising."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for h in handlers:
            inner = getattr(h, "_method_handlers", None)
            if isinstance(inner, dict):
                h._method_handlers = _lenient_handlers(getattr(h, "_name", ""), inner)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]
                                       ) -> None:
        add = getattr(self._server, "add_registered_method_handlers", None)
        if add is not None:
            add(service, _lenient_handlers(service, handlers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def add_feed_servicer(servicer: Any, server: Any) -> None:
    """`grpc_options.grpc_servicer_functions` entry for funnel.v1.Feed."""
    ensure_stubs()
    from serve.protos.funnel.v1 import feed_pb2_grpc

    feed_pb2_grpc.add_FeedServicer_to_server(servicer, _LenientServer(server))


def add_moderation_servicer(servicer: Any, server: Any) -> None:
    """`grpc_options.grpc_servicer_functions` entry for funnel.v1.Moderation."""
    ensure_stubs()
    from serve.protos.funnel.v1 import moderation_pb2_grpc

    moderation_pb2_grpc.add_ModerationServicer_to_server(servicer, _LenientServer(server))


def feed_payload(msg: Any) -> dict[str, Any]:
    """A GetFeedRequest as the HTTP API's JSON body (so one pydantic model validates both);
    proto3's zero values mean "not given"."""
    ctx = {k: getattr(msg.context, k) for k in ("device", "locale", "timestamp")
           if getattr(msg.context, k)}
    out: dict[str, Any] = {"user_id": msg.user_id, "context": ctx,
                           "exclude_item_ids": list(msg.exclude_item_ids)}
    if msg.limit:
        out["limit"] = msg.limit
    return out


def feed_response(body: Any) -> Any:
    """FeedResponse (pydantic) -> funnel.v1.GetFeedResponse."""
    from serve.protos.funnel.v1 import feed_pb2

    out = feed_pb2.GetFeedResponse(
        request_id=body.request_id, user_id=body.user_id, degraded=body.degraded,
        cold_start=body.cold_start, model_versions=body.model_versions,
        variants=body.variants)
    for it in body.items:
        item = out.items.add(item_id=it.item_id, rank=it.rank, score=it.score,
                             sources=it.sources)
        item.explain.update(it.explain)
    return out


def moderate_fields(msg: Any) -> tuple[dict[str, Any], bytes | None]:
    """A ModerateRequest as the HTTP body's fields (without the image) and the image bytes."""
    fields: dict[str, Any] = {"content_id": msg.content_id}
    if msg.HasField("text"):
        fields["text"] = msg.text
    if msg.HasField("author_id"):
        fields["author_id"] = msg.author_id
    if msg.locale:
        fields["locale"] = msg.locale
    return fields, (msg.image if msg.HasField("image") else None)


def moderate_response(out: Any) -> Any:
    from serve.protos.funnel.v1 import moderation_pb2

    msg = moderation_pb2.ModerateResponse(
        content_id=out.content_id, labels=out.labels, decision=out.decision,
        reasons=list(out.reasons), policy_version=out.policy_version,
        model_versions=out.model_versions, request_id=out.request_id,
        degraded=list(out.degraded))
    if out.review_id is not None:
        msg.review_id = out.review_id
    return msg


def inference_pb2() -> Any:
    """tritonclient's generated `inference` messages (the KServe V2 gRPC protocol), made
    picklable by reference: they record the flat module name `grpc_service_pb2`, which Ray
    Serve's proxy and replicas could not import when (un)pickling a request, so that name is
    aliased to the real module. Using tritonclient's module (not a second copy of the same
    protos) matters: the feed ingress already loads it for the ranker client, and two
    modules defining package `inference` cannot share a process."""
    import sys

    from tritonclient.grpc import service_pb2

    sys.modules.setdefault("grpc_service_pb2", service_pb2)
    return service_pb2


def add_inference_servicer(servicer: Any, server: Any) -> None:
    """`grpc_options.grpc_servicer_functions` entry for inference.GRPCInferenceService."""
    inference_pb2()
    from tritonclient.grpc import service_pb2_grpc

    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer,
                                                               _LenientServer(server))
