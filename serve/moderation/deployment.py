"""The moderation models' Ray Serve deployment: one replica holds both models and batches.

A model stage earns its own deployment (ARCHITECTURE.md: hops cost ~6 ms, so only model
stages get one): the MiniLM encoder is ~90 MB and ~10 s to load, and encoding is far cheaper
per text in batches. A `GreedyBatcher` per model gathers the `/v1/moderate` calls that
arrive while the model is busy into its next encoder pass (texts) or ONNX Runtime run
(images), as Triton's dynamic batcher does; `@serve.batch` was replaced because it closes
batches on a timer and made batches of one here (serve/batcher.py). Batch sizes and the
wait come from `args.moderation`. Model code runs in a worker thread so the replica's event
loop keeps accepting (and queueing) calls meanwhile.

kserve is imported only here, inside the replica (see `serve.moderation.models`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray import serve

from funnel.contracts.errors import BundleError
from monitoring import metrics
from serve.batcher import GreedyBatcher
from serve.config import parse_app_args
from serve.cost import MODERATION_IMAGE, MODERATION_TEXT, recording, set_recording

log = logging.getLogger("funnel.moderation")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256,
                  health_check_period_s=10)
class ModerationModels:
    def __init__(self, args: dict[str, Any]) -> None:
        from serve.moderation.models import ImageModerationModel, TextModerationModel

        a = parse_app_args(args)
        m = a.moderation
        self._args = a
        set_recording(a.cost.enabled)
        self._heads: dict[str, tuple[TextModerationModel, GreedyBatcher[str, list[float]]]] = {}
        self._head_lock = asyncio.Lock()
        self._bundles: Any = None  # serve.bundles.BundleVersions, made on first use
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
        self._texts = GreedyBatcher(self._score_text_batch, max_batch_size=m.text_max_batch_size,
                                    max_wait_s=wait_s)
        self._images = GreedyBatcher(self._score_image_batch,
                                     max_batch_size=m.image_max_batch_size, max_wait_s=wait_s)

    async def info(self) -> dict[str, Any]:
        """Models, versions, and the mean batch size each batcher has run so far."""
        return {
            "mean_batch_size": {"moderation_text": round(self._texts.mean_batch_size, 2),
                                "moderation_image": round(self._images.mean_batch_size, 2)},
            "moderation_text": ({"labels": list(self.text.labels), "version": self.text.version}
                                if self.text else None),
            "moderation_image": {"labels": list(self.image.labels),
                                 "version": self.image.version},
        }

    async def score_text(self, text: str, version: str | None = None) -> list[float]:
        """Scores of one text, one per label (batched with concurrent calls). `version`: a
        rollout's bundle version of the text head (default: the app's bundle)."""
        if self.text is None:
            raise RuntimeError("no text moderation model in this bundle")
        if not version or version == self.text.version:
            return await self._texts.submit(text)
        head = self._heads.get(version) or await self._load_head(version)
        return await head[1].submit(text)

    async def text_labels(self, version: str | None = None) -> list[str]:
        """The labels `score_text(text, version)` scores, in its order (a canary head may
        emit one more than the serving bundle's)."""
        if self.text is None:
            raise RuntimeError("no text moderation model in this bundle")
        if not version or version == self.text.version:
            return list(self.text.labels)
        head = self._heads.get(version) or await self._load_head(version)
        return list(head[0].labels)

    async def _load_head(self, version: str) -> tuple[Any, Any]:
        """Another bundle version's text head, next to this one and sharing its encoder
        (the heads are small; the encoder is not). Checksums verified before loading. Its
        labels may differ from the serving head's (the rollout controller has checked that
        the policy covers them)."""
        from serve.bundles import bundle_versions
        from serve.moderation.models import TextModerationModel

        async with self._head_lock:
            if version in self._heads:
                return self._heads[version]
            assert self.text is not None
            if self._bundles is None:
                self._bundles = bundle_versions(self._args)
            path = await asyncio.to_thread(self._bundles.path, version)  # may pull
            model = TextModerationModel(bundle=str(path),
                                        encoder=self.text.encoder,
                                        intra_op_threads=self._args.moderation.intra_op_threads)
            await asyncio.to_thread(model.load)  # its own labels: one more is a canary

            async def run(texts: list[str]) -> list[list[float]]:
                return (await asyncio.to_thread(
                    charged_batch, model.score_texts, texts, MODERATION_TEXT, version)).tolist()

            m = self._args.moderation
            batcher = GreedyBatcher(run, max_batch_size=m.text_max_batch_size,
                                    max_wait_s=m.batch_wait_timeout_ms / 1000.0)
            self._heads[version] = (model, batcher)
            log.info("moderation: text head of bundle %s loaded next to %s", version,
                     self.text.version)
            return self._heads[version]

    async def score_image(self, image: bytes) -> float | str:
        """P(nudity) of one image, or an error message if it cannot be decoded (a string,
        so one bad image fails its own request only)."""
        return await self._images.submit(image)

    async def _score_text_batch(self, texts: list[str]) -> list[list[float]]:
        assert self.text is not None
        return (await asyncio.to_thread(charged_batch, self.text.score_texts, texts,
                                        MODERATION_TEXT, self.text.version)).tolist()

    async def _score_image_batch(self, images: list[bytes]) -> list[float | str]:
        scores = await asyncio.to_thread(charged_batch, self.image.score_images, images,
                                         MODERATION_IMAGE, self.image.version)
        return [s if isinstance(s, float) else str(s) for s in scores]


def charged_batch(fn: Callable[[list[Any]], Any], items: list[Any], stage: str,
                  version: str) -> Any:
    """`fn(items)`, its CPU charged to the `moderate` route (docs/cost.md): this thread's
    clock, since the models run on the calling thread (`intra_op_threads` 1, the default).
    Each item's share is the batch's CPU over its items; every item of a batch carries the
    same labels, so the shares are charged as their sum. The requests were counted by the
    ingress; this process does not know their rollout variants (the label is empty), and
    the model label, the head's bundle version, says which head ran."""
    if not recording():
        return fn(items)
    t0 = time.thread_time()
    try:
        return fn(items)
    finally:
        metrics.observe_cost("moderate", "", {(stage, version): time.thread_time() - t0},
                             count=False)
