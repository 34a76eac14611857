"""/v1/moderate, the review queue and their effect on the feed, over HTTP against the real
stack (local Ray Serve, the moderation deployment with MiniLM + open_nsfw, SQLite queue)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from serve.config import DEFAULT_POLICY
from serve.moderation.policy import load_policy
from tests.integration.conftest import LOCAL_CONFIG, Stack
from training.data.schema import HARM_LABELS

pytestmark = pytest.mark.integration

TEXTS = ["what a lovely day at the beach with friends",
         "I will hurt you, you worthless idiot",
         "buy cheap pills now, click here, limited offer",
         "the election was rigged by lizard people, share before they delete this"]


def _jpeg(w: int = 512, h: int = 512, color: tuple[int, int, int] = (200, 150, 120)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), color).save(b, "JPEG")
    return b.getvalue()


# open_nsfw scores this flat skin-toned square ~0.32: above the shipped policy's nudity
# review_at (0.2), below block_at (0.8), so it is a deterministic way to reach `review`
# (the image model is pretrained and fixed; the text head is retrained per test session).
REVIEW_IMAGE = base64.b64encode(_jpeg()).decode()


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    return httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def admin(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.admin_token}"}


def _moderate(client: httpx.Client, stack: Stack, body: object) -> httpx.Response:
    return client.post(f"{stack.url}/v1/moderate", json=body)


def test_text_scores_every_label_and_follows_the_shipped_policy(
        stack: Stack, client: httpx.Client) -> None:
    policy = load_policy(DEFAULT_POLICY, labels=HARM_LABELS)
    decisions = []
    for i, text in enumerate(TEXTS):
        r = _moderate(client, stack, {"content_id": f"text-{i}", "text": text})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["labels"]) == set(HARM_LABELS)
        assert all(0.0 <= s <= 1.0 for s in body["labels"].values())
        assert body["policy_version"] == policy.version
        assert set(body["model_versions"]) == {"moderation_text"}
        assert body["request_id"] == r.headers["x-request-id"]
        assert body["degraded"] == []
        verdict = policy.decide(body["labels"])
        assert body["decision"] == verdict.decision
        assert body["reasons"] == list(verdict.reasons)
        assert (body["review_id"] is not None) == (body["decision"] == "review")
        decisions.append(body["decision"])
    assert decisions[0] == "allow"
    assert decisions[1] != "allow"  # a threat is never waved through


def test_image_and_text_together_take_the_higher_nudity_score(
        stack: Stack, client: httpx.Client) -> None:
    image_only = _moderate(client, stack, {"content_id": "img-a", "image_base64": REVIEW_IMAGE})
    assert image_only.status_code == 200, image_only.text
    img = image_only.json()
    assert set(img["labels"]) == {"nudity"}
    assert 0.2 <= img["labels"]["nudity"] < 0.8
    assert img["decision"] == "review" and img["review_id"] is not None
    assert set(img["model_versions"]) == {"moderation_image"}
    both = _moderate(client, stack, {"content_id": "img-b", "image_base64": REVIEW_IMAGE,
                                     "text": TEXTS[0]}).json()
    text = _moderate(client, stack, {"content_id": "img-c", "text": TEXTS[0]}).json()
    assert both["labels"]["nudity"] == pytest.approx(
        max(img["labels"]["nudity"], text["labels"]["nudity"]), abs=1e-6)
    assert set(both["model_versions"]) == {"moderation_text", "moderation_image"}


def test_review_items_are_listed_and_decided_once(stack: Stack, client: httpx.Client,
                                                  admin: dict[str, str]) -> None:
    r = _moderate(client, stack, {"content_id": "rev-1", "image_base64": REVIEW_IMAGE,
                                  "author_id": 5})
    item_id = r.json()["review_id"]
    listed = client.get(f"{stack.url}/v1/review", params={"limit": 200}, headers=admin).json()
    item = next(i for i in listed["items"] if i["id"] == item_id)
    assert (item["content_id"], item["status"], item["author_id"]) == ("rev-1", "pending", 5)
    assert item["flagged_labels"] == ["nudity"] and item["has_image"] is True
    d = client.post(f"{stack.url}/v1/review/{item_id}", headers=admin,
                    json={"decision": "block", "reviewer": "ana", "note": "explicit"})
    assert d.status_code == 200, d.text
    # the admin token decides as `token:admin`; the body's name is ignored (deprecated)
    assert (d.json()["status"], d.json()["decided_by"]) == ("block", "token:admin")
    assert d.headers["deprecation"] == "true"
    again = client.post(f"{stack.url}/v1/review/{item_id}", headers=admin,
                        json={"decision": "allow", "reviewer": "bo"})
    assert again.status_code == 409
    assert again.json()["error"] == "already_decided"
    assert "by token:admin" in again.json()["detail"]
    blocked = client.get(f"{stack.url}/v1/review", params={"status": "block", "limit": 200},
                         headers=admin).json()["items"]
    assert item_id in [i["id"] for i in blocked]
    pending = client.get(f"{stack.url}/v1/review", headers=admin,
                         params={"limit": 200}).json()["items"]
    assert item_id not in [i["id"] for i in pending]


def test_concurrent_reviewers_exactly_one_wins(stack: Stack, client: httpx.Client,
                                               admin: dict[str, str]) -> None:
    item_id = _moderate(client, stack, {"content_id": "rev-race",
                                        "image_base64": REVIEW_IMAGE}).json()["review_id"]
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def decide(n: int) -> None:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            codes.append(c.post(f"{stack.url}/v1/review/{item_id}", headers=admin,
                                json={"decision": "allow", "reviewer": f"r{n}"}).status_code)

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(codes) == Counter({200: 1, 409: 7})


def test_admin_routes_need_the_bearer_token(stack: Stack, client: httpx.Client) -> None:
    r = client.get(f"{stack.url}/v1/review")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer, Basic realm="funnel"'
    assert client.get(f"{stack.url}/v1/review",
                      headers={"authorization": "Bearer wrong"}).status_code == 403
    assert client.post(f"{stack.url}/v1/review/1", json={"decision": "allow",
                                                         "reviewer": "x"}).status_code == 401


def test_bad_review_requests_are_4xx(stack: Stack, client: httpx.Client,
                                     admin: dict[str, str]) -> None:
    r = client.get(f"{stack.url}/v1/review", params={"status": "maybe", "limit": 0},
                   headers=admin)
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"status", "limit"}
    r = client.post(f"{stack.url}/v1/review/1", headers=admin,
                    json={"decision": "maybe", "reviewer": "x" * 129})
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"decision", "reviewer"}
    assert client.post(f"{stack.url}/v1/review/999999", headers=admin,
                       json={"decision": "allow", "reviewer": "x"}).status_code == 404


def _feed_ids(client: httpx.Client, stack: Stack, user_id: int) -> list[int]:
    r = client.post(f"{stack.url}/v1/feed", json={"user_id": user_id, "limit": 50})
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_feed_holds_posts_in_review_and_never_serves_blocked_ones(
        stack: Stack, client: httpx.Client, admin: dict[str, str]) -> None:
    import pandas as pd

    users = pd.read_parquet(Path(stack.bundle).resolve() / "catalog" / "users.parquet")
    user = int(users["user_id"].iloc[0])
    before = _feed_ids(client, stack, user)
    held, blocked = before[0], before[1]
    ids = {}
    for post in (held, blocked):
        r = _moderate(client, stack, {"content_id": str(post), "image_base64": REVIEW_IMAGE})
        assert r.json()["decision"] == "review"
        ids[post] = r.json()["review_id"]
    during = _feed_ids(client, stack, user)
    assert held not in during and blocked not in during  # review_policy: hold
    assert client.post(f"{stack.url}/v1/review/{ids[blocked]}", headers=admin,
                       json={"decision": "block", "reviewer": "ana"}).status_code == 200
    assert client.post(f"{stack.url}/v1/review/{ids[held]}", headers=admin,
                       json={"decision": "allow", "reviewer": "ana"}).status_code == 200
    served = [_feed_ids(client, stack, user) for _ in range(10)]
    assert all(blocked not in page for page in served)
    assert any(held in page for page in served)  # a reviewer's allow returns it


# ---- bad input: a clear 4xx, never a 500 ---------------------------------------------------
def _truncated_jpeg() -> str:
    """A JPEG whose header is intact but whose pixel data stops half-way."""
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(noise).save(b, "JPEG")
    return base64.b64encode(b.getvalue()[: len(b.getvalue()) // 2]).decode()


def _png(w: int, h: int) -> str:
    b = io.BytesIO()
    Image.new("L", (w, h), 0).save(b, "PNG")
    return base64.b64encode(b.getvalue()).decode()


@pytest.mark.parametrize(("body", "status", "error", "needle"), [
    ({"content_id": "x"}, 422, "validation_error", "image_base64"),
    ({"content_id": "x", "text": "", "image_base64": ""}, 422, "validation_error", "text"),
    ({"content_id": "x", "text": "   "}, 422, "validation_error", "image_base64"),
    ({"content_id": 5.5, "text": "hi"}, 422, "validation_error", "content_id"),
    ({"content_id": "x", "text": "hi", "colour": "red"}, 422, "validation_error", "colour"),
    ({"content_id": "x", "text": "a" * (64 * 1024 + 1)}, 413, "request_too_large", "65537"),
    ({"content_id": "x", "image_base64": "abc$%^"}, 422, "invalid_content", "base64"),
    ({"content_id": "x", "image_base64": base64.b64encode(b"plain text, no image").decode()},
     422, "invalid_content", "not an image"),
    ({"content_id": "x", "image_base64": _truncated_jpeg()}, 422, "invalid_content",
     "corrupt"),
    ({"content_id": "x", "image_base64": _png(4097, 8)}, 413, "request_too_large", "4097x8"),
    ({"content_id": "x", "image_base64": base64.b64encode(b"\xff" * (5 * 1024 * 1024 + 10))
      .decode()}, 413, "request_too_large", "the limit"),
], ids=["no-content", "both-empty", "blank-text", "wrong-type", "unknown-field",
        "text-over-64KiB", "corrupt-base64", "not-an-image", "truncated-image",
        "image-over-4096px", "image-over-5MiB"])
def test_bad_moderation_input_is_a_clear_4xx(stack: Stack, client: httpx.Client,
                                             body: dict[str, object], status: int, error: str,
                                             needle: str) -> None:
    r = _moderate(client, stack, body)
    assert r.status_code == status, r.text
    out = r.json()
    assert out["error"] == error and needle in str(out["detail"])
    assert " object at 0x" not in str(out["detail"])  # no Python reprs in a client's answer
    assert out["request_id"] == r.headers["x-request-id"]


def test_body_over_the_moderation_limit_is_413(stack: Stack, client: httpx.Client) -> None:
    r = client.post(f"{stack.url}/v1/moderate", content=b"{" + b" " * (9 << 20) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"


def test_a_policy_missing_a_scored_label_is_refused_at_start(stack: Stack,
                                                             tmp_path: Path) -> None:
    policy = yaml.safe_load(Path(DEFAULT_POLICY).read_text())
    del policy["labels"]["hate"]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    doc = yaml.safe_load(LOCAL_CONFIG.read_text())
    doc["applications"][0]["args"]["moderation"]["policy"] = str(tmp_path / "policy.yaml")
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "funnel", "serve", "--bundle", str(stack.bundle),
                        "--config", str(tmp_path / "serve.yaml"), "--triton", "external"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "labels.hate: no thresholds for ['hate']" in r.stderr
    assert "Traceback" not in r.stderr
