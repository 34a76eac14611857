"""Errors raised by the serving package, and the HTTP / gRPC status each maps to.

The edges (`serve.app` for HTTP, the CLI) map them once; everything else raises. Bad input
is a 4xx with a body naming the field; a failing stage is not an error at all (it degrades
the response and says so in `degraded`).
"""

from __future__ import annotations

from funnel.contracts.errors import FunnelError, InvalidInputError


class ServeError(FunnelError):
    """Base class of serving errors."""

    http_status = 500
    grpc_code = "INTERNAL"


class ServeConfigError(InvalidInputError):
    """A serve config has an unknown key or an out-of-range value. CLI exit 2."""

    grpc_code = "INVALID_ARGUMENT"


class PortInUseError(InvalidInputError):
    """A port the config names is already taken (another `funnel serve`?): refused before
    anything starts. CLI exit 2."""


class RequestTooLarge(ServeError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(ServeError):
    """Admission control refused the request: the replica is at its bound of requests in
    flight (`serve.admission`). HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED; nothing
    was done, so a retry is safe."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServeError):
    """The app cannot answer yet (bundle loading, index building)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class FeatureStoreUnavailable(ServeError):
    """The online feature store (Redis) failed or passed its timeout; the feed uses the
    bundle's features and lists `features` in `degraded`."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class EventsNotDurable(ServeError):
    """Events could not be made durable (the spool's disk failed, or the log's buffer is
    full): none was acknowledged, and a retry is taken as new. HTTP 503."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class RankerUnavailable(ServeError):
    """Triton did not answer in time or failed; the pipeline falls back to retrieval order."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class TritonExited(ServeError):
    """tritonserver stopped without being asked to (a crash, a port in use). CLI exit 1; the
    supervisor of `funnel serve` starts it again."""

    exit_code = 1


class PolicyError(InvalidInputError):
    """A moderation policy file is unreadable, or names an unknown label, or has thresholds
    out of order. Refused at load: the server does not start with it. CLI exit 2."""

    grpc_code = "INVALID_ARGUMENT"


class InvalidContent(InvalidInputError):
    """Content to moderate that cannot be read: bad base64, not an image, corrupt pixels.
    HTTP 422, gRPC INVALID_ARGUMENT."""

    grpc_code = "INVALID_ARGUMENT"


class ReviewItemNotFound(ServeError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class AlreadyDecided(ServeError):
    """A review item can be decided once; a second decision, or the loser of two concurrent
    ones, gets this. HTTP 409, gRPC ABORTED."""

    http_status = 409
    grpc_code = "ABORTED"


class ReviewStoreError(ServeError):
    """The review database cannot be reached or migrated. HTTP 503: retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class ModelNotFound(ServeError):
    """Open Inference Protocol: no model of that name. HTTP 404, gRPC NOT_FOUND."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class InvalidTensor(ServeError):
    """Open Inference Protocol: an input tensor is missing, unknown, or of the wrong datatype
    or shape (the message names it). HTTP 400, gRPC INVALID_ARGUMENT."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ReviewDatabaseUrlError(InvalidInputError):
    """The review database URL names no usable database driver. CLI exit 2."""


class RolloutConflict(ServeError):
    """A rollout command that does not apply to the stage's state (promote a stage with no
    canary, roll back one already rolled back). HTTP 409."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class BundleLoadError(ServeError):
    """A bundle version verified but could not be loaded where it serves (Triton refused the
    model). The rollout is refused; the old config keeps serving. HTTP 503."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


# ---- the one mapping both edges use ------------------------------------------------------
# The `error` name of an error body: HTTP answers it in the JSON body, gRPC in the status
# details (the same JSON), so a client matches one name whichever protocol it speaks.
VALIDATION_ERROR = "validation_error"  # a body or message failed its pydantic model
INTERNAL_ERROR = "internal"


def error_code(e: BaseException) -> str:
    """The `error` name for `e`: a Funnel error's class name in snake_case
    (`InvalidContent` -> `invalid_content`), a pydantic validation failure
    `validation_error`, anything else `internal`. Pure: no web or gRPC framework."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return VALIDATION_ERROR
    if isinstance(e, FunnelError):
        return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower()
                       for i, c in enumerate(type(e).__name__))
    return INTERNAL_ERROR


def error_status(e: BaseException) -> int:
    """The HTTP status for `e` (gRPC derives its code from it: `serve.grpc_api`): 422 for a
    validation failure, the class's `http_status` for a Funnel error, else 500."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return 422
    return e.http_status if isinstance(e, FunnelError) else 500
