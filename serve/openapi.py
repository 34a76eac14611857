"""The service's OpenAPI document, complete: request bodies, parameters and every response.

The ingress reads and validates its bodies itself (size limit first, then JSON, then the
pydantic model, each failure a 4xx naming the field), so FastAPI cannot infer them from the
handlers' signatures. This module declares what each route takes and answers, from the same
pydantic models the handlers use, and `install(app)` makes `/openapi.json` serve it. The
fuzz tests (schemathesis) generate requests from this document and check every response
against it, so it is kept exact rather than decorative.

`install(app)` also serves `/docs`, Swagger UI over that document, with Swagger UI's own
files from an installed package (`swagger-ui-bundle-v2`) at `/docs/static/...`: FastAPI's
default page loads them from a CDN, so it is blank on a machine that cannot reach one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from serve.api import (
    MAX_EVENTS,
    ErrorBody,
    EventIn,
    EventsRequest,
    EventsResponse,
    FeedRequest,
    FeedResponse,
    ModerateRequest,
    ModerateResponse,
    ReviewDecisionIn,
    ReviewItemOut,
    ReviewList,
)

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


@dataclass(frozen=True)
class Op:
    """One route: its body (a model, or a raw JSON schema), parameters and responses
    (status -> (description, model / schema / None for no body, media type))."""

    summary: str
    body: type[BaseModel] | dict[str, Any] | str | None = None  # str: a component's name
    params: tuple[dict[str, Any], ...] = ()
    responses: dict[str, tuple[str, Any, str]] = field(default_factory=dict)
    admin: bool = False


ERRORS = ("4XX", "a bad request: `detail` names each field and what is allowed", ErrorBody, JSON)
UNAVAILABLE = ("503", "a dependency is down (the review database, the rollout controller)",
               ErrorBody, JSON)
OIP_ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string"}, "request_id": {"type": "string"}}}
OBJECT = {"type": "object"}
OIP_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": OBJECT, "data": {"type": "array"}}}
OIP_INFER = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": OBJECT,
    "inputs": {"type": "array", "items": OIP_TENSOR},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"},
                                                          "parameters": OBJECT}}}}}
OIP_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"},
    "id": {"type": "string"}, "parameters": OBJECT,
    "outputs": {"type": "array", "items": OIP_TENSOR}}}
MODEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {
    "type": "string", "enum": ["ranker", "moderation_text", "moderation_image"]},
    "description": "the models this service serves; another name is a 404"}


def _status_obj(*keys: str) -> dict[str, Any]:
    return {"type": "object", "required": list(keys),
            "properties": {k: {"type": "boolean"} for k in keys}}


ROUTES: dict[tuple[str, str], Op] = {
    ("/v1/feed", "post"): Op(
        "A ranked feed for a user", FeedRequest,
        responses={"200": ("the page, with each item's sources and explanation", FeedResponse,
                           JSON),
                   "429": ("overloaded: the replica is at its bound of feed requests in "
                           "flight; nothing was done, retry after the Retry-After seconds",
                           ErrorBody, JSON), "4XX": ERRORS[1:]}),
    ("/v1/events", "post"): Op(
        f"Outcome events of served items: one, or a batch of at most {MAX_EVENTS}",
        {"oneOf": [_ref(EventIn), _ref(EventsRequest)]},
        responses={"202": ("logged; a repeated event id counts as a duplicate",
                           EventsResponse, JSON), "4XX": ERRORS[1:]}),
    ("/v1/moderate", "post"): Op(
        "Moderation scores and decision for text and/or an image", ModerateRequest,
        responses={"200": ("scores, decision and reasons", ModerateResponse, JSON),
                   "4XX": ERRORS[1:], "503": UNAVAILABLE[1:]}),
    ("/v1/review", "get"): Op(
        "The human-review queue, oldest first", admin=True, params=(
            {"name": "status", "in": "query", "required": False, "schema": {
                "type": "string", "enum": ["pending", "allow", "block", "all"],
                "default": "pending"}},
            {"name": "limit", "in": "query", "required": False, "schema": {
                "type": "integer", "minimum": 1, "default": 50}},
            {"name": "after_id", "in": "query", "required": False, "schema": {
                "type": "integer", "minimum": 0, "default": 0}}),
        responses={"200": ("a page of review items", ReviewList, JSON), "4XX": ERRORS[1:],
                   "503": UNAVAILABLE[1:]}),
    ("/v1/review/{item_id}", "post"): Op(
        "Decide a review item (once; a second decision is 409)", ReviewDecisionIn,
        admin=True, params=({"name": "item_id", "in": "path", "required": True,
                             "schema": {"type": "integer", "minimum": 0}},),
        responses={"200": ("the decided item", ReviewItemOut, JSON), "4XX": ERRORS[1:],
                   "503": UNAVAILABLE[1:]}),
    ("/v1/admin/rollout", "get"): Op(
        "The rollout's status: config, weights, windows, guardrails, decisions", admin=True,
        responses={"200": ("status", OBJECT, JSON), "4XX": ERRORS[1:],
                   "503": UNAVAILABLE[1:]}),
    ("/v1/admin/rollout", "put"): Op(
        "Apply a rollout config (validated, bundle versions checked, then applied)",
        "RolloutConfig", admin=True,
        responses={"200": ("applied: the new status", OBJECT, JSON), "4XX": ERRORS[1:],
                   "503": UNAVAILABLE[1:]}),
    ("/v1/admin/rollout/{stage}/{action}", "post"): Op(
        "Promote a canary one step, or roll it back", admin=True, params=(
            {"name": "stage", "in": "path", "required": True, "schema": {
                "type": "string", "enum": ["retrieval", "ranker", "moderation"]}},
            {"name": "action", "in": "path", "required": True, "schema": {
                "type": "string", "enum": ["promote", "rollback"]}}),
        responses={"200": ("done: the new status", OBJECT, JSON), "4XX": ERRORS[1:],
                   "503": UNAVAILABLE[1:]}),
    ("/metrics", "get"): Op(
        "Prometheus exposition of this node's Funnel processes",
        responses={"200": ("text format 0.0.4", {"type": "string"}, "text/plain")}),
    ("/healthz", "get"): Op(
        "Liveness", responses={"200": ("alive", {"type": "object", "required": ["status"],
                                                  "properties": {"status": {
                                                      "type": "string"}}}, JSON)}),
    ("/readyz", "get"): Op(
        "Readiness: bundle, index, Triton, moderation, rollout", responses={
            "200": ("ready", {"type": "object", "required": ["ready", "checks"]}, JSON),
            "503": ("not ready: `checks` says which part", {
                "type": "object", "required": ["ready", "checks"]}, JSON)}),
    ("/v2", "get"): Op("Open Inference Protocol: server metadata", responses={
        "200": ("metadata", {"type": "object", "required": ["name", "version",
                                                              "extensions"]}, JSON)}),
    ("/v2/health/live", "get"): Op("Open Inference Protocol: live", responses={
        "200": ("live", _status_obj("live"), JSON)}),
    ("/v2/health/ready", "get"): Op("Open Inference Protocol: ready", responses={
        "200": ("ready", _status_obj("ready"), JSON),
        "503": ("not ready", _status_obj("ready"), JSON)}),
    ("/v2/models/{name}", "get"): Op(
        "Open Inference Protocol: model metadata", params=(MODEL_NAME,), responses={
            "200": ("metadata", {"type": "object", "required": ["name", "inputs",
                                                                  "outputs"]}, JSON),
            "4XX": ("unknown model", OIP_ERROR, JSON)}),
    ("/v2/models/{name}/ready", "get"): Op(
        "Open Inference Protocol: model ready", params=(MODEL_NAME,), responses={
            "200": ("ready", {"type": "object", "required": ["name", "ready"]}, JSON),
            "503": ("not ready", {"type": "object", "required": ["name", "ready"]}, JSON),
            "4XX": ("unknown model", OIP_ERROR, JSON)}),
    ("/v2/models/{name}/infer", "post"): Op(
        "Open Inference Protocol: inference (JSON; binary tensors with "
        "Inference-Header-Content-Length)", OIP_INFER, params=(MODEL_NAME,), responses={
            "200": ("outputs", OIP_RESPONSE, JSON),
            "4XX": ("a bad request (shape, datatype, unknown model or tensor)", OIP_ERROR,
                    JSON),
            "503": ("the model is down", OIP_ERROR, JSON)}),
}

MODELS: tuple[type[BaseModel], ...] = (
    FeedRequest, FeedResponse, EventIn, EventsRequest, EventsResponse, ModerateRequest,
    ModerateResponse, ReviewList, ReviewItemOut, ReviewDecisionIn, ErrorBody)


def _component_schemas() -> dict[str, Any]:
    """Every model's JSON schema (and the models they use) under components.schemas."""
    from funnel.contracts.rollout import RolloutConfig

    out: dict[str, Any] = {}
    models: tuple[type[BaseModel], ...] = (*MODELS, RolloutConfig)
    for m in models:
        s = m.model_json_schema(ref_template=REF, mode="validation")
        out.update(s.pop("$defs", {}))
        out[m.__name__] = s
    return out


def _media(schema: Any, media: str) -> dict[str, Any]:
    if (isinstance(schema, type) and issubclass(schema, BaseModel)) or isinstance(schema, str):
        schema = _ref(schema)
    return {media: {"schema": schema}}


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with every route of ROUTES described in full."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="Funnel: feed, moderation, review, rollout and the Open "
                      "Inference Protocol. Admin routes take `Authorization: Bearer <token>` "
                      "(the admin token) or HTTP Basic credentials of a console account "
                      "(`funnel users add`); the review routes admit reviewers too.")
    comps = doc.setdefault("components", {})
    comps.setdefault("schemas", {}).update(_component_schemas())
    comps.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    comps["securitySchemes"]["basic"] = {"type": "http", "scheme": "basic"}
    paths = doc.setdefault("paths", {})
    for (path, method), op in ROUTES.items():
        entry: dict[str, Any] = {"summary": op.summary, "operationId": re.sub(
            r"[^a-z0-9]+", "_", f"{method} {path}").strip("_")}
        if op.params:
            entry["parameters"] = list(op.params)
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": _media(op.body, JSON)}
        responses = {code: {"description": desc, **({"content": _media(schema, media)}
                                                    if schema is not None else {})}
                     for code, (desc, schema, media) in op.responses.items()}
        if op.admin:
            entry["security"] = [{"bearer": []}, {"basic": []}]
            responses.setdefault("4XX", {"description": ERRORS[1],
                                         "content": _media(ErrorBody, JSON)})
        entry["responses"] = responses
        paths.setdefault(path, {})[method] = entry
    return doc


DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/static"
# The files the page loads (name -> media type); only these are served from the package.
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
                  "swagger-ui.css": "text/css; charset=utf-8",
                  "favicon-32x32.png": "image/png"}


def swagger_asset(name: str) -> Path | None:
    """The installed file behind `/docs/static/{name}`, or None for a name that is not one of
    SWAGGER_ASSETS (no other file of the package, nor any path, is reachable)."""
    if name not in SWAGGER_ASSETS:
        return None
    from swagger_ui_bundle import swagger_ui_path  # swagger-ui-bundle-v2: Swagger UI 5's dist

    return Path(str(swagger_ui_path)) / name


def docs_html(*, title: str, openapi_url: str, root_path: str = "") -> HTMLResponse:
    """The /docs page: Swagger UI over `openapi_url`, its script, style and icon from
    DOCS_ASSETS_URL (under `root_path`, the prefix the app is mounted at)."""
    base = root_path.rstrip("/")
    assets = f"{base}{DOCS_ASSETS_URL}"
    return get_swagger_ui_html(
        openapi_url=f"{base}{openapi_url}", title=f"{title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png")


def install(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """Serve `build(app)` at /openapi.json (built once, on first use), and Swagger UI over it
    at /docs from the installed assets (create the app with `docs_url=None`)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    async def docs(request: Request) -> HTMLResponse:
        return docs_html(title=app.title, openapi_url=app.openapi_url or "/openapi.json",
                         root_path=request.scope.get("root_path", ""))

    async def docs_asset(name: str) -> FileResponse:
        path = swagger_asset(name)
        if path is None:
            raise HTTPException(404, f"no docs asset {name!r}; there are "
                                f"{sorted(SWAGGER_ASSETS)}")
        return FileResponse(path, media_type=SWAGGER_ASSETS[name],
                            headers={"cache-control": "public, max-age=86400"})

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_api_route(DOCS_URL, docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{DOCS_ASSETS_URL}/{{name}}", docs_asset, methods=["GET"],
                      include_in_schema=False)
    return openapi
