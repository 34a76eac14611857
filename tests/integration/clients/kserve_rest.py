"""Stock KServe REST client (kserve.InferenceRESTClient, protocol v2) against a Funnel URL.

Run as its own process: kserve's protos and tritonclient's (which the test process holds)
both define the `inference` package and cannot share one process. Prints one JSON line.

    python tests/integration/clients/kserve_rest.py http://127.0.0.1:8000
"""

from __future__ import annotations

import asyncio
import io
import json
import sys

import numpy as np
from PIL import Image


async def main(url: str) -> dict[str, object]:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(config=RESTConfig(protocol="v2", timeout=60))
    out: dict[str, object] = {"ready": await client.is_server_ready(url),
                              "live": await client.is_server_live(url),
                              "model_ready": await client.is_model_ready(url, "ranker")}
    text = InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.asarray([b"hello there", b"buy cheap pills"], dtype=object),
                             binary_data=False)
    res = await client.infer(url, InferRequest(model_name="moderation_text",
                                               infer_inputs=[text], request_id="k1"),
                             model_name="moderation_text")
    out["text_scores"] = res.outputs[0].as_numpy().tolist()
    out["text_id"] = res.id
    b = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 150, 120)).save(b, "JPEG")
    img = InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.asarray([b.getvalue()], dtype=object), binary_data=True)
    res = await client.infer(url, InferRequest(model_name="moderation_image",
                                               infer_inputs=[img], request_id="k2"),
                             model_name="moderation_image")
    out["image_scores"] = res.outputs[0].as_numpy().tolist()
    dense = InferInput("dense", [3, int(sys.argv[2])], "FP32")
    dense.set_data_from_numpy(np.zeros((3, int(sys.argv[2])), dtype=np.float32),
                              binary_data=False)
    ids = []
    for k in sys.argv[3].split(","):
        t = InferInput(k, [3, 1], "INT64")
        t.set_data_from_numpy(np.ones((3, 1), dtype=np.int64), binary_data=False)
        ids.append(t)
    res = await client.infer(url, InferRequest(model_name="ranker", infer_inputs=[dense, *ids],
                                               request_id="k3"), model_name="ranker")
    out["ranker_shape"] = list(res.outputs[0].as_numpy().shape)
    try:
        await client.infer(url, InferRequest(model_name="nope", infer_inputs=[text],
                                             request_id="k4"), model_name="nope")
        out["unknown_model"] = "no error"
    except Exception as e:  # httpx.HTTPStatusError
        out["unknown_model"] = getattr(getattr(e, "response", None), "status_code", repr(e))
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
