"""The model registry: bundle files in an object store, their metadata in a relational index
(docs/registry.md).

Lifecycle: `push` (staged) -> `promote` (serving, by stage and variant) -> `retire`. Rules:
- a version is immutable once pushed: a second push of it is refused;
- of concurrent pushes of one version, one wins; the others get a clear error;
- a push whose files do not match the bundle's manifest is refused, naming the file, before
  anything is written;
- a version that serves (by the index, or named by the live rollout config) cannot be
  retired;
- `pull` checks every byte it downloads against the index's checksum and moves the copy into
  place only when all of them match: a corrupt or partial download is never loaded.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from funnel.contracts.bundle import (
    MANIFEST,
    VerifiedBundle,
    check_version,
    sha256_file,
    verify_bundle,
)
from funnel.contracts.errors import BundleError, InvalidInputError, RegistryError
from funnel.registry.index import BundleRecord, FileRecord, RegistryIndex
from funnel.registry.store import ObjectStore

DEFAULT_STORE = "registry/objects"
DEFAULT_DATABASE = "sqlite:///registry/index.sqlite3"
STORE_ENV = "FUNNEL_REGISTRY_URL"
DATABASE_ENV = "FUNNEL_REGISTRY_DATABASE_URL"
# a push that claimed a version and died: another push may take the version over after this
STALE_PUSH = timedelta(hours=1)

Say = Callable[[str], None]


def default_actor() -> str:
    """Who is acting, for the audit: FUNNEL_ACTOR, else the login name."""
    return os.environ.get("FUNNEL_ACTOR") or getpass.getuser()


def registry_urls(store: str | None = None, database: str | None = None) -> tuple[str, str]:
    """(object store URL, index database URL): the arguments, else FUNNEL_REGISTRY_URL and
    FUNNEL_REGISTRY_DATABASE_URL, else a local `registry/` directory with an embedded SQLite
    index. A remote store needs its index named: a local SQLite file beside an s3:// store
    would be an index nobody else reads."""
    store = store or os.environ.get(STORE_ENV) or DEFAULT_STORE
    database = database or os.environ.get(DATABASE_ENV)
    if not database:
        if "://" in store and not store.startswith("file://"):
            raise InvalidInputError(
                f"--registry-db: the registry store {store!r} is remote; name its index with "
                f"--registry-db or {DATABASE_ENV} (e.g. postgresql://USER@HOST/DB)")
        database = DEFAULT_DATABASE if store == DEFAULT_STORE else \
            f"sqlite:///{Path(store.removeprefix('file://')) / 'index.sqlite3'}"
    return store, database


@dataclass(frozen=True)
class VerifyReport:
    version: str
    checked: int
    bad: tuple[str, ...]  # "path: why", one per file that failed

    @property
    def ok(self) -> bool:
        return not self.bad


class Registry:
    """Push, list, show, pull, verify, promote and retire bundle versions."""

    def __init__(self, store: ObjectStore, index: RegistryIndex, *,
                 stale_push: timedelta = STALE_PUSH) -> None:
        self.store = store
        self.index = index
        self._stale = stale_push

    @classmethod
    def open(cls, store_url: str | None = None, database_url: str | None = None
             ) -> Registry:
        s, d = registry_urls(store_url, database_url)
        return cls(ObjectStore(s), RegistryIndex(d))

    def close(self) -> None:
        self.index.close()

    # ---- push ------------------------------------------------------------------------------
    def push(self, bundle_dir: str | Path, *, actor: str | None = None,
             say: Say = lambda _m: None) -> BundleRecord:
        """Upload a local bundle and record it as `staged`. Raises BundleError (a file that
        does not match the manifest, named) before anything is written, and
        RegistryConflictError when the version exists or another push of it is running."""
        actor = actor or default_actor()
        claim = f"{actor}#{uuid.uuid4().hex[:8]}"  # this push, among the actor's others
        b = verify_bundle(bundle_dir)  # every file against the manifest, or refused
        version = check_version(b.version)  # a directory name and a key segment, nothing more
        manifest_bytes = (b.path / MANIFEST).read_bytes()
        records = [FileRecord(rel, digest, (b.path / rel).stat().st_size)
                   for rel, digest in sorted(b.manifest["files"].items())]
        records.append(FileRecord(MANIFEST, hashlib.sha256(manifest_bytes).hexdigest(),
                                  len(manifest_bytes)))
        self.index.claim(version, actor=claim, stale_after=self._stale)
        try:
            total = sum(r.size_bytes for r in records)
            done = 0
            # the manifest goes last: a store listing with a manifest has all of its files
            for r in sorted(records, key=lambda r: r.path == MANIFEST):
                self.store.upload(version, r.path, b.path / r.path)
                done += r.size_bytes
                say(f"pushed {r.path} ({r.size_bytes:,} B; {done / max(total, 1):.0%})")
            self.index.finish(version, actor=claim, manifest=b.manifest,
                              manifest_sha256=records[-1].sha256, file_records=records)
        except BaseException:
            self.index.abandon(version, actor=claim)
            self.store.remove(version)
            raise
        return self.index.get(version)

    # ---- reads -----------------------------------------------------------------------------
    def list(self, status: str | None = None) -> list[BundleRecord]:
        return self.index.versions(status=status)

    def show(self, version: str) -> BundleRecord:
        return self.index.get(version)

    # ---- pull ------------------------------------------------------------------------------
    def pull(self, version: str, cache_dir: str | Path, *,
             say: Say = lambda _m: None) -> VerifiedBundle:
        """The version as a local, verified bundle in `cache_dir/<version>`: downloaded when
        the cache lacks it, each file checked against the index's sha256 on the way, and
        moved into place only when every file matched. A cached copy is verified again.

        Raises:
            UnknownVersionError: the registry does not hold `version`.
            BundleError: a file's bytes do not match (the file is named); nothing is left
                in the cache.
            RegistryError: the store cannot be read.
        """
        rec = self.index.get(check_version(version))
        want = {f.path: f.sha256 for f in rec.files}
        cache = Path(cache_dir)
        final = cache / version
        if (final / MANIFEST).is_file():
            b = verify_bundle(final)
            if _files_with_manifest(b) == want:
                say(f"{version}: in the cache, verified")
                return b
            raise BundleError(f"{final}: the cached copy of {version} differs from the "
                              "registry's; remove it and pull again")
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{version}.partial-{uuid.uuid4().hex[:8]}"
        try:
            for k, f in enumerate(rec.files, 1):
                got = self.store.download(version, f.path, partial / f.path)
                if got != f.sha256:
                    raise BundleError(
                        f"bundle {version}: {f.path} from {self.store.url} does not match "
                        f"the registry's checksum (index sha256 {f.sha256[:12]}…, downloaded "
                        f"{got[:12]}…); refusing the download")
                say(f"pulled {f.path} ({k}/{len(rec.files)})")
            b = verify_bundle(partial)
            if _files_with_manifest(b) != want:
                raise BundleError(f"bundle {version}: its manifest lists other files than "
                                  "the registry; refusing the download")
            try:
                partial.rename(final)
            except OSError:
                if not (final / MANIFEST).is_file():  # not a concurrent pull that won
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return verify_bundle(final)

    # ---- verify ----------------------------------------------------------------------------
    def verify(self, version: str, *, actor: str | None = None,
               say: Say = lambda _m: None) -> VerifyReport:
        """Read every stored file of `version` back and compare it with the index's sha256.
        The outcome is recorded in the audit."""
        rec = self.index.get(version)
        bad: list[str] = []
        for f in rec.files:
            try:
                got = self.store.sha256(version, f.path)
            except RegistryError as e:
                bad.append(f"{f.path}: {e}")
                continue
            if got != f.sha256:
                bad.append(f"{f.path}: sha256 {got[:12]}…, the index has {f.sha256[:12]}…")
            say(f"{f.path}: {'ok' if got == f.sha256 else 'MISMATCH'}")
        report = VerifyReport(version, len(rec.files), tuple(bad))
        self.index.record(version, "verify", actor or default_actor(),
                          {"ok": report.ok, "checked": report.checked, "bad": list(bad)})
        return report

    # ---- lifecycle -------------------------------------------------------------------------
    def promote(self, version: str, *, stage: str = "all", variant: str = "primary",
                actor: str | None = None) -> BundleRecord:
        self.index.promote(version, stage=stage, variant=variant,
                           actor=actor or default_actor())
        return self.index.get(version)

    def retire(self, version: str, *, actor: str | None = None,
               in_use: Iterable[str] = ()) -> BundleRecord:
        self.index.retire(version, actor=actor or default_actor(), in_use=in_use)
        return self.index.get(version)


def _files_with_manifest(b: VerifiedBundle) -> dict[str, str]:
    files: dict[str, Any] = dict(b.manifest["files"])
    files[MANIFEST] = sha256_file(b.path / MANIFEST)
    return {str(k): str(v) for k, v in files.items()}


def record_json(rec: BundleRecord, *, files: bool = False) -> str:
    doc = rec.as_json()
    if not files:
        doc.pop("files")
    return json.dumps(doc, indent=2, sort_keys=True)
