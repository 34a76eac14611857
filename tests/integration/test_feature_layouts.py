"""Two bundles whose rankers take different dense features, served side by side: each
ranker version gets the inputs its own bundle lists (features/transform.json and the
manifest), on Triton, as primary and canary of one app, with nothing degraded."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from funnel.contracts.model_io import RANKER_DENSE
from tests.integration.conftest import FUNNEL, Stack

pytestmark = pytest.mark.integration
SUBSET = ["retrieval_score", "post_ctr", "user_topic_ctr", "follows_author", "text_affinity"]


@pytest.fixture(scope="module")
def subset_version(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny bundle trained with five of the dense features, beside the stack's bundle."""
    work = tmp_path_factory.mktemp("subset")
    cfg = yaml.safe_load((Path(__file__).parents[2] / "training/configs/tiny.yaml")
                         .read_text())
    cfg["ranker_dense_features"] = SUBSET
    # the layout is under test, not the models' quality (the rollout below allows a
    # regression): one trial per model and few epochs keep this training short
    for stage, epochs in (("retrieval", 2), ("ranker", 2), ("moderation", 3)):
        cfg[stage].update(num_samples=1, max_epochs=epochs, grace_period=1)
    (work / "tiny-subset.yaml").write_text(yaml.safe_dump(cfg))
    out = work / "artifacts"
    r = subprocess.run([*FUNNEL, "train", "--profile", "tiny", "--config",
                        str(work / "tiny-subset.yaml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: the gate failed; the bundle exists
    built = (out / "latest").resolve()
    dst = Path(stack.bundle).resolve().parent / built.name
    if not dst.exists():
        shutil.copytree(built, dst)
    return built.name


def test_rankers_with_different_dense_features_serve_as_primary_and_canary(
        stack: Stack, subset_version: str) -> None:
    src = Path(stack.bundle).resolve()
    primary = json.loads((src / "manifest.json").read_text())
    canary = json.loads((src.parent / subset_version / "manifest.json").read_text())
    assert primary["models"]["ranker"]["dense_features"] == list(RANKER_DENSE)
    assert canary["models"]["ranker"]["dense_features"] == SUBSET
    assert json.loads((src.parent / subset_version / "features/transform.json").read_text())[
        "dense_features"] == SUBSET
    users = pd.read_parquet(src / "catalog" / "users.parquet")["user_id"].head(60).tolist()
    config = {"allow_regression": True, "stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": primary["version"], "weight": 50},
        {"name": "candidate", "bundle_version": subset_version, "weight": 50}]}}}
    admin = {"authorization": f"Bearer {stack.admin_token}"}
    with httpx.Client(timeout=120) as c:
        r = c.put(f"{stack.url}/v1/admin/rollout", json=config, headers=admin)
        assert r.status_code == 200, r.text
        try:
            served: dict[str, int] = {}
            for u in users:
                b = c.post(f"{stack.url}/v1/feed", json={"user_id": int(u), "limit": 10})
                assert b.status_code == 200, b.text
                body = b.json()
                assert body["degraded"] == [], body
                assert len(body["items"]) == 10
                version = body["model_versions"]["ranker"]
                served[version] = served.get(version, 0) + 1
            assert set(served) == {primary["version"], subset_version}, served
        finally:
            r = c.put(f"{stack.url}/v1/admin/rollout", json={}, headers=admin)
            assert r.status_code == 200, r.text
