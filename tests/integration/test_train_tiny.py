"""`funnel train --profile tiny` end to end: real Ray Tune, Ray Train, faiss, MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from funnel.contracts.bundle import get_metric, verify_bundle
from funnel.contracts.errors import BundleError

pytestmark = pytest.mark.integration

REQUIRED_KEYS = (
    "metrics.retrieval.recall_at_50",
    "metrics.retrieval.baselines.popularity.recall_at_50",
    "metrics.ranker.ndcg_at_10",
    "metrics.ranker.baselines.retrieval_order.ndcg_at_10",
    "metrics.moderation.roc_auc_macro",
    "metrics.ann.recall_at_100_vs_exact",
)


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle: Path) -> Path:
    return tiny_bundle


def test_manifest_has_the_contract_keys(bundle_dir: Path) -> None:
    manifest = verify_bundle(bundle_dir).manifest
    for key in REQUIRED_KEYS:
        assert get_metric(manifest, key) is not None, key
    for key in ("version", "created_at", "dataset", "config", "lineage", "files"):
        assert key in manifest


def test_reviewer_labels_were_used_for_moderation(bundle_dir: Path) -> None:
    from tests.integration.conftest import REVIEWED

    m = verify_bundle(bundle_dir).manifest["metrics"]["moderation"]
    assert m["review_label_rows"] == len(REVIEWED)


def test_models_beat_their_baselines_on_held_out_data(bundle_dir: Path) -> None:
    m = verify_bundle(bundle_dir).manifest["metrics"]
    assert m["retrieval"]["recall_at_50"] > m["retrieval"]["baselines"]["popularity"][
        "recall_at_50"]
    assert m["ranker"]["ndcg_at_10"] > m["ranker"]["baselines"]["retrieval_order"]["ndcg_at_10"]
    assert m["moderation"]["roc_auc_macro"] > 0.8
    assert m["ann"]["recall_at_100_vs_exact"] >= 0.95


def test_the_manifest_keeps_the_quality_gates_verdicts(bundle_dir: Path) -> None:
    from training.quality import evaluate

    manifest = verify_bundle(bundle_dir).manifest
    gate = manifest["quality_gate"]
    assert gate == evaluate(manifest["metrics"])  # what `funnel train` printed and wrote
    assert gate["models"]["retrieval"]["verdict"] == "beats"
    assert gate["models"]["ranker"]["verdict"] == "beats"
    mod = gate["models"]["moderation"]
    assert mod["baseline"] == "tf-idf logreg" and mod["baseline_value"] is not None
    # the tiny profile has about a dozen harmful test texts: too few for a verdict
    assert mod["verdict"] == "insufficient data", mod
    assert gate["passed"] is True


def test_bundle_holds_no_pickle_and_loads_torchscript(bundle_dir: Path) -> None:
    import numpy as np
    import torch

    b = verify_bundle(bundle_dir)
    for rel in b.manifest["files"]:
        assert not rel.endswith((".pkl", ".pickle", ".joblib")), rel
    ids = np.load(b.file("index/item_ids.npy"), allow_pickle=False)
    ranker = torch.jit.load(str(b.file("triton/ranker/1/model.pt")))
    n = 3
    dense = torch.zeros(n, len(b.manifest["models"]["ranker"]["dense_features"]))
    ints = [torch.ones(n, dtype=torch.long) for _ in range(5)]
    assert ranker(dense, *ints).shape == (n, 5)
    assert len(ids) == b.manifest["dataset"]["posts"]
    cfg = b.file("triton/ranker/config.pbtxt").read_text()
    assert "dynamic_batching" in cfg


def test_each_ranker_head_is_better_calibrated_on_held_out_data(bundle_dir: Path) -> None:
    from funnel.contracts.model_io import TASKS
    from training.calibration import CALIBRATION_FILE, Calibration

    b = verify_bundle(bundle_dir)
    cal = Calibration.load(b.file(CALIBRATION_FILE), tasks=TASKS)
    report = b.manifest["metrics"]["ranker"]["calibration"]
    assert report["fit_split"] == "val" and report["eval_split"] == "test"
    for task in TASKS:
        m = report["tasks"][task]
        assert m["method"] == cal.method(task)
        assert m["ece_after"] < m["ece_before"], task
        assert sum(m["reliability_after"]["count"]) == m["rows"]


def test_corrupt_bundle_is_refused_by_name(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir.resolve(), copy)
    (copy / "features/transform.json").write_text(json.dumps({"tampered": True}))
    with pytest.raises(BundleError, match=r"features/transform\.json: checksum mismatch"):
        verify_bundle(copy)
    r = subprocess.run([sys.executable, "-c", "from funnel.cli import main; main()",
                        "bundle-verify", str(copy)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2
    assert "checksum mismatch" in r.stderr
