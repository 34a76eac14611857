"""gRPC: the Open Inference Protocol (inference.GRPCInferenceService) over the
transport-free data plane in `serve.oip` (its REST twin is `serve.http.oip`)."""

from __future__ import annotations

from typing import Any

from funnel.contracts.errors import FunnelError
from serve.grpc_api import MalformedMessage, inference_pb2
from serve.rpc.common import grpc_error, grpc_fail, grpc_request_id

# Ray Serve unpickles gRPC requests in the replica before calling a method: tritonclient's
# `inference` messages must be importable by the name they were pickled under. Here, not in
# serve/app.py: the replica receives the deployment class by value and imports its bases'
# modules (this one), not the module that defined it.
inference_pb2()


class OipRpc:
    """Mixin of the Serve deployment; `self.services.oip` is its `OipDataPlane`."""

    services: Any

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        return inference_pb2().ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        return inference_pb2().ServerReadyResponse(
            ready=await self.services.oip.server_ready())

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        m = self.services.oip.server_metadata()
        return inference_pb2().ServerMetadataResponse(name=m["name"], version=m["version"],
                                                      extensions=m["extensions"])

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        pb = inference_pb2()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(),
                             grpc_request_id(grpc_context), pb.ModelReadyResponse())
        try:
            return pb.ModelReadyResponse(
                ready=await self.services.oip.model_ready(request.name))
        except FunnelError as e:
            return grpc_error(grpc_context, e, grpc_request_id(grpc_context),
                              pb.ModelReadyResponse())

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        pb = inference_pb2()
        if isinstance(request, MalformedMessage):
            return grpc_fail(grpc_context, 400, request.code, request.detail(),
                             grpc_request_id(grpc_context), pb.ModelMetadataResponse())
        try:
            m = self.services.oip.model_metadata(request.name)
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
            model = self.services.oip.check(request.model_name, tensors)
            outputs = await model.infer(tensors)
        except FunnelError as e:
            return grpc_error(grpc_context, e, grpc_request_id(grpc_context),
                              pb.ModelInferResponse())
        return encode_grpc(pb.ModelInferResponse, model, outputs, request.id)
