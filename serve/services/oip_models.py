"""The models the Open Inference Protocol serves over this replica's parts: the ranker
through the pipeline's ranker client, moderation through the models' deployment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from funnel.contracts.errors import FunnelError
from serve.errors import InvalidTensor


def build_oip_models(*, manifest: Mapping[str, Any], ranker: Any, ranker_backend: str,
                     moderation_handle: Any = None,
                     moderation_ready: Callable[[], Awaitable[bool]] | None = None
                     ) -> list[Any]:
    from funnel.contracts.model_io import RANKER_KEYS, TASKS
    from serve.moderation.media import inspect_image
    from serve.moderation.remote import image_model_version, moderation_labels
    from serve.oip import OipModel, TensorSpec

    version = str(manifest["version"])
    n_dense = len(manifest["models"]["ranker"]["dense_features"])

    async def rank(t: dict[str, Any]) -> dict[str, Any]:
        return {"logits": await ranker.logits(t)}

    async def ranker_ready() -> bool:
        ready = getattr(ranker, "ready", None)
        return bool(await ready()) if ready else True

    models = [OipModel(
        name="ranker", version=version,
        platform=("pytorch_torchscript" if ranker_backend == "local"
                  else "triton_python_backend"),
        inputs=(TensorSpec("dense", "FP32", (-1, n_dense)),
                *(TensorSpec(k, "INT64", (-1, 1)) for k in RANKER_KEYS[1:])),
        outputs=(TensorSpec("logits", "FP32", (-1, len(TASKS))),), infer=rank,
        ready=ranker_ready)]
    handle = moderation_handle
    if handle is None:
        return models
    text_labels, text_version = moderation_labels(manifest)
    ready = moderation_ready or ranker_ready  # a handle without a probe: as ready as the rest

    async def score_texts(t: dict[str, Any]) -> dict[str, Any]:
        try:
            texts = [b.decode("utf-8") for b in t["text"].reshape(-1)]
        except (UnicodeDecodeError, AttributeError) as e:
            raise InvalidTensor(f"input tensor 'text' must hold UTF-8 strings: {e}") from e
        rows = await asyncio.gather(*(handle.score_text.remote(x) for x in texts))
        return {"scores": np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)}

    async def score_images(t: dict[str, Any]) -> dict[str, Any]:
        images = list(t["image"].reshape(-1))
        for i, b in enumerate(images):
            try:
                inspect_image(bytes(b), field=f"input tensor 'image'[{i}]")
            except FunnelError as e:
                raise InvalidTensor(str(e)) from e
        scores = await asyncio.gather(*(handle.score_image.remote(bytes(b)) for b in images))
        for i, sc in enumerate(scores):
            if isinstance(sc, str):
                raise InvalidTensor(f"input tensor 'image'[{i}]: {sc}")
        return {"scores": np.asarray(scores, dtype=np.float32).reshape(-1, 1)}

    if text_labels:
        models.append(OipModel(
            name="moderation_text", version=text_version, platform="funnel_kserve_model",
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("scores", "FP32", (-1, len(text_labels))),),
            infer=score_texts, ready=ready))
    models.append(OipModel(
        name="moderation_image", version=image_model_version(), platform="onnxruntime",
        inputs=(TensorSpec("image", "BYTES", (-1,)),),
        outputs=(TensorSpec("scores", "FP32", (-1, 1)),), infer=score_images,
        ready=ready))
    return models
