"""Where serving finds a bundle version: the bundle root, filled from the model registry.

The bundle root (`args.rollout.bundle_root`, default the primary bundle's parent directory)
holds bundle versions, one directory each. With a registry configured (`args.registry`, or
the FUNNEL_REGISTRY_URL / FUNNEL_REGISTRY_DATABASE_URL variables the chart sets from its
Secret), a version the root lacks is pulled into it on first use: every byte checked against
the registry's index, moved into place only when all of them match (docs/registry.md). A
pull that fails (an unknown version, a corrupt or missing object, the store away) raises,
names the version and the file, is counted in `funnel_bundle_pulls_total{result}` and kept
as `last_failure`; nothing is loaded from it, and the caller keeps serving what it has.

This is the one place that turns a version name into a local directory: the rollout
controller (when a config is applied), the ingress replicas and the ShadowScorer (when a
routing table names the version), the moderation models and the Triton ranker versions.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from funnel.contracts.bundle import MANIFEST, check_version, resolve_bundle
from funnel.contracts.errors import FunnelError, UnknownVersionError

if TYPE_CHECKING:
    from funnel.registry import Registry

log = logging.getLogger("funnel.bundles")


def bundle_root(primary_bundle: str) -> Path:
    """The directory that holds the bundle versions: the primary bundle's parent."""
    return resolve_bundle(primary_bundle).parent


def version_path(root: Path, version: str) -> Path:
    return root / check_version(version)


def available_versions(root: Path) -> list[str]:
    """Bundle versions under `root` (directories with a manifest; `latest` is a link)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                  and (p / MANIFEST).is_file())


@dataclass(frozen=True)
class PullFailure:
    version: str
    error: str


class BundleVersions:
    """Bundle versions in a local root, pulled from `registry` when the root lacks one."""

    def __init__(self, root: Path, registry: Registry | None = None) -> None:
        self.root = root
        self.registry = registry
        self.last_failure: PullFailure | None = None
        self._lock = threading.Lock()  # one pull at a time in this process

    def available(self) -> list[str]:
        """Versions in the root (not those only the registry holds)."""
        return available_versions(self.root)

    def path(self, version: str) -> Path:
        """The local directory of `version`, pulled from the registry first when the root
        lacks it. The caller verifies the bundle before it loads a file (as for any bundle).

        Raises:
            BundleError: a bad version name; a download that does not match (the file named).
            UnknownVersionError: a registry that does not hold the version.
            RegistryError: the registry cannot be read.
        """
        local = version_path(self.root, version)
        if (local / MANIFEST).is_file() or self.registry is None:
            return local
        from monitoring import metrics  # with a registry only: the metrics registry is heavy

        with self._lock:
            if (local / MANIFEST).is_file():  # another thread pulled it meanwhile
                return local
            try:
                b = self.registry.pull(version, self.root,
                                       say=lambda m: log.debug("registry: %s", m))
            except FunnelError as e:
                metrics.BUNDLE_PULLS.labels("failed").inc()
                self.last_failure = PullFailure(version, str(e))
                log.error("registry: bundle %s not pulled: %s", version, e)
                raise
            metrics.BUNDLE_PULLS.labels("ok").inc()
            if self.last_failure is not None and self.last_failure.version == version:
                self.last_failure = None  # the version arrived after all: nothing to report
            log.info("registry: pulled bundle %s into %s", version, self.root)
            return b.path

    def knows(self, version: str) -> bool:
        """Whether `version` can be served: in the root, or in the registry and not retired."""
        if (version_path(self.root, version) / MANIFEST).is_file():
            return True
        if self.registry is None:
            return False
        try:
            return self.registry.show(version).status != "retired"
        except UnknownVersionError:
            return False

    def record_serving(self, rows: list[tuple[str, str, str]], *, actor: str) -> None:
        """Tell the registry where versions serve now (no registry: nothing to do). Best
        effort: the rollout goes on with the registry away, and the next change records."""
        if self.registry is None:
            return
        try:
            local_only = self.registry.index.record_serving(rows, actor=actor)
        except Exception as e:  # FunnelError, or the database away (SQLAlchemy's errors)
            log.warning("registry: where versions serve not recorded: %s", e)
            return
        if local_only:
            log.info("registry: versions not in the registry (served from the bundle root "
                     "only): %s", local_only)

    def failure(self) -> dict[str, str] | None:
        """The last failed pull, as the rollout controller hands it to the replicas."""
        f = self.last_failure
        return {"version": f.version, "error": f.error} if f else None

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()


def open_registry(settings: Any) -> Registry | None:
    """The registry `settings` (`RegistrySettings`) name, the environment winning; None when
    none is configured."""
    url = os.environ.get(settings.url_env) or settings.url
    if not url:
        return None
    from funnel.registry import Registry

    db = os.environ.get(settings.database_url_env) or settings.database_url
    return Registry.open(url, db)


def bundle_versions(args: Any) -> BundleVersions:
    """The bundle versions of an app's args (`serve.config.AppArgs`)."""
    ro = args.rollout
    root = Path(ro.bundle_root) if ro.bundle_root else bundle_root(args.bundle)
    return BundleVersions(root, open_registry(args.registry))
