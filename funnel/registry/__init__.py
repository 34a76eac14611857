"""The model registry: bundle files in object storage (fsspec), metadata in a relational
index (SQLAlchemy, Alembic). See docs/registry.md."""

from funnel.registry.index import BundleRecord, FileRecord, RegistryIndex
from funnel.registry.registry import Registry, VerifyReport, registry_urls
from funnel.registry.store import ObjectStore

__all__ = ["BundleRecord", "FileRecord", "ObjectStore", "Registry", "RegistryIndex",
           "VerifyReport", "registry_urls"]
