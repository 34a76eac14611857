"""HTTP: liveness, readiness and the Prometheus scrape."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from monitoring import metrics
from serve.http.common import services_of

router = APIRouter()


@router.get("/metrics")
async def scrape(request: Request) -> Response:
    """Prometheus exposition: this node's Funnel processes (requests, stages, moderation,
    the impression log), the review queue (from its database) and the rollout's
    cluster-wide numbers (from the controller)."""
    return Response(await services_of(request).health.scrape(),
                    media_type=metrics.CONTENT_TYPE)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    s = services_of(request)
    ok, checks = await s.health.ready()
    body: dict[str, object] = {"ready": ok, "checks": checks, "bundle": s.versions["bundle"]}
    detail = s.health.details()
    if detail:  # e.g. a bundle version the registry could not deliver: still serving
        body["detail"] = detail
    return JSONResponse(body, status_code=200 if ok else 503)
