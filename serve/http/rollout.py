"""HTTP: the rollout's admin routes, forwarded to the rollout controller."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from funnel.contracts.rollout import STAGES
from serve.errors import VALIDATION_ERROR
from serve.http.common import (
    admin_denied,
    error,
    parse_json_body,
    request_id_of,
    services_of,
)

router = APIRouter()
ACTIONS = ("promote", "rollback")


async def _call(request: Request, method: str, *args: Any) -> Response:
    s, rid = services_of(request), request_id_of(request)
    denied = await admin_denied(request, rid)
    if denied is not None:
        return denied
    if s.rollout_controller is None:
        return error(503, "rollout_disabled", "this deployment has no rollout controller",
                     rid)
    s.background.ensure()
    out = await getattr(s.rollout_controller, method).remote(*args)
    if isinstance(out, dict) and out.get("ok") is False:
        return error(int(out["status"]), "rollout_refused",
                     out.get("fields") or out.get("error"), rid)
    if method != "status" and s.rollout is not None:
        await s.rollout.report_once()  # this replica routes by the change at once
    return JSONResponse(out)


@router.get("/v1/admin/rollout")
async def rollout_status(request: Request) -> Response:
    return await _call(request, "status")


@router.put("/v1/admin/rollout")
async def rollout_apply(request: Request) -> Response:
    s, rid = services_of(request), request_id_of(request)
    denied = await admin_denied(request, rid)
    if denied is not None:
        return denied
    raw, bad = await parse_json_body(request, s.args.max_body_bytes, rid)
    if bad is not None:
        return bad
    if not isinstance(raw, dict):
        return error(422, VALIDATION_ERROR, [{
            "field": "body", "message": "a rollout config is a JSON object ({} for no "
            "rollout)", "given": type(raw).__name__}], rid)
    return await _call(request, "apply", raw)


@router.post("/v1/admin/rollout/{stage}/{action}")
async def rollout_act(stage: str, action: str, request: Request) -> Response:
    rid = request_id_of(request)
    problems = []
    if stage not in STAGES:
        problems.append({"field": "stage", "message": f"one of {list(STAGES)}",
                         "given": stage})
    if action not in ACTIONS:
        problems.append({"field": "action", "message": f"one of {list(ACTIONS)}",
                         "given": action})
    if problems:
        denied = await admin_denied(request, rid)
        return denied if denied is not None else error(422, VALIDATION_ERROR, problems, rid)
    return await _call(request, action, stage)
