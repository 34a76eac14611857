"""What every HTTP route shares: the request id, the error body and its mapping from Funnel
errors, bounded body reading and validation, the admin check, and the replica's services.

Routes are plain functions (FastAPI routers, one module per concern); each parses, calls a
service and maps errors. The services object is the replica's (`serve.services.replica`),
reached through `request.app.state.services`.
"""

import json
import re
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from funnel.contracts.errors import FunnelError
from serve import cost
from serve.api import ErrorBody
from serve.errors import RequestTooLarge, error_code, error_status
from serve.services.admin import Refusal

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def services_of(request: Request) -> Any:
    """The replica's `ReplicaServices` (set by the Serve deployment when it builds the app)."""
    return request.app.state.services


def request_id_of(request: Request) -> str:
    """Serve's own request id: the proxy takes the client's `X-Request-ID` or makes one, logs
    it and returns it in the response's `x-request-id` header; the body repeats it."""
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
    except ImportError:  # pragma: no cover - Ray moved it, or is not installed here
        rid = ""
    if rid:
        return rid
    rid = request.headers.get("x-request-id", "")
    return rid if valid_request_id(rid) else uuid.uuid4().hex


def valid_request_id(rid: str) -> bool:
    return bool(_REQUEST_ID.match(rid))


def error(status: int, code: str, detail: Any, request_id: str) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, request_id=request_id).model_dump()
    return JSONResponse(body, status_code=status)


def validation_detail(e: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as [{field, message, allowed/given}], the field path dotted."""
    return [{"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"],
             "given": err.get("input") if not isinstance(err.get("input"), dict) else None}
            for err in e.errors()]


def error_detail(e: BaseException) -> Any:
    """What an error body's `detail` says about `e` (HTTP and gRPC alike)."""
    return validation_detail(e) if isinstance(e, ValidationError) else str(e)


def funnel_error(e: BaseException, rid: str) -> JSONResponse:
    """HTTP's answer for `e`: status and `error` name from the mapping gRPC uses too
    (`serve.errors.error_status` / `error_code`; each Funnel error class names its status)."""
    return error(error_status(e), error_code(e), error_detail(e), rid)


def oip_error(e: FunnelError, rid: str) -> JSONResponse:
    """Open Inference Protocol error body: `error` is the message (as the spec and stock
    clients expect), plus the request id."""
    return JSONResponse({"error": str(e), "request_id": rid}, status_code=e.http_status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over `limit` bytes before reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and \
            int(declared) > limit:
        raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json_body(request: Request, limit: int, rid: str
                          ) -> tuple[Any, JSONResponse | None]:
    try:
        raw = await read_body(request, limit)
    except RequestTooLarge as e:
        return None, error(413, "request_too_large", str(e), rid)
    try:
        with cost.section(cost.INGRESS):
            return json.loads(raw), None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, error(400, "invalid_json", f"body is not valid JSON: {e}", rid)


async def parse_payload(request: Request, model: Any, limit: int, rid: str
                        ) -> tuple[Any, JSONResponse | None]:
    """Read (<= limit bytes), parse JSON and validate into `model`; or the 4xx answer."""
    payload, bad = await parse_json_body(request, limit, rid)
    if bad is not None:
        return None, bad
    try:
        with cost.section(cost.INGRESS):
            return model.model_validate(payload), None
    except ValidationError as e:
        return None, funnel_error(e, rid)


async def authorized(request: Request, rid: str, role: str = "admin"
                     ) -> tuple[Any, JSONResponse | None]:
    """(the caller's `Principal`, None) when the request's credentials carry `role`
    (serve.services.admin: the admin token, a console account, a trusted proxy's header);
    else (None, the 401/403 answer)."""
    import asyncio

    auth = services_of(request).admin
    headers = {k.lower(): v for k, v in request.headers.items()}
    who = (await asyncio.to_thread(auth.require, headers, role) if auth.blocking(headers)
           else auth.require(headers, role))
    if not isinstance(who, Refusal):
        return who, None
    resp = error(who.status, who.code, who.detail, rid)
    if who.status == 401:
        resp.headers["www-authenticate"] = 'Bearer, Basic realm="funnel"'
    return None, resp


async def admin_denied(request: Request, rid: str) -> JSONResponse | None:
    """None when the caller has the admin role; else the 401/403 answer."""
    return (await authorized(request, rid, "admin"))[1]


def timed_json(body: str, timings_ms: dict[str, float]) -> Response:
    """A JSON response with a Server-Timing header (W3C): per-stage milliseconds, visible in
    browser dev tools and `curl -v`."""
    return Response(body, media_type="application/json", headers={
        "server-timing": ", ".join(f"{k};dur={v}" for k, v in timings_ms.items())})
