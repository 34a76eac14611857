"""The moderation model classes under KServe's own ModelServer (no Ray), compared with the
same classes inside the Serve graph: one implementation, two hosts, the same scores."""

from __future__ import annotations

import base64
import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import Stack, free_port

pytestmark = pytest.mark.integration
TEXTS = ["what a lovely day at the beach with friends", "I will hurt you, you worthless idiot"]


@pytest.fixture(scope="module")
def kserve_url(stack: Stack) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve.moderation.kserve_main", "--bundle",
                             str(stack.bundle), "--http-port", str(port), "--grpc-port",
                             str(free_port())], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "KServe ModelServer not ready in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _jpeg() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 150, 120)).save(b, "JPEG")
    return b.getvalue()


def test_text_scores_match_between_kserve_and_the_serve_graph(stack: Stack,
                                                              kserve_url: str) -> None:
    v1 = httpx.post(f"{kserve_url}/v1/models/moderation_text:predict",
                    json={"instances": TEXTS}, timeout=60)
    assert v1.status_code == 200, v1.text
    under_kserve = v1.json()["predictions"]
    for text, scores in zip(TEXTS, under_kserve, strict=True):
        ours = httpx.post(f"{stack.url}/v1/moderate", json={"content_id": "k", "text": text},
                          timeout=60).json()["labels"]
        assert ours == pytest.approx(scores, abs=1e-5)


def test_v2_text_and_image_under_kserve(kserve_url: str) -> None:
    r = httpx.post(f"{kserve_url}/v2/models/moderation_text/infer", timeout=60, json={
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert (out["name"], out["shape"], out["datatype"]) == ("scores", [2, 6], "FP32")
    assert r.json()["parameters"]["labels"].split(",")[0] == "abuse"
    img = httpx.post(f"{kserve_url}/v1/models/moderation_image:predict", timeout=60,
                     json={"instances": [{"b64": base64.b64encode(_jpeg()).decode()}]})
    assert img.status_code == 200, img.text
    assert 0.2 <= img.json()["predictions"][0]["nudity"] < 0.8
    meta = httpx.get(f"{kserve_url}/v2/models/moderation_image", timeout=10).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


def test_bad_input_under_kserve_is_400_naming_the_tensor(kserve_url: str) -> None:
    r = httpx.post(f"{kserve_url}/v2/models/moderation_text/infer", timeout=30, json={
        "inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert r.status_code == 400 and "'text'" in r.json()["error"]
    r = httpx.post(f"{kserve_url}/v1/models/moderation_image:predict", timeout=30,
                   json={"instances": [{"b64": base64.b64encode(b"no image").decode()}]})
    assert r.status_code == 400 and "not an image" in r.json()["error"]
