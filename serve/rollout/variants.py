"""Bundle versions side by side in one ingress replica.

The primary bundle is the one the pipeline was built from. Any other version a rollout names
is loaded from the bundle root (the directory holding the versions, `artifacts/`; pulled
into it from the model registry first when one is configured: serve/bundles.py), checksums
verified first: its retrieval (user tower, faiss index), and its ranker, which is served by
Triton as a model of its own (`ranker-<version>`, loaded by the rollout controller), fed
by that bundle's own feature transform and calibrated by that bundle's own calibration (a
version without one serves uncalibrated probabilities). A variant with a `fault` wraps the
loaded model.
Loaded versions are cached; `retain` drops those no config names any more.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from funnel.contracts.bundle import verify_bundle
from serve.bundles import BundleVersions
from serve.loader import load_calibration
from serve.pipeline import FeedPipeline, RankerModel
from serve.ranker.client import Ranker
from serve.retrieval import TwoTowerRetrieval
from serve.rollout.faults import FaultyRanker, FaultyRetrieval
from serve.rollout.router import Assignment
from training.calibration import Calibration
from training.features import FeatureTransform

log = logging.getLogger("funnel.rollout")
FaultKey = tuple[tuple[str, float], ...] | None


def ranker_model_name(version: str, primary_version: str, base: str = "ranker") -> str:
    """Triton model name serving a ranker version (the primary keeps the plain name)."""
    return base if version == primary_version else f"{base}-{version}"


def features_fingerprint(manifest: dict[str, Any]) -> str:
    """One digest of a bundle's fitted feature files (their manifest checksums)."""
    import hashlib

    files = sorted((k, v) for k, v in manifest.get("files", {}).items()
                   if k.startswith("features/"))
    return hashlib.sha256(repr(files).encode()).hexdigest()


class Variants:
    """Loaded retrievals and rankers by (bundle version, fault)."""

    def __init__(self, pipeline: FeedPipeline, *, primary_version: str,
                 bundles: BundleVersions,
                 make_ranker: Callable[[str, Path], Ranker], ef_search: int | None = None,
                 rng: random.Random | None = None, primary_fingerprint: str = "") -> None:
        self._pipeline = pipeline
        self.primary_version = primary_version
        self.bundles = bundles
        self._make_ranker = make_ranker
        self._ef = ef_search
        self._rng = rng or random.Random()
        self._features: dict[str, FeatureTransform] = {primary_version: pipeline.features}
        # loaded with the features (one verified bundle), kept and dropped with them
        self._calibrations: dict[str, Calibration | None] = {
            primary_version: pipeline.primary_models.ranker.calibration}
        self._fingerprints: dict[str, str] = {}
        if primary_fingerprint:
            self._fingerprints[primary_version] = primary_fingerprint
        self._retrieval: dict[tuple[str, FaultKey], Any] = {
            (primary_version, None): pipeline.retrieval}
        self._rankers: dict[tuple[str, FaultKey], RankerModel] = {
            (primary_version, None): pipeline.primary_models.ranker}

    def _bundle_parts(self, version: str) -> tuple[FeatureTransform, Any]:
        if version in self._features:
            return self._features[version], None
        b = verify_bundle(self.bundles.path(version))
        fp = features_fingerprint(b.manifest)
        same = [v for v, f in self._features.items() if self._fingerprints.get(v) == fp]
        # the same fitted features (by checksum): one object, so a shadow reuses the
        # primary's ranker inputs instead of building them again
        features = self._features[same[0]] if same else FeatureTransform.load(
            b.file("features/transform.json").parent)
        self._features[version] = features
        self._fingerprints[version] = fp
        self._calibrations[version] = load_calibration(b)
        self._pipeline.prepare(features=features)  # here, in the loading thread
        log.info("rollout: bundle %s verified and its features loaded", version)
        return features, b

    def load_retrieval(self, version: str, fault: FaultKey) -> None:
        if (version, fault) in self._retrieval:
            return
        base = self._retrieval.get((version, None))
        if base is None:
            features, b = self._bundle_parts(version)
            if b is None:
                b = verify_bundle(self.bundles.path(version))
            base = TwoTowerRetrieval(b, features, ef_search=self._ef)
            self._pipeline.prepare(retrieval=base)
            self._retrieval[(version, None)] = base
        if fault is not None:
            self._retrieval[(version, fault)] = FaultyRetrieval(base, rng=self._rng,
                                                                **dict(fault))

    def load_ranker(self, version: str, fault: FaultKey) -> None:
        if (version, fault) in self._rankers:
            return
        base = self._rankers.get((version, None))
        if base is None:
            features, _ = self._bundle_parts(version)
            base = RankerModel(version, version, self._make_ranker(
                ranker_model_name(version, self.primary_version),
                self.bundles.path(version)), features, self._calibrations[version])
            self._rankers[(version, None)] = base
        if fault is not None:
            self._rankers[(version, fault)] = replace(
                base, ranker=FaultyRanker(base.ranker, rng=self._rng, **dict(fault)))

    def has(self, stage: str, key: tuple[str, FaultKey]) -> bool:
        """Whether the (version, fault) of `stage` is loaded here."""
        return key in (self._retrieval if stage == "retrieval" else self._rankers)

    def load(self, stage: str, keys: Iterable[tuple[str, FaultKey]]) -> None:
        for version, fault in keys:
            if stage == "retrieval":
                self.load_retrieval(version, fault)
            elif stage == "ranker":
                self.load_ranker(version, fault)

    def retrieval(self, a: Assignment | None) -> TwoTowerRetrieval:
        if a is None:
            return self._pipeline.retrieval
        r: TwoTowerRetrieval = self._retrieval[a.key]
        return r

    def ranker(self, a: Assignment | None) -> RankerModel:
        if a is None:
            return self._pipeline.primary_models.ranker
        m = self._rankers[a.key]
        return replace(m, name=a.variant, version=a.bundle_version)

    def retain(self, wanted: dict[str, set[tuple[str, FaultKey]]]) -> None:
        """Forget loaded versions no stage names any more (the primary stays)."""
        keep_r = wanted.get("retrieval", set()) | {(self.primary_version, None)}
        keep_k = wanted.get("ranker", set()) | {(self.primary_version, None)}
        keep_r |= {(v, None) for v, _ in keep_r}
        keep_k |= {(v, None) for v, _ in keep_k}
        self._retrieval = {k: v for k, v in self._retrieval.items() if k in keep_r}
        self._rankers = {k: v for k, v in self._rankers.items() if k in keep_k}
        versions = {v for v, _ in keep_r | keep_k}
        self._features = {k: v for k, v in self._features.items() if k in versions}
        self._calibrations = {k: v for k, v in self._calibrations.items() if k in versions}
        self._fingerprints = {k: v for k, v in self._fingerprints.items()
                              if k in versions}
