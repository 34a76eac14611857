"""HTTP: the Open Inference Protocol (KServe V2) over REST, over the transport-free data
plane in `serve.oip` (its gRPC twin is `serve.rpc.oip`)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from funnel.contracts.errors import FunnelError
from serve.api import parse_uint
from serve.errors import InvalidTensor
from serve.http.common import oip_error, read_body, request_id_of, services_of

router = APIRouter()


@router.get("/v2")
async def oip_server_metadata(request: Request) -> dict[str, Any]:
    return services_of(request).oip.server_metadata()


@router.get("/v2/health/live")
async def oip_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def oip_ready(request: Request) -> JSONResponse:
    ready = await services_of(request).oip.server_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2/models/{name}")
async def oip_model_metadata(name: str, request: Request) -> JSONResponse:
    try:
        return JSONResponse(services_of(request).oip.model_metadata(name))
    except FunnelError as e:
        return oip_error(e, request_id_of(request))


@router.get("/v2/models/{name}/ready")
async def oip_model_ready(name: str, request: Request) -> JSONResponse:
    try:
        ready = await services_of(request).oip.model_ready(name)
    except FunnelError as e:
        return oip_error(e, request_id_of(request))
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.post("/v2/models/{name}/infer")
async def oip_infer(name: str, request: Request) -> Response:
    from serve.oip import decode_rest, encode_rest, wants_binary_output

    s, rid = services_of(request), request_id_of(request)
    try:
        raw = await read_body(request, s.args.moderation.max_body_bytes)
        hl = request.headers.get("inference-header-content-length")
        in_header_len = parse_uint(hl, maximum=len(raw)) if hl is not None else None
        if hl is not None and in_header_len is None:
            raise InvalidTensor("Inference-Header-Content-Length must be an integer in "
                                f"0..{len(raw)} (the body's length)")
        head, tensors = decode_rest(raw, in_header_len)
        model = s.oip.check(name, tensors)
        outputs = await model.infer(tensors)
        body, header_len = encode_rest(model, outputs, request_id=str(head.get("id", "")),
                                       binary=wants_binary_output(head))
    except FunnelError as e:
        return oip_error(e, rid)
    headers = {} if header_len is None else {"inference-header-content-length": str(header_len)}
    return Response(body, media_type="application/json" if header_len is None
                    else "application/octet-stream", headers=headers)
