"""The Open Inference Protocol (KServe V2) on the real stack, called by stock clients nobody
here wrote: tritonclient.http and tritonclient.grpc (in this process) and kserve's
InferenceRESTClient (in its own process: its protos clash with tritonclient's)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from funnel.contracts.bundle import read_manifest
from funnel.contracts.model_io import RANKER_KEYS
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
MODELS = ("ranker", "moderation_text", "moderation_image")


def _jpeg() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 150, 120)).save(b, "JPEG")
    return b.getvalue()


def _n_dense(stack: Stack) -> int:
    return len(read_manifest(stack.bundle)["models"]["ranker"]["dense_features"])


def _ranker_case(mod: object, stack: Stack, rows: int, seed: int) -> tuple[list, np.ndarray]:
    """Ranker inputs for `mod`'s client (tritonclient.http or .grpc) and the logits the
    bundle's TorchScript ranker gives for them in this process."""
    from serve.ranker.client import LocalRanker

    n_dense = _n_dense(stack)
    dense = np.random.default_rng(seed).normal(size=(rows, n_dense)).astype(np.float32)
    first = mod.InferInput("dense", [rows, n_dense], "FP32")  # type: ignore[attr-defined]
    first.set_data_from_numpy(dense)  # binary tensor data: tritonclient's default
    m = read_manifest(stack.bundle)
    local = LocalRanker(str(Path(stack.bundle).resolve() / m["models"]["ranker"]["path"]))
    ids = {k: np.ones(rows, dtype=np.int64) for k in RANKER_KEYS[1:]}  # the model takes [n]
    return [first, *_ranker_id_inputs(mod, rows)], local.logits_sync({"dense": dense, **ids})


# ---- tritonclient.http --------------------------------------------------------------------
def test_tritonclient_http_health_metadata_and_infer_on_every_model(stack: Stack) -> None:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(stack.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready()
    for name in MODELS:
        assert c.is_model_ready(name)
        meta = c.get_model_metadata(name)
        assert meta["name"] == name and meta["inputs"] and meta["outputs"]
    inputs, expected = _ranker_case(httpclient, stack, rows=4, seed=0)
    assert c.infer("ranker", inputs).as_numpy("logits") == pytest.approx(expected, abs=1e-5)

    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.asarray([b"hello there", b"I will hurt you"], dtype=object))
    scores = c.infer("moderation_text", [text]).as_numpy("scores")
    assert scores.shape == (2, 6) and ((scores >= 0) & (scores <= 1)).all()
    img = httpclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.asarray([_jpeg()], dtype=object))
    nud = c.infer("moderation_image", [img]).as_numpy("scores")
    assert nud.shape == (1, 1) and 0.2 <= float(nud[0, 0]) < 0.8


def test_tritonclient_http_json_tensors_too(stack: Stack) -> None:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(stack.url.removeprefix("http://"))
    text = httpclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.asarray([b"a quiet evening"], dtype=object), binary_data=False)
    out = httpclient.InferRequestedOutput("scores", binary_data=False)
    assert c.infer("moderation_text", [text], outputs=[out]).as_numpy("scores").shape == (1, 6)


def test_tritonclient_http_errors_name_the_model_or_tensor(stack: Stack) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    c = httpclient.InferenceServerClient(stack.url.removeprefix("http://"))
    text = httpclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.asarray([b"x"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        c.infer("nope", [text])
    wrong = httpclient.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="'text' must be BYTES, got FP32"):
        c.infer("moderation_text", [wrong])
    bad_shape = httpclient.InferInput("dense", [2, 3], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="'dense' has shape \\[2, 3\\]"):
        c.infer("ranker", [bad_shape, *_ranker_id_inputs(httpclient, 2)])
    not_image = httpclient.InferInput("image", [1], "BYTES")
    not_image.set_data_from_numpy(np.asarray([b"plain text"], dtype=object))
    with pytest.raises(InferenceServerException, match="'image'\\[0\\]"):
        c.infer("moderation_image", [not_image])


def _ranker_id_inputs(mod: object, rows: int) -> list:
    out = []
    for k in RANKER_KEYS[1:]:
        t = mod.InferInput(k, [rows, 1], "INT64")  # type: ignore[attr-defined]
        t.set_data_from_numpy(np.ones((rows, 1), dtype=np.int64))
        out.append(t)
    return out


def test_http_status_codes(stack: Stack) -> None:
    import httpx

    r = httpx.post(f"{stack.url}/v2/models/nope/infer", json={"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    r = httpx.post(f"{stack.url}/v2/models/moderation_text/infer", json={"inputs": [
        {"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert r.status_code == 400 and "'txt'" in r.json()["error"]
    assert httpx.get(f"{stack.url}/v2/models/nope").status_code == 404


# ---- tritonclient.grpc through Ray Serve's gRPC proxy ---------------------------------------
def test_tritonclient_grpc_health_metadata_and_infer_on_every_model(stack: Stack) -> None:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(stack.grpc)
    assert c.is_server_live() and c.is_server_ready()
    for name in MODELS:
        assert c.is_model_ready(name)
        meta = c.get_model_metadata(name)
        assert meta.name == name and meta.inputs and meta.outputs
    inputs, expected = _ranker_case(grpcclient, stack, rows=5, seed=1)
    assert c.infer("ranker", inputs).as_numpy("logits") == pytest.approx(expected, abs=1e-5)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.asarray([b"see you at the game"], dtype=object))
    assert c.infer("moderation_text", [text]).as_numpy("scores").shape == (1, 6)
    img = grpcclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.asarray([_jpeg()], dtype=object))
    assert 0.2 <= float(c.infer("moderation_image", [img]).as_numpy("scores")[0, 0]) < 0.8


def test_tritonclient_grpc_errors_are_not_found_and_invalid_argument(stack: Stack) -> None:
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(stack.grpc)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.asarray([b"x"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        c.infer("nope", [text])
    assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)
    wrong = grpcclient.InferInput("text", [1], "INT64")
    wrong.set_data_from_numpy(np.zeros(1, dtype=np.int64))
    with pytest.raises(InferenceServerException) as e:
        c.infer("moderation_text", [wrong])
    assert e.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "'text' must be BYTES" in e.value.message()


# ---- kserve's InferenceRESTClient (own process) ------------------------------------------
def test_kserve_rest_client(stack: Stack) -> None:
    script = Path(__file__).with_name("clients") / "kserve_rest.py"
    r = subprocess.run([sys.executable, str(script), stack.url, str(_n_dense(stack)),
                        ",".join(RANKER_KEYS[1:])], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ready"] and out["live"] and out["model_ready"]
    assert np.asarray(out["text_scores"]).shape == (2, 6)
    assert out["text_id"] == "k1"
    assert 0.2 <= out["image_scores"][0][0] < 0.8
    assert out["ranker_shape"] == [3, 5]
    assert out["unknown_model"] == 404
