"""Malformed gRPC request bytes reach the handler as MalformedMessage (answered
INVALID_ARGUMENT), not as a parse error inside grpcio (UNKNOWN): found by the gRPC fuzzer."""

from __future__ import annotations

from typing import Any

from serve.grpc_api import (
    MalformedMessage,
    add_feed_servicer,
    add_inference_servicer,
    add_moderation_servicer,
)
from serve.grpc_build import ensure_stubs


class AnyServicer:
    def __getattr__(self, name: str) -> Any:
        return lambda request, context: None


class Recorder:
    """A server that keeps what the generated registration code gives it."""

    def __init__(self) -> None:
        self.generic: dict[str, Any] = {}
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for h in handlers:
            self.generic.update(h._method_handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.update({f"/{service}/{k}": v for k, v in handlers.items()})


def test_every_registered_method_parses_leniently() -> None:
    ensure_stubs()
    from serve.protos.funnel.v1 import feed_pb2

    server = Recorder()
    for add in (add_feed_servicer, add_moderation_servicer, add_inference_servicer):
        add(AnyServicer(), server)
    assert "/funnel.v1.Feed/GetFeed" in server.generic
    assert "/inference.GRPCInferenceService/ModelInfer" in server.generic
    for table in (server.generic, server.registered):
        for name, handler in table.items():
            got = handler.request_deserializer(b"\xff\xff\xff\xff")
            assert isinstance(got, MalformedMessage), name
            assert got.method == name and "DecodeError" in got.error
    parse = server.generic["/funnel.v1.Feed/GetFeed"].request_deserializer
    ok = parse(feed_pb2.GetFeedRequest(user_id=7, limit=3).SerializeToString())
    assert (ok.user_id, ok.limit) == (7, 3)
    assert "GetFeed" in MalformedMessage("/funnel.v1.Feed/GetFeed", "x").detail()


def test_grpc_content_id_is_a_string_field_read_as_http_reads_it() -> None:
    # funnel.v1.ModerateRequest.content_id is `string`: a feed item id is sent as its decimal
    # text, the same value HTTP makes of a JSON integer (`1241` -> "1241")
    ensure_stubs()
    from serve.api import ModerateRequest
    from serve.grpc_api import moderate_fields
    from serve.protos.funnel.v1 import moderation_pb2

    fields, image = moderate_fields(moderation_pb2.ModerateRequest(content_id="1241",
                                                                   text="hi"))
    assert image is None
    assert ModerateRequest.model_validate(fields).content_id == "1241"
    assert ModerateRequest.model_validate({"content_id": 1241, "text": "hi"}).content_id \
        == ModerateRequest.model_validate(fields).content_id
