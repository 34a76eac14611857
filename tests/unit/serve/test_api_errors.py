"""One error mapping for both edges: the same fault has the same `error` name over HTTP (the
JSON body) and gRPC (the status details carry that body), and gRPC's status code follows
the HTTP status. Found by a new user: gRPC said `request_failed` where HTTP said
`validation_error`."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from serve.api import FeedRequest
from serve.errors import (
    InvalidContent,
    Overloaded,
    RequestTooLarge,
    ReviewItemNotFound,
    error_code,
    error_status,
)


class RecordingContext:
    """The part of a gRPC servicer context the handlers use to fail a call."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def _feed_limit_too_high() -> ValidationError:
    with pytest.raises(ValidationError) as e:
        FeedRequest.model_validate({"user_id": 1, "limit": 500})
    return e.value


def test_error_code_and_status_follow_the_error_class() -> None:
    bad = _feed_limit_too_high()
    assert (error_code(bad), error_status(bad)) == ("validation_error", 422)
    assert (error_code(InvalidContent("x")), error_status(InvalidContent("x"))) == (
        "invalid_content", 422)
    assert (error_code(RequestTooLarge("x")), error_status(RequestTooLarge("x"))) == (
        "request_too_large", 413)
    assert error_code(ReviewItemNotFound("x")) == "review_item_not_found"
    assert (error_code(RuntimeError("boom")), error_status(RuntimeError("boom"))) == (
        "internal", 500)


@pytest.mark.parametrize(("exc", "status", "grpc_code"), [
    (_feed_limit_too_high(), 422, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidContent("image is not an image Pillow can read"), 422,
     grpc.StatusCode.INVALID_ARGUMENT),
    (RequestTooLarge("text is 70000 bytes of UTF-8; the limit is 65536"), 413,
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded("this replica is at its bound of 16 feed requests in flight"), 429,
     grpc.StatusCode.RESOURCE_EXHAUSTED),
], ids=["validation", "invalid-content", "too-large", "overloaded"])
def test_grpc_error_body_is_the_http_body(exc: Exception, status: int,
                                          grpc_code: grpc.StatusCode) -> None:
    from serve.http.common import funnel_error
    from serve.rpc.common import grpc_error

    http = funnel_error(exc, "rid-1")
    ctx = RecordingContext()
    empty = object()
    assert grpc_error(ctx, exc, "rid-1", empty) is empty
    assert http.status_code == status and ctx.code == grpc_code
    http_body: dict[str, Any] = json.loads(bytes(http.body))
    assert json.loads(ctx.details) == http_body
    assert http_body["error"] != "request_failed" and http_body["request_id"] == "rid-1"
    if isinstance(exc, ValidationError):
        assert http_body["error"] == "validation_error"
        assert http_body["detail"][0]["field"] == "limit"


def test_a_malformed_grpc_message_is_named_and_invalid_argument() -> None:
    from serve.grpc_api import MalformedMessage
    from serve.rpc.common import grpc_fail

    bad = MalformedMessage("/funnel.v1.Feed/GetFeed", "DecodeError: truncated")
    ctx = RecordingContext()
    grpc_fail(ctx, 400, bad.code, bad.detail(), "rid-2", None)
    body = json.loads(ctx.details)
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["error"] == "malformed_message" and "GetFeed" in body["detail"]
