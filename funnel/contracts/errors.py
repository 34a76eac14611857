"""Errors every part of Funnel raises on purpose (training, serving, monitoring, the CLI).

Each class says how the edge maps it: the CLI exits with `exit_code`, an HTTP edge answers
`http_status`. Raise them with `raise ... from e` so the cause stays in the chain.
"""

from __future__ import annotations


class FunnelError(Exception):
    """Base class of every error Funnel raises on purpose."""

    exit_code: int = 1
    http_status: int = 500


class InvalidInputError(FunnelError):
    """The caller gave something unusable: a file, a field or a value. CLI exit 2, HTTP 422."""

    exit_code = 2
    http_status = 422


class DatasetError(InvalidInputError):
    """A dataset is missing, unreadable, or does not follow the documented schema."""


class ConfigError(InvalidInputError):
    """A training config has an unknown key, a wrong type or an out-of-range value."""


class BundleError(InvalidInputError):
    """An artifact bundle is missing a file, fails a checksum, or has a bad manifest."""


class RolloutConfigError(InvalidInputError):
    """A rollout config that cannot serve: a bad shape, an unknown stage or bundle version.
    Refused whole (the old config keeps serving). HTTP 422, gRPC INVALID_ARGUMENT, CLI exit 2.
    `fields` lists each problem as {field, message, given}."""

    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, fields: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class RegistryError(FunnelError):
    """The model registry (object store or index) cannot be reached or read. CLI exit 1,
    HTTP 503: the same call may work once the store is back."""

    http_status = 503


class RegistryConflictError(InvalidInputError):
    """A registry change the rules refuse: a version pushed twice (versions are immutable),
    a push racing another of the same version, retiring a version that still serves, a
    checksum that does not match. CLI exit 2, HTTP 409."""

    http_status = 409


class UnknownVersionError(InvalidInputError):
    """A bundle version the registry does not hold (or holds only as an unfinished push)."""

    http_status = 404
