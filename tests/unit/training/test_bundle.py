from __future__ import annotations

import json
from pathlib import Path

import pytest

from funnel.contracts.bundle import (
    REQUIRED_FILES,
    get_metric,
    point_latest,
    verify_bundle,
    write_manifest,
)
from funnel.contracts.errors import BundleError


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts" / "v1"
    for rel in REQUIRED_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    write_manifest(root, {"version": "v1", "metrics": {"ranker": {"ndcg_at_10": 0.5}}})
    point_latest(root.parent, root)
    return root


def test_verified_bundle_resolves_latest(bundle: Path) -> None:
    b = verify_bundle(bundle.parent)
    assert b.version == "v1"
    assert get_metric(b.manifest, "metrics.ranker.ndcg_at_10") == 0.5


def test_tampered_file_is_named(bundle: Path) -> None:
    (bundle / "index/items.faiss").write_bytes(b"evil")
    with pytest.raises(BundleError, match=r"index/items\.faiss: checksum mismatch"):
        verify_bundle(bundle)


def test_missing_file_is_named(bundle: Path) -> None:
    (bundle / "models/user_tower.pt").unlink()
    with pytest.raises(BundleError, match=r"models/user_tower\.pt: missing"):
        verify_bundle(bundle)


def test_path_escape_is_refused(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["../outside"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="escapes the bundle"):
        verify_bundle(bundle)


def test_garbled_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        verify_bundle(bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not a bundle"):
        verify_bundle(tmp_path)


def test_moderation_bundle_kind(tmp_path: Path) -> None:
    """A moderation bundle needs its text model and tokenizer, not the feed's files; an
    unknown kind is refused by name."""
    from funnel.contracts.bundle import MODERATION_REQUIRED_FILES

    root = tmp_path / "m1"
    for rel in MODERATION_REQUIRED_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    write_manifest(root, {"version": "m1", "kind": "moderation"})
    assert verify_bundle(root).manifest["kind"] == "moderation"
    (root / "models/tokenizer.json").unlink()
    write_manifest(root, {"version": "m1", "kind": "moderation"})
    with pytest.raises(BundleError, match=r"models/tokenizer\.json"):
        verify_bundle(root)
    write_manifest(root, {"version": "m1", "kind": "recipes"})
    with pytest.raises(BundleError, match="kind 'recipes'"):
        verify_bundle(root)
