"""The registry's object store: bundle files under `<url>/bundles/<version>/<path>`, through
fsspec (a local directory by default; `s3://bucket/prefix` with s3fs in a cluster; any fsspec
URL).

The store holds bytes only. What a version contains and each file's checksum live in the
index (`funnel.registry.index`), so a file changed in the store is caught when it is read
back (`pull`, `verify`), whatever the store's own manifest says.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec

from funnel.contracts.errors import InvalidInputError, RegistryError

CHUNK = 1 << 20


def storage_options_from_env(url: str) -> dict[str, Any]:
    """fsspec options for `url` from the environment: for s3://, an endpoint other than AWS
    (`FUNNEL_REGISTRY_S3_ENDPOINT_URL`, e.g. MinIO or another S3 API server). Credentials
    come the way s3fs finds them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
    instance role): never from Funnel's own options, so they stay out of configs and logs."""
    opts: dict[str, Any] = {}
    if url.startswith("s3://"):
        endpoint = os.environ.get("FUNNEL_REGISTRY_S3_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


class ObjectStore:
    """Bundle files in one fsspec location."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        opts = dict(storage_options_from_env(url) if storage_options is None
                    else storage_options)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **opts)
        except (ImportError, ValueError) as e:
            raise InvalidInputError(
                f"registry store URL {url!r} is not usable: {e} (s3:// needs the `s3` extra: "
                "pip install 'funnel[s3]')") from e
        self.root = self.root.rstrip("/")

    def key(self, version: str, rel: str = "") -> str:
        base = f"{self.root}/bundles/{version}"
        return f"{base}/{rel}" if rel else base

    def upload(self, version: str, rel: str, local: Path) -> None:
        try:
            self.fs.makedirs(self.key(version, str(Path(rel).parent)).rstrip("/."),
                             exist_ok=True)
            self.fs.put_file(str(local), self.key(version, rel))
        except OSError as e:
            raise RegistryError(f"cannot write {rel} of {version} to {self.url}: {e}") from e

    def download(self, version: str, rel: str, local: Path) -> str:
        """Copy one file to `local`; return the sha256 of the bytes written."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with local.open("wb") as dst:
            return self._read(version, rel, dst.write)

    def sha256(self, version: str, rel: str) -> str:
        """The sha256 of a stored file, read back from the store."""
        return self._read(version, rel, lambda _chunk: None)

    def _read(self, version: str, rel: str, sink: Callable[[bytes], object]) -> str:
        """Stream a stored file into `sink`; its sha256."""
        h = hashlib.sha256()
        try:
            with self.fs.open(self.key(version, rel), "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    sink(chunk)
        except FileNotFoundError as e:
            raise RegistryError(f"{rel} of bundle {version} is missing from {self.url}") from e
        except OSError as e:
            raise RegistryError(f"cannot read {rel} of {version} from {self.url}: {e}") from e
        return h.hexdigest()

    def remove(self, version: str) -> None:
        """Delete a version's objects (an abandoned push)."""
        try:
            if self.fs.exists(self.key(version)):
                self.fs.rm(self.key(version), recursive=True)
        except OSError:
            pass  # best effort: the index never lists an unfinished push
