"""Open Inference Protocol (KServe V2) data plane, free of any transport.

`OipDataPlane` holds the served models (`ranker`, `moderation_text`, `moderation_image`),
answers metadata and readiness, and runs inference after checking every input tensor against
the model's declared inputs: an unknown model is `ModelNotFound` (404 / NOT_FOUND); a missing,
unknown, wrong-datatype or wrong-shape tensor is `InvalidTensor` naming it (400 /
INVALID_ARGUMENT). The REST codec (JSON, with the binary-tensor extension tritonclient uses)
and the gRPC codec live here too; the edges in `serve.app` only move bytes.
(The shape follows KServe's `protocol/rest/v2_endpoints.py` -> `DataPlane` split.)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from serve.errors import InvalidTensor, ModelNotFound

DTYPES: dict[str, Any] = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64,
                          "INT32": np.int32, "BOOL": np.bool_, "BYTES": np.object_}
_BY_NUMPY = {np.dtype(v): k for k, v in DTYPES.items() if k != "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


Infer = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class OipModel:
    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    infer: Infer
    ready: Callable[[], Awaitable[bool]]


def datatype_of(a: np.ndarray) -> str:
    if a.dtype == np.object_ or a.dtype.kind in ("S", "U"):
        return "BYTES"
    try:
        return _BY_NUMPY[a.dtype]
    except KeyError as e:
        raise ValueError(f"no OIP datatype for numpy {a.dtype}") from e


class OipDataPlane:
    def __init__(self, models: Sequence[OipModel], *, server_version: str) -> None:
        self.models = {m.name: m for m in models}
        self.server_version = server_version

    def model(self, name: str) -> OipModel:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"unknown model {name!r}; served: {sorted(self.models)}") \
                from None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "funnel", "version": self.server_version,
                "extensions": ["binary_tensor_data"]}

    def model_metadata(self, name: str) -> dict[str, Any]:
        m = self.model(name)
        return {"name": m.name, "versions": [m.version], "platform": m.platform,
                "inputs": [t.to_dict() for t in m.inputs],
                "outputs": [t.to_dict() for t in m.outputs]}

    async def model_ready(self, name: str) -> bool:
        return await self.model(name).ready()

    async def server_ready(self) -> bool:
        for m in self.models.values():
            if not await m.ready():
                return False
        return True

    def check(self, name: str, tensors: Mapping[str, np.ndarray]) -> OipModel:
        """The model, after every input tensor is checked against its declared inputs."""
        m = self.model(name)
        declared = {t.name: t for t in m.inputs}
        for given in tensors:
            if given not in declared:
                raise InvalidTensor(f"model {name!r} has no input tensor {given!r}; inputs: "
                                    f"{sorted(declared)}")
        rows = None
        for spec in m.inputs:
            if spec.name not in tensors:
                raise InvalidTensor(f"input tensor {spec.name!r} is missing "
                                    f"({spec.datatype} {list(spec.shape)})")
            a = tensors[spec.name]
            dt = datatype_of(a)
            if dt != spec.datatype:
                raise InvalidTensor(f"input tensor {spec.name!r} must be {spec.datatype}, "
                                    f"got {dt}")
            if len(a.shape) != len(spec.shape) or any(
                    want not in (-1, got) for want, got in zip(spec.shape, a.shape,
                                                               strict=True)):
                raise InvalidTensor(f"input tensor {spec.name!r} has shape {list(a.shape)}; "
                                    f"expected {list(spec.shape)} (-1: any)")
            if rows is not None and a.shape[0] != rows:
                raise InvalidTensor(f"input tensor {spec.name!r} has {a.shape[0]} rows; the "
                                    f"other inputs have {rows}")
            rows = a.shape[0]
        if not rows:
            raise InvalidTensor("the input tensors have no rows")
        return m

    async def infer(self, name: str, tensors: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
        m = self.check(name, tensors)
        return await m.infer(dict(tensors))


# ---- REST codec: JSON with the binary tensor data extension ------------------------------
def _bytes_to_numpy(raw: bytes, name: str) -> np.ndarray:
    """BYTES elements in the binary extension: each a 4-byte little-endian length + data."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InvalidTensor(f"input tensor {name!r}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise InvalidTensor(f"input tensor {name!r}: BYTES element longer than the data")
        out.append(raw[i:i + n])
        i += n
    return np.asarray(out, dtype=np.object_)


def _numpy_to_bytes(a: np.ndarray) -> bytes:
    parts = []
    for v in a.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: StrictInt | None = Field(None, ge=0)
    binary_data: bool | None = None
    binary_data_output: bool | None = None


class _TensorIn(BaseModel):
    name: str
    shape: list[StrictInt] = Field(max_length=32)
    datatype: str
    parameters: _Params = Field(default_factory=_Params)
    data: Any = None


class _OutputIn(BaseModel):
    name: str
    parameters: _Params = Field(default_factory=_Params)


class _InferIn(BaseModel):
    """The JSON header of an infer request (Open Inference Protocol, REST)."""

    id: str | None = None
    parameters: _Params = Field(default_factory=_Params)
    inputs: list[_TensorIn] = Field(min_length=1, max_length=64)
    outputs: list[_OutputIn] = Field(default_factory=list, max_length=64)


def _shape_problem(e: ValidationError) -> str:
    def loc(parts: Sequence[Any]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")

    return "; ".join(f"{loc(x['loc']) or 'request'}: {x['msg']}" for x in e.errors()[:5])


def decode_rest(body: bytes, header_length: int | None) -> tuple[dict[str, Any],
                                                                 dict[str, np.ndarray]]:
    """An infer request body -> (its JSON header, input tensors). `header_length` is the
    `Inference-Header-Content-Length` header (binary extension) or None (all JSON)."""
    head_bytes = body if header_length is None else body[:header_length]
    try:
        head = json.loads(head_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidTensor(f"the request is not valid JSON: {e}") from e
    if not isinstance(head, dict) or not head.get("inputs"):
        raise InvalidTensor("the request needs a non-empty 'inputs' list")
    try:
        req = _InferIn.model_validate(head)
    except ValidationError as e:
        raise InvalidTensor(f"the request does not follow the protocol: {_shape_problem(e)}"
                            ) from e
    binary = body[header_length:] if header_length is not None else b""
    offset = 0
    tensors: dict[str, np.ndarray] = {}
    for t in req.inputs:
        name, dtype, shape = t.name, t.datatype, t.shape
        if dtype not in DTYPES:
            raise InvalidTensor(f"input tensor {name!r}: datatype {dtype!r} is not supported; "
                                f"allowed: {sorted(DTYPES)}")
        if any(d < 0 for d in shape):
            raise InvalidTensor(f"input tensor {name!r}: shape must be a list of sizes >= 0")
        size = t.parameters.binary_data_size
        try:
            if size is not None:
                raw = binary[offset:offset + size]
                offset += size
                a = (_bytes_to_numpy(raw, name) if dtype == "BYTES"
                     else np.frombuffer(raw, dtype=DTYPES[dtype]))
            else:
                data = t.data
                if dtype == "BYTES":
                    flat = np.asarray(data, dtype=np.object_).reshape(-1)
                    if not all(isinstance(d, str) for d in flat):
                        raise InvalidTensor(f"input tensor {name!r}: BYTES data in JSON is a "
                                            "list of strings")
                    a = np.asarray([d.encode() if isinstance(d, str) else d for d in flat],
                                   dtype=np.object_)
                else:
                    a = np.asarray(data, dtype=DTYPES[dtype])
            tensors[name] = a.reshape(shape)
        except (ValueError, TypeError) as e:
            raise InvalidTensor(f"input tensor {name!r}: data does not fit datatype {dtype} "
                                f"and shape {shape}: {e}") from e
    return head, tensors


def encode_rest(model: OipModel, outputs: Mapping[str, np.ndarray], *, request_id: str,
                binary: bool) -> tuple[bytes, int | None]:
    """(body, header length for the binary extension or None)."""
    head: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                            "id": request_id, "outputs": []}
    blobs = []
    for name, a in outputs.items():
        spec: dict[str, Any] = {"name": name, "datatype": datatype_of(a), "shape": list(a.shape)}
        if binary:
            raw = _numpy_to_bytes(a) if spec["datatype"] == "BYTES" else a.tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            spec["data"] = a.reshape(-1).tolist()
        head["outputs"].append(spec)
    header = json.dumps(head).encode()
    if not binary:
        return header, None
    return header + b"".join(blobs), len(header)


def wants_binary_output(head: Mapping[str, Any]) -> bool:
    params = head.get("parameters") or {}
    if params.get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in head.get("outputs") or []
               if isinstance(o, dict))


# ---- gRPC codec (ModelInferRequest / ModelInferResponse of inference.GRPCInferenceService) -
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "INT32": "int_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


def decode_grpc(req: Any) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise InvalidTensor(f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs")
    for i, t in enumerate(req.inputs):
        if t.datatype not in DTYPES:
            raise InvalidTensor(f"input tensor {t.name!r}: datatype {t.datatype!r} is not "
                                f"supported; allowed: {sorted(DTYPES)}")
        shape = list(t.shape)
        try:
            if raw:
                a = (_bytes_to_numpy(raw[i], t.name) if t.datatype == "BYTES"
                     else np.frombuffer(raw[i], dtype=DTYPES[t.datatype]))
            else:
                vals = list(getattr(t.contents, _CONTENTS[t.datatype]))
                a = np.asarray(vals, dtype=DTYPES[t.datatype])
            tensors[t.name] = a.reshape(shape)
        except (ValueError, TypeError) as e:
            raise InvalidTensor(f"input tensor {t.name!r}: data does not fit datatype "
                                f"{t.datatype} and shape {shape}: {e}") from e
    return tensors


def encode_grpc(response_cls: Any, model: OipModel, outputs: Mapping[str, np.ndarray],
                request_id: str) -> Any:
    resp = response_cls(model_name=model.name, model_version=model.version, id=request_id)
    for name, a in outputs.items():
        dt = datatype_of(a)
        resp.outputs.add(name=name, datatype=dt, shape=list(a.shape))
        resp.raw_output_contents.append(_numpy_to_bytes(a) if dt == "BYTES" else
                                        np.ascontiguousarray(a).tobytes())
    return resp
