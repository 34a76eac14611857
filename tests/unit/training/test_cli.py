"""The CLI's bad-input contract: one clear line naming the field or file, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _funnel(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from funnel.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_data_generate_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = _funnel("data", "generate", "--profile", "tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "impressions.parquet").is_file()
    r = _funnel("data", "validate", str(out))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("train", "--dataset", "/no/such/dir"), "neither 'synthetic'"),
    (("train", "--gpu", "maybe"), "'maybe' is not one of 'auto',"),
    (("data", "validate", "/no/such/dir"), "does not exist"),
    (("bundle-verify", "/no/such/bundle"), "not a bundle"),
    (("data", "generate", "--profile", "huge"), "huge"),
    (("train", "--registry", "/tmp/reg"), "--push"),
    (("bundle", "show", "v-nope", "--registry", "s3://bucket/x"), "--registry-db"),
    (("bundle", "list", "--status", "live"), "--status"),
])
def test_bad_input_exits_2_without_traceback(args: tuple[str, ...], expected: str) -> None:
    r = _funnel(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 0\nretrieval: {num_samples: 1}\nbogus: 1\n")
    r = _funnel("train", "--config", str(cfg), "--out", str(tmp_path / "a"))
    assert r.returncode == 2
    assert "bogus: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_schema_violation_exits_2(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    (d / "users.csv").write_text("user_id\n1\n")
    (d / "follows.csv").write_text("follower_id,followee_id\n")
    (d / "posts.csv").write_text("post_id,author_id,created_at\n1,1,2026-01-01T00:00:00\n")
    (d / "impressions.csv").write_text("user_id,post_id,timestamp,click\n")
    r = _funnel("train", "--dataset", str(d), "--out", str(tmp_path / "a"))
    assert r.returncode == 2
    assert "required column 'topic' is missing" in r.stderr


def test_help_text_reflows_instead_of_breaking_mid_sentence() -> None:
    import os

    r = subprocess.run([sys.executable, "-m", "funnel", "serve", "--help"], capture_output=True,
                       text=True, timeout=120, check=False,
                       env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    one_line = ("HTTP on the config's http_options (127.0.0.1:8000 in the shipped config); "
                "Triton on args.triton's ports.")
    assert any(one_line in line for line in r.stdout.splitlines()), r.stdout
