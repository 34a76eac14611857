"""The Davidson tweets are real, toxic text: training and the quality benchmark must not put
any of it in their output or their files (logs, Ray's logs, trial results, the bundle).

Runs `funnel train moderation` and `funnel bench moderation-quality` on a seeded sample of
the shared data set, then searches everything they printed and wrote for a sample of the
tweets. Skipped where the shared data set is not present."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.integration.conftest import FUNNEL
from tests.integration.test_train_moderation_texts import SMALL

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/davidson-2017/labeled_data.csv"
RAY_TMP = Path("/tmp/ray")


def _needles(tweets: pd.Series, n: int = 300) -> list[bytes]:
    """Distinctive pieces of the trained-on tweets: 32 characters from the middle of longer
    ones, raw and as JSON would escape them."""
    tweets = tweets.astype(str)
    long = tweets[tweets.str.len() >= 60]
    long = long.sample(min(n, len(long)), random_state=11)
    out: set[bytes] = set()
    for t in long:
        piece = t[20:52]
        out.add(piece.encode())
        out.add(json.dumps(piece)[1:-1].encode())
    return sorted(out)


def _files(roots: list[Path], skip: set[Path]) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*")
            if p.is_file() and p.resolve() not in skip and not p.is_symlink()]


@pytest.mark.skipif(not DATA.is_file(), reason="the shared Davidson data set is not here")
def test_training_and_benchmark_write_no_tweet(tmp_path: Path) -> None:
    sample = tmp_path / "input" / "sample.csv"  # the input itself is not searched
    sample.parent.mkdir()
    rows = pd.read_csv(DATA).sample(500, random_state=5)
    rows.to_csv(sample, index=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    sessions_before = set(RAY_TMP.glob("session_*")) if RAY_TMP.exists() else set()
    outputs: list[str] = []
    for args in (["train", "moderation", "--texts", str(sample), "--text-column", "tweet",
                  "--label", "hate=class:0", "--label", "abuse=class:0,1", "--config",
                  str(cfg), "--out", str(tmp_path / "train")],
                 ["bench", "moderation-quality", "--data", str(DATA), "--rows", "500",
                  "--config", str(cfg), "--work-dir", str(tmp_path / "bench"), "--out",
                  str(tmp_path / "bench.json")]):
        r = subprocess.run([*FUNNEL, *args], capture_output=True, text=True, timeout=900,
                           check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        outputs += [r.stdout, r.stderr]
    new_sessions = sorted(set(RAY_TMP.glob("session_*")) - sessions_before)
    files = _files([tmp_path / "train", tmp_path / "bench", tmp_path / "bench.json",
                    *new_sessions], skip={sample.resolve()})
    assert any(p.suffix in (".log", ".out", ".err") for p in files)  # Ray's logs searched
    assert any(p.name == "heldout.parquet" for p in files)
    needles = _needles(rows["tweet"])
    control = sample.read_bytes()  # the search finds the text where it is (counts only:
    hits_in_input = sum(n in control for n in needles)  # an assertion shows no needle)
    assert hits_in_input >= 100
    blobs = [("output", "\n".join(outputs).encode())]
    blobs += [(str(p), p.read_bytes()) for p in files if p.stat().st_size < 200 << 20]
    found = sorted({where for where, blob in blobs if any(n in blob for n in needles)})
    assert not found, f"tweet text found in: {found[:10]}"  # names the file, never the text
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["split_seed"] and result["finetuned"]["texts_per_s"] > 0
