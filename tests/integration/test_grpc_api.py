"""funnel.v1 over gRPC with a plain grpcio client (stubs generated from serve/protos), through
Ray Serve's gRPC proxy: the feed, moderation, and status codes from the shared error table."""

from __future__ import annotations

import base64
import io
import json

import grpc
import pytest
from PIL import Image

from serve.grpc_build import ensure_stubs
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
ensure_stubs()
from serve.protos.funnel.v1 import (  # noqa: E402
    feed_pb2,
    feed_pb2_grpc,
    moderation_pb2,
    moderation_pb2_grpc,
)


@pytest.fixture(scope="module")
def channel(stack: Stack) -> grpc.Channel:
    ch = grpc.insecure_channel(stack.grpc)
    grpc.channel_ready_future(ch).result(timeout=60)
    return ch


def _jpeg() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 150, 120)).save(b, "JPEG")
    return b.getvalue()


def test_get_feed_matches_the_http_api(stack: Stack, channel: grpc.Channel) -> None:
    import httpx

    stub = feed_pb2_grpc.FeedStub(channel)
    resp, call = stub.GetFeed.with_call(feed_pb2.GetFeedRequest(
        user_id=1, limit=10, context=feed_pb2.FeedContext(locale="en-US", device="ios")),
        metadata=[("x-request-id", "grpc-feed-1")], timeout=30)
    assert call.code() == grpc.StatusCode.OK
    assert resp.user_id == 1 and 0 < len(resp.items) <= 10
    assert [i.rank for i in resp.items] == list(range(1, len(resp.items) + 1))
    assert resp.request_id == "grpc-feed-1"
    assert resp.model_versions["ranker"] and list(resp.degraded) == []
    assert all(i.sources for i in resp.items)
    http = httpx.post(f"{stack.url}/v1/feed", json={"user_id": 1, "limit": 10}, timeout=30)
    assert len(http.json()["items"]) == len(resp.items)
    explained = [dict(i.explain) for i in resp.items]
    assert any(explained)


def test_get_feed_bad_request_is_invalid_argument_naming_the_field(
        channel: grpc.Channel) -> None:
    stub = feed_pb2_grpc.FeedStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=1, limit=500), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = json.loads(e.value.details())
    assert detail["error"] == "validation_error"  # the name HTTP gives the same fault
    assert detail["detail"][0]["field"] == "limit"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=-4), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in e.value.details()


def test_moderate_text_and_image_over_grpc(channel: grpc.Channel) -> None:
    stub = moderation_pb2_grpc.ModerationStub(channel)
    resp = stub.Moderate(moderation_pb2.ModerateRequest(
        content_id="grpc-1", image=_jpeg(), text="a quiet walk in the park"), timeout=60)
    assert resp.decision == "review"  # the flat image scores ~0.32 nudity: the review band
    assert set(resp.model_versions) == {"moderation_text", "moderation_image"}
    assert resp.HasField("review_id") and resp.policy_version
    assert 0.2 <= resp.labels["nudity"] < 0.8


@pytest.mark.parametrize(("request_", "code", "needle"), [
    (moderation_pb2.ModerateRequest(content_id="x"), grpc.StatusCode.INVALID_ARGUMENT,
     "image"),
    (moderation_pb2.ModerateRequest(content_id="bad id!", text="hi"),
     grpc.StatusCode.INVALID_ARGUMENT, "content_id"),
    (moderation_pb2.ModerateRequest(content_id="x", image=b"not an image"),
     grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
    (moderation_pb2.ModerateRequest(content_id="x", text="a" * (64 * 1024 + 1)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "the limit"),
], ids=["no-content", "bad-content-id", "not-an-image", "text-over-64KiB"])
def test_bad_moderation_requests_map_to_the_shared_status_table(
        channel: grpc.Channel, request_: object, code: grpc.StatusCode, needle: str) -> None:
    stub = moderation_pb2_grpc.ModerationStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Moderate(request_, timeout=60)
    assert e.value.code() == code
    assert needle in e.value.details()


def test_image_bytes_are_not_base64_over_grpc(channel: grpc.Channel) -> None:
    # raw bytes in the proto: base64 text of an image is not an image
    stub = moderation_pb2_grpc.ModerationStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Moderate(moderation_pb2.ModerateRequest(
            content_id="x", image=base64.b64encode(_jpeg())), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json.loads(e.value.details())["error"] == "invalid_content"
