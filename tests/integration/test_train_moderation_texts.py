"""`funnel train moderation --texts` as a user runs it: a CSV of only text and label
columns, the moderation bundle, its served scores, thresholds from it, and a serving bundle
with its moderation component replaced (`--base`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.integration.conftest import FUNNEL

pytestmark = pytest.mark.integration

SMALL = {  # the shipped config's shape, a few minutes of CPU: one trial each, 1 epoch
    "seed": 0, "max_length": 48, "split": {"val_fraction": 0.15, "test_fraction": 0.2},
    "resources": {"num_workers": 1, "cpus_per_worker": 1.9, "use_gpu": "false",
                  "max_concurrent_trials": 1},
    "finetune_layers": 1, "quantize": True, "serve_quantized": False,
    "reference_sample_rows": 100,
    "frozen": {"num_samples": 1, "max_epochs": 3, "grace_period": 1,
               "params": {"lr": 0.003, "batch_size": 64, "hidden": 32, "dropout": 0.1,
                          "loss": "weighted_bce", "focal_gamma": 2.0, "weight_decay": 0.0}},
    "finetune": {"num_samples": 1, "max_epochs": 1, "grace_period": 1,
                 "params": {"lr": 0.0002, "batch_size": 32, "loss": "weighted_bce",
                            "focal_gamma": 2.0, "weight_decay": 0.01, "dropout": 0.1}},
}


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated posts' text and two labels: a file with nothing but text and labels."""
    from training.data.synthetic import generate

    posts = generate("tiny", seed=3).posts
    harmful = posts[posts["label_hate"] | posts["label_abuse"]]
    benign = posts[~(posts["label_hate"] | posts["label_abuse"])].sample(
        min(800, len(posts)), random_state=0)
    frame = pd.concat([harmful, benign])
    out = tmp_path_factory.mktemp("texts") / "labelled.csv"
    pd.DataFrame({"text": frame["text"], "hate": frame["label_hate"].astype(int),
                  "abuse": frame["label_abuse"].astype(int)}).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def trained(texts_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("modtrain")
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    r = subprocess.run([*FUNNEL, "train", "moderation", "--texts", str(texts_csv),
                        "--config", str(cfg), "--out", str(tmp / "out")],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp / "out" / "latest", r.stdout + r.stderr


def test_moderation_bundle_from_text_and_labels_only(trained: tuple[Path, str],
                                                     texts_csv: Path) -> None:
    from funnel.contracts.bundle import verify_bundle

    path, output = trained
    b = verify_bundle(path)
    assert b.manifest["kind"] == "moderation"
    spec = b.manifest["models"]["moderation"]
    assert spec["kind"] == "finetuned" and spec["labels"] == ["hate", "abuse"]
    for rel in (spec["path"], spec["tokenizer"], spec["heldout"], spec["curves"],
                "reference/moderation.parquet"):
        assert rel in b.manifest["files"]  # checksummed
    m = b.manifest["metrics"]["moderation"]
    for side in ("finetuned", "frozen", "int8"):
        assert set(m[side]["per_label"]) == {"hate", "abuse"}
        assert 0.0 <= m[side]["pr_auc_macro"] <= 1.0
    assert m["tuning"]["finetune"]["trials"] == 1 and m["tuning"]["frozen"]["trials"] == 1
    heldout = pd.read_parquet(b.path / spec["heldout"])
    assert set(heldout["split"]) == {"val", "test"}
    assert not any(c.lower() in ("text", "tweet") for c in heldout.columns)  # scores only
    curves = json.loads((b.path / spec["curves"]).read_text())["curves"]
    assert set(curves) == {"hate", "abuse"}
    assert "finetuned" in output and "frozen" in output  # the side-by-side summary


def test_served_scores_are_the_evaluated_ones(trained: tuple[Path, str],
                                              texts_csv: Path, tmp_path: Path) -> None:
    """The moderation server's model class on the bundle gives the scores the held-out
    file records for the same test texts (the split is seeded: recomputed here). In a
    process of its own: kserve and tritonclient cannot share one."""
    from training.data.texts import load_labelled_texts

    path, _ = trained
    data = load_labelled_texts(texts_csv, val_fraction=0.15, test_fraction=0.2, seed=0)
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([str(t) for t in data.texts[data.part("test")]][:40]))
    code = ("import json, sys; sys.argv = sys.argv[:1]\n"
            "from serve.moderation.models import TextModerationModel\n"
            f"m = TextModerationModel(bundle={str(path)!r}, intra_op_threads=2); m.load()\n"
            f"t = json.load(open({str(texts)!r}))\n"
            "print(json.dumps({'labels': list(m.labels), 'encoder': m.encoder is None, "
            "'scores': m.score_texts(t).tolist()}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["labels"] == ["hate", "abuse"] and out["encoder"]  # its own encoder
    heldout = pd.read_parquet(path / "moderation/heldout.parquet")
    want = heldout[heldout["split"] == "test"][["score_hate", "score_abuse"]].to_numpy()[:40]
    np.testing.assert_allclose(np.asarray(out["scores"]), want, atol=1e-4)


def test_thresholds_policy_from_the_bundle(trained: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = trained
    out = tmp_path / "policy.yaml"
    r = subprocess.run([*FUNNEL, "moderation", "thresholds", "--bundle", str(path), "--out",
                        str(out), "--target-recall", "0.8"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    from serve.moderation.policy import load_policy

    policy = load_policy(out, labels=("hate", "abuse"))
    assert "nudity" in policy.thresholds  # kept from the shipped policy
    assert "# hate: recall val" in out.read_text()


def test_base_bundle_gets_the_fine_tuned_moderation(texts_csv: Path, tiny_bundle: Path,
                                                    tmp_path: Path) -> None:
    """--base: a new serving bundle, every non-moderation file byte-identical to the
    base's, the moderation component replaced; the dataset's labels are the file's."""
    import shutil

    from funnel.contracts.bundle import verify_bundle

    root = tmp_path / "bundles"
    base_copy = root / verify_bundle(tiny_bundle).version
    shutil.copytree(tiny_bundle.resolve(), base_copy)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    r = subprocess.run([*FUNNEL, "train", "moderation", "--texts", str(texts_csv),
                        "--config", str(cfg), "--base", str(base_copy)],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    base, new = verify_bundle(base_copy), verify_bundle(root / "latest")
    assert new.version != base.version and new.manifest.get("kind", "serving") == "serving"
    assert new.manifest["models"]["moderation"]["kind"] == "finetuned"
    assert new.manifest["lineage"]["moderation"]["base_version"] == base.version
    for rel, digest in base.manifest["files"].items():
        if rel.startswith(("models/moderation", "reference/moderation")):
            continue
        assert new.manifest["files"][rel] == digest, rel
    assert "models/moderation_head.pt" not in new.manifest["files"]


def test_bad_input_exits_2_naming_it(texts_csv: Path, tmp_path: Path) -> None:
    for args, message in (
            (["--texts", str(tmp_path / "missing.csv")], "no such file"),
            (["--texts", str(texts_csv), "--label", "hate=class:0"], "no column 'class'"),
            (["--texts", str(texts_csv), "--text-column", "body"], "no text column 'body'")):
        r = subprocess.run([*FUNNEL, "train", "moderation", *args, "--out",
                            str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert message in r.stderr and "Traceback" not in r.stderr
