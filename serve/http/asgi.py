"""The replica's FastAPI app: the routers, the error handlers, request metrics and the
offline /docs. `build_http_app(services)` is called once per replica by the Serve
deployment; without services it still describes every route (the OpenAPI tests)."""

import contextlib
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring import metrics
from serve import cost, openapi
from serve.errors import VALIDATION_ERROR
from serve.http import feed, health, moderation, oip, review, rollout
from serve.http.common import error, request_id_of

log = logging.getLogger("funnel.serve")

ROUTERS = (feed.router, moderation.router, review.router, rollout.router, health.router,
           oip.router)


COST_ROUTES = {"/v1/feed": "feed", "/v1/moderate": "moderate"}


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

        # the request's cost ledger (serve/cost.py) spans the whole ASGI call: routing,
        # parsing, the use case and sending the response
        path = scope.get("path")
        try:
            with (cost.request(COST_ROUTES[path]) if path in COST_ROUTES
                  else contextlib.nullcontext()):
                await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            metrics.observe_request(getattr(route, "path", None) or "unmatched",
                                    status["code"], time.perf_counter() - started)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error(exc.status_code, "http_error", exc.detail, request_id_of(request))


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
              for e in exc.errors()]
    return error(422, VALIDATION_ERROR, detail, request_id_of(request))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    log.exception("unhandled error in request %s", rid)
    return error(500, "internal", "internal error; see the server log for this request id",
                 rid)


def build_http_app(services: Any = None) -> FastAPI:
    # /docs is openapi.install's: Swagger UI from an installed package, not FastAPI's CDN
    app = FastAPI(title="Funnel", version="1", docs_url=None, redoc_url=None)
    openapi.install(app)  # /openapi.json: every route's bodies and answers, in full; /docs
    app.add_middleware(RequestMetrics)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(Exception, _unexpected)
    for r in ROUTERS:
        app.include_router(r)
    if services is None or getattr(services, "console", None) is not None:
        from serve.console.app import router as console_router
        from serve.console.app import static_files

        app.include_router(console_router)
        app.mount("/console/static", static_files(), name="console-static")
    app.state.services = services
    return app
