"""The registry's S3 path against a real S3 API server: moto's standalone server as its own
process on loopback (conftest.s3_registry), reached through s3fs exactly as in production
(the endpoint from FUNNEL_REGISTRY_S3_ENDPOINT_URL, credentials from the AWS variables)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from funnel.contracts.errors import BundleError
from funnel.registry import ObjectStore, Registry, RegistryIndex
from tests.integration.conftest import S3Registry
from tests.unit.registry.test_registry import make_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(s3_registry: S3Registry, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket of its own on the session's S3 API server (conftest.s3_registry), with the
    environment s3fs reads."""
    for k, v in s3_registry.env.items():
        monkeypatch.setenv(k, v)
    bucket = f"models-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    store = ObjectStore(f"s3://{bucket}")
    store.fs.mkdir(bucket)
    return f"s3://{bucket}/funnel"


def test_push_pull_verify_and_a_corrupt_object_on_s3(s3_env: str, tmp_path: Path) -> None:
    reg = Registry(ObjectStore(s3_env), RegistryIndex(f"sqlite:///{tmp_path / 'i.sqlite3'}"))
    try:
        src = make_bundle(tmp_path / "src", "v1")
        rec = reg.push(src, actor="ci")
        assert rec.status == "staged"
        # the objects are in the bucket, under bundles/<version>/
        keys = reg.store.fs.find(reg.store.key("v1"))
        assert len(keys) == len(rec.files) and any(k.endswith("manifest.json") for k in keys)
        b = reg.pull("v1", tmp_path / "cache")
        assert (b.path / "index/items.faiss").read_bytes() == \
            (src / "index/items.faiss").read_bytes()
        assert reg.verify("v1").ok

        # one byte changed in the store: pull refuses, naming the file; verify names it too
        key = reg.store.key("v1", "index/item_ids.npy")
        data = bytearray(reg.store.fs.cat_file(key))
        data[0] ^= 1
        reg.store.fs.pipe_file(key, bytes(data))
        with pytest.raises(BundleError, match=r"index/item_ids\.npy"):
            reg.pull("v1", tmp_path / "cache2")
        assert not (tmp_path / "cache2" / "v1").exists()
        report = reg.verify("v1")
        assert not report.ok and report.bad[0].startswith("index/item_ids.npy")
    finally:
        reg.close()


def test_the_cli_against_s3(s3_env: str, tmp_path: Path) -> None:
    from funnel.cli import app

    db = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    src = make_bundle(tmp_path / "src", "v2")
    runner = CliRunner()
    args = ["--registry", s3_env, "--registry-db", db]
    r = runner.invoke(app, ["bundle", "push", str(src), *args])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["bundle", "pull", "v2", "--cache", str(tmp_path / "c"), *args])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "v2" / "manifest.json").is_file()
    r = runner.invoke(app, ["bundle", "verify", "v2", *args])
    assert r.exit_code == 0, r.output


def test_train_push_registered_the_sessions_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """The session's bundle was trained with `funnel train --push` (conftest): the registry
    holds it, with the command that trained it, the dataset's fingerprint, the manifest's
    metrics and every file's checksum, and it pulls back byte for byte."""
    from funnel.contracts.bundle import read_manifest

    store = tiny_bundle.resolve().parent / "registry"
    if not store.is_dir():
        pytest.skip("FUNNEL_TEST_BUNDLE names a bundle trained without --push")
    manifest = read_manifest(tiny_bundle)
    reg = Registry.open(str(store))
    try:
        rec = reg.show(manifest["version"])
        assert rec.status == "staged"
        assert rec.trained_by is not None and "train --profile tiny" in rec.trained_by
        assert rec.dataset_fingerprint == manifest["dataset"]["fingerprint"]
        assert len(rec.dataset_fingerprint or "") == 64
        assert rec.metrics == manifest["metrics"]
        assert {f.path: f.sha256 for f in rec.files if f.path != "manifest.json"} == \
            manifest["files"]
        b = reg.pull(rec.version, tmp_path / "cache")
        assert b.manifest == manifest
    finally:
        reg.close()
