"""The moderation models' Ray Serve deployment: one replica holds both models and batches.

A model stage earns its own deployment (ARCHITECTURE.md: hops cost ~6 ms, so only model
stages get one): the MiniLM encoder is ~90 MB and ~10 s to load, and encoding is far cheaper
per text in batches. `@serve.batch` gathers concurrent `/v1/moderate` calls into one
encoder pass (texts) or one ONNX Runtime run (images); batch sizes and the wait come from
`args.moderation`. Model code runs in a worker thread so the replica's event loop keeps
accepting (and batching) requests meanwhile.

kserve is imported only here, inside the replica (see `serve.moderation.models`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from serve.config import parse_app_args
from training.errors import BundleError

log = logging.getLogger("funnel.moderation")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256,
                  health_check_period_s=10)
class ModerationModels:
    def __init__(self, args: dict[str, Any]) -> None:
        from serve.moderation.models import ImageModerationModel, TextModerationModel

        a = parse_app_args(args)
        m = a.moderation
        self.text: TextModerationModel | None = TextModerationModel(
            bundle=a.bundle, intra_op_threads=m.intra_op_threads)
        try:
            self.text.load()
        except BundleError as e:
            log.warning("text moderation disabled: %s", e)
            self.text = None
        self.image = ImageModerationModel(intra_op_threads=m.intra_op_threads)
        self.image.load()
        wait_s = m.batch_wait_timeout_ms / 1000.0
        for method, size in ((self.score_text, m.text_max_batch_size),
                             (self.score_image, m.image_max_batch_size)):
            batched: Any = method  # @serve.batch adds these setters at run time
            batched.set_max_batch_size(size)
            batched.set_batch_wait_timeout_s(wait_s)

    async def info(self) -> dict[str, Any]:
        return {
            "moderation_text": ({"labels": list(self.text.labels), "version": self.text.version}
                                if self.text else None),
            "moderation_image": {"labels": list(self.image.labels),
                                 "version": self.image.version},
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def score_text(self, texts: list[str]) -> list[list[float]]:
        if self.text is None:
            raise RuntimeError("no text moderation model in this bundle")
        return (await asyncio.to_thread(self.text.score_texts, texts)).tolist()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def score_image(self, images: list[bytes]) -> list[float | str]:
        """One P(nudity) per image, or an error message for an image that cannot be decoded
        (a string, so one bad image fails its own request only)."""
        scores = await asyncio.to_thread(self.image.score_images, images)
        return [s if isinstance(s, float) else str(s) for s in scores]
