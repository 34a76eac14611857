"""Build a `FeedPipeline` from app args: verify the bundle, load catalog, features, index."""

from __future__ import annotations

import logging
import time

from funnel.contracts.bundle import VerifiedBundle, verify_bundle
from funnel.contracts.errors import BundleError
from funnel.contracts.model_io import TASKS
from serve.catalog import Catalog
from serve.config import AppArgs
from serve.pipeline import FeedPipeline
from serve.ranker.client import LocalRanker, Ranker, make_ranker
from serve.retrieval import TwoTowerRetrieval
from serve.sources import SOURCES
from training.calibration import CALIBRATION_FILE, Calibration
from training.features import FeatureTransform

log = logging.getLogger("funnel.serve")


def limit_threads(n: int) -> None:
    """Cap torch's and the BLAS libraries' thread pools for this process."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def load_parts(args: AppArgs) -> tuple[VerifiedBundle, Catalog, TwoTowerRetrieval]:
    started = time.time()
    limit_threads(args.feed.intra_op_threads)
    b = verify_bundle(args.bundle)
    if "catalog" not in b.manifest.get("models", {}):
        raise BundleError(f"{b.path}: bundle {b.version} has no serving catalog (catalog/); "
                          "train it again with this version of funnel")
    features = FeatureTransform.load(b.file("features/transform.json").parent)
    catalog = Catalog(b.file("catalog/catalog.json").parent,
                      trending_half_life_h=args.feed.trending_half_life_h)
    retrieval = TwoTowerRetrieval(b, features, ef_search=args.feed.ann_ef_search)
    log.info("bundle %s loaded in %.1fs: %d items, %d users", b.version,
             time.time() - started, len(catalog.post_ids), len(catalog.user_ids))
    return b, catalog, retrieval


def load_calibration(b: VerifiedBundle) -> Calibration | None:
    """The bundle's ranker calibration (checksummed with the rest), or None for a bundle
    written before calibration existed: its probabilities are served uncalibrated."""
    if CALIBRATION_FILE not in b.manifest["files"]:
        log.warning("bundle %s has no %s: its ranker serves uncalibrated probabilities",
                    b.version, CALIBRATION_FILE)
        return None
    try:
        return Calibration.load(b.file(CALIBRATION_FILE), tasks=TASKS)
    except ValueError as e:
        raise BundleError(f"{b.path}: bundle {b.version}: {e}") from e


def load_pipeline(args: AppArgs, *, ranker: Ranker | None = None
                  ) -> tuple[FeedPipeline, dict[str, str]]:
    """The pipeline and the model versions it serves. `ranker` defaults to the configured
    backend (`args.feed.ranker.backend`: Triton at `args.feed.ranker.url`, or in-process)."""
    b, catalog, retrieval = load_parts(args)
    r = args.feed.ranker
    if ranker is None:
        ranker = make_ranker(r, bundle=b.path, model_name=r.model_name)
    sources = {name: SOURCES[name](catalog, retrieval) for name in args.feed.sources}
    pipeline = FeedPipeline(catalog=catalog, retrieval=retrieval, ranker=ranker,
                            sources=sources, settings=args.feed,
                            calibration=load_calibration(b), version=b.version)
    versions = {"bundle": b.version, "retrieval": b.version, "ranker": b.version}
    return pipeline, versions


def local_ranker(args: AppArgs) -> LocalRanker:
    b = verify_bundle(args.bundle)
    return LocalRanker(str(b.file(b.manifest["models"]["ranker"]["path"])))
