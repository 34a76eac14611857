"""The Ray Serve application: the feed ingress (FastAPI) around `FeedPipeline`.

One deployment. Merging, filtering and re-ranking are pure logic and run inside this replica
(every Serve handle hop costs ~6 ms on a small machine); the user tower is a sub-millisecond
MLP and the HNSW search a fraction of a millisecond, so they run here too. The one model stage
that earns batching, the ranker, runs on Triton behind its dynamic batcher; this replica
awaits it asynchronously, so concurrent requests meet in Triton's batches.

`build_app(args)` is the import path of the Serve config (`serve/configs/local.yaml`, and
the Helm chart's RayService): args are parsed once there, invalid ones refused with the field
named.
"""

# No `from __future__ import annotations` here: FastAPI resolves endpoint annotations at
# run time, and Serve's ingress wrapper moves the methods away from this module's globals, so
# string annotations would turn `request: Request` into a required query parameter.
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.api import ErrorBody, FeedItemOut, FeedRequest, FeedResponse
from serve.config import AppArgs, parse_app_args
from serve.errors import RequestTooLarge

log = logging.getLogger("funnel.serve")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

fastapi_app = FastAPI(title="Funnel", version="1", docs_url="/docs", redoc_url=None)


def request_id_of(request: Request) -> str:
    """Serve's own request id: the proxy takes the client's `X-Request-ID` or makes one, logs
    it and returns it in the response's `x-request-id` header; the body repeats it."""
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
    except ImportError:  # pragma: no cover - Ray moved it; fall back to our own
        rid = ""
    if rid:
        return rid
    rid = request.headers.get("x-request-id", "")
    return rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex


def error(status: int, code: str, detail: Any, request_id: str) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, request_id=request_id).model_dump()
    return JSONResponse(body, status_code=status)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, "http_error", exc.detail, request_id_of(request))


@fastapi_app.exception_handler(RequestValidationError)
async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
              for e in exc.errors()]
    return error(422, "validation_error", detail, request_id_of(request))


@fastapi_app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    log.exception("unhandled error in request %s", rid)
    return error(500, "internal", "internal error; see the server log for this request id",
                 rid)


def validation_detail(e: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as [{field, message, allowed/given}], the field path dotted."""
    return [{"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"],
             "given": err.get("input") if not isinstance(err.get("input"), dict) else None}
            for err in e.errors()]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over `limit` bytes before reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  health_check_period_s=5)
@serve.ingress(fastapi_app)
class FeedIngress:
    """HTTP edge of the feed: parse, delegate to the pipeline, map errors."""

    def __init__(self, args: dict[str, Any]) -> None:
        from serve.loader import load_pipeline

        self.args: AppArgs = parse_app_args(args)
        self.pipeline, self.versions = load_pipeline(self.args)

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        ranker_ready = getattr(self.pipeline.ranker, "ready", None)
        checks = {
            "bundle": True,
            "index": self.pipeline.retrieval.index.ntotal > 0,
            "triton": bool(await ranker_ready()) if ranker_ready else True,
        }
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks, "bundle": self.versions["bundle"]},
                            status_code=200 if ok else 503)

    @fastapi_app.post("/v1/feed")
    async def feed(self, request: Request) -> Response:
        from serve.pipeline import FeedQuery

        started = time.perf_counter()
        rid = request_id_of(request)
        try:
            raw = await read_body(request, self.args.max_body_bytes)
        except RequestTooLarge as e:
            return error(413, "request_too_large", str(e), rid)
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, "invalid_json", f"body is not valid JSON: {e}", rid)
        try:
            req = FeedRequest.model_validate(payload)
        except ValidationError as e:
            return error(422, "validation_error", validation_detail(e), rid)
        ts = req.context.timestamp.timestamp() if req.context.timestamp else None
        result = await self.pipeline.run(FeedQuery(
            user_id=req.user_id, limit=req.limit, request_id=rid,
            exclude_ids=frozenset(req.exclude_item_ids), locale=req.context.locale,
            timestamp_s=ts))
        body = FeedResponse(
            request_id=rid, user_id=req.user_id,
            items=[FeedItemOut(item_id=i.item_id, rank=i.rank, score=round(i.score, 6),
                               sources=list(i.sources), explain=dict(i.explain))
                   for i in result.items],
            model_versions=self.versions,
            variants={"retrieval": "primary", "ranker": "primary"},
            degraded=result.degraded, cold_start=result.cold_start)
        # pydantic-core serialises straight to JSON bytes (no dict, then json.dumps, pass)
        content = body.model_dump_json()
        # Server-Timing (W3C): per-stage milliseconds, visible in browser dev tools and curl -v;
        # `handler` is the whole endpoint (parse, pipeline, serialise), so what a client sees
        # beyond it is transport: the Serve proxy hop and HTTP.
        timings = {**result.timings_ms, "handler": round((time.perf_counter() - started) * 1000, 3)}
        return Response(content, media_type="application/json", headers={
            "server-timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())})


def build_app(args: dict[str, Any]) -> Application:
    """Serve config entry point (`import_path: serve.app:build_app`)."""
    parse_app_args(args)  # refuse a bad config before any replica starts
    return FeedIngress.bind(args)  # type: ignore[attr-defined]
