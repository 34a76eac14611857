"""What every gRPC handler shares: the request id, the error status and body (the same
mapping and JSON body HTTP uses), and per-call metrics."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

from monitoring import metrics
from serve.errors import error_code, error_status
from serve.http.common import error_detail, valid_request_id


def grpc_request_id(grpc_context: Any) -> str:
    """The client's x-request-id metadata if well-formed, else Serve's id, else a new one."""
    with contextlib.suppress(Exception):
        for k, v in grpc_context.invocation_metadata():
            if k == "x-request-id" and valid_request_id(str(v)):
                return str(v)
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
    except ImportError:  # pragma: no cover
        rid = ""
    return rid or uuid.uuid4().hex


def grpc_fail(grpc_context: Any, http_status: int, code: str, detail: Any, rid: str,
              empty: Any) -> Any:
    """Set the gRPC status from the shared error table; the details carry the same JSON body
    an HTTP client gets ({error, detail, request_id}), `error` named as HTTP names it."""
    from serve.grpc_api import grpc_code_for

    if grpc_context is not None:
        grpc_context.set_code(grpc_code_for(http_status))
        grpc_context.set_details(json.dumps({"error": code, "detail": detail,
                                             "request_id": rid}, default=str))
    return empty


def grpc_error(grpc_context: Any, e: BaseException, rid: str, empty: Any) -> Any:
    """gRPC's answer for `e`: `funnel_error`'s twin (same mapping, same body)."""
    return grpc_fail(grpc_context, error_status(e), error_code(e), error_detail(e), rid, empty)


def grpc_observed(method: str, grpc_context: Any, started: float) -> None:
    """A gRPC call's latency and status, as `grpc:<Method>` (the HTTP middleware's twin)."""
    code = "OK"
    with contextlib.suppress(Exception):
        c = grpc_context.code() if grpc_context is not None else None
        code = c.name if c is not None else "OK"
    metrics.observe_request(f"grpc:{method}", code, time.perf_counter() - started)
