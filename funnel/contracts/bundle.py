"""The artifact bundle: the contract that serving and monitoring read.

Layout of `artifacts/<version>/`:

    manifest.json                 version, created_at, dataset, config, lineage, metrics,
                                  files: {relative path: sha256}
    models/user_tower.pt          TorchScript
    models/item_tower.pt          TorchScript
    models/moderation_head.pt     TorchScript (absent when the dataset has no harm labels)
    models/calibration.json       per task head, the ranker's calibrator (temperature or
                                  isotonic knots; see training.calibration). Optional:
                                  bundles written before it existed serve uncalibrated
    triton/ranker/config.pbtxt    Triton model config (dynamic batching)
    triton/ranker/1/model.pt      the ranker, TorchScript
    index/items.faiss             faiss HNSW (inner product) over item embeddings
    index/item_ids.npy            faiss row -> post_id
    features/                     the fitted FeatureTransform (JSON, parquet, safetensors)
    reference/sample.parquet      reference rows for drift monitors
    reference/stats.json          per-column reference statistics
    reference/moderation.parquet  the moderation head's score_<label> on held-out texts
                                  (optional: absent without harm labels, and in bundles
                                  written before it existed)

Nothing in a bundle is a pickle. `verify_bundle` recomputes every checksum before a loader
touches a file and refuses the bundle, naming the file, on the first mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funnel.contracts.errors import BundleError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_FILES = (
    "models/user_tower.pt", "models/item_tower.pt", "triton/ranker/config.pbtxt",
    "triton/ranker/1/model.pt", "index/items.faiss", "index/item_ids.npy",
    "features/transform.json", "reference/sample.parquet", "reference/stats.json",
)
# A moderation bundle (`funnel train moderation --texts`, manifest `kind: moderation`) holds
# the moderation text model alone: servable by the moderation endpoints, not by the feed.
BUNDLE_KINDS = ("serving", "moderation")
MODERATION_REQUIRED_FILES = ("models/moderation_text.pt", "models/tokenizer.json")
# Files a bundle may lack; like every file the manifest lists, checksummed when present.
OPTIONAL_FILES = ("models/moderation_head.pt", "reference/moderation.parquet",
                  "models/calibration.json")


_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_version(version: str) -> str:
    """`version` if it can name a bundle: a directory name and an object-store key segment
    (letters, digits, '.', '_', '-'; not '.' or '..'). BundleError otherwise."""
    if not isinstance(version, str) or not _VERSION.match(version) or version in (".", ".."):
        raise BundleError(f"bad bundle version {version!r}: letters, digits, '.', '_', '-'")
    return version


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under `bundle_dir` and write manifest.json."""
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel != MANIFEST:
            files[rel] = sha256_file(path)
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": files}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose every file matched its checksum when it was verified."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def file(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.path}: bundle has no file {rel!r}")
        return self.path / rel


def resolve_bundle(path: str | Path) -> Path:
    """`artifacts/` (uses its `latest`), `artifacts/latest` or a version directory."""
    p = Path(path)
    if (p / "latest").exists() and not (p / MANIFEST).exists():
        p = p / "latest"
    return p.resolve()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest alone, checksums not verified: for reading settings (labels, versions)
    before the component that loads the files verifies them."""
    root = resolve_bundle(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{mpath}: manifest has no 'files' mapping")
    return manifest


def verify_bundle(path: str | Path) -> VerifiedBundle:
    """Verify manifest and checksums; raise BundleError naming the first bad file."""
    root = resolve_bundle(path)
    mpath = root / MANIFEST
    manifest = read_manifest(root)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {manifest.get('format_version')!r} is not "
                          f"supported; this Funnel reads {FORMAT_VERSION}")
    kind = manifest.get("kind", "serving")
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"{mpath}: kind {kind!r} is not one of {list(BUNDLE_KINDS)}")
    required = REQUIRED_FILES if kind == "serving" else MODERATION_REQUIRED_FILES
    missing = [f for f in required if f not in manifest["files"]]
    if missing:
        raise BundleError(f"{mpath}: manifest lists no {missing[0]!r}, a required file")
    for rel, digest in manifest["files"].items():
        fpath = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{mpath}: file path {rel!r} escapes the bundle")
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing (listed in the manifest)")
        actual = sha256_file(fpath)
        if actual != digest:
            raise BundleError(f"{fpath}: checksum mismatch (manifest sha256 {digest[:12]}…, "
                              f"file {actual[:12]}…); refusing the bundle")
    return VerifiedBundle(path=root, manifest=manifest)


def point_latest(artifacts_dir: Path, version_dir: Path) -> Path:
    """Atomically point `artifacts/latest` at `version_dir` (a relative symlink)."""
    link = artifacts_dir / "latest"
    tmp = artifacts_dir / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version_dir.name, tmp)
    os.replace(tmp, link)
    return link


def get_metric(manifest: dict[str, Any], dotted: str) -> Any:
    """`get_metric(m, "metrics.ranker.ndcg_at_10")` -> value, or KeyError naming the key."""
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node
