"""The Open Inference Protocol data plane and codecs, without a transport."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

from serve.errors import InvalidTensor, ModelNotFound
from serve.oip import (
    OipDataPlane,
    OipModel,
    TensorSpec,
    decode_grpc,
    decode_rest,
    encode_grpc,
    encode_rest,
    wants_binary_output,
)


async def _double(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": t["x"] * 2}


async def _ready() -> bool:
    return True


MODEL = OipModel(name="m", version="1", platform="test",
                 inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("ids", "INT64", (-1, 1))),
                 outputs=(TensorSpec("y", "FP32", (-1, 3)),), infer=_double, ready=_ready)
DP = OipDataPlane([MODEL], server_version="0.1")


def _ok() -> dict[str, np.ndarray]:
    return {"x": np.ones((2, 3), np.float32), "ids": np.ones((2, 1), np.int64)}


def test_infer_runs_after_the_checks() -> None:
    out = asyncio.run(DP.infer("m", _ok()))
    assert out["y"].tolist() == [[2.0] * 3] * 2


@pytest.mark.parametrize(("tensors", "message"), [
    ({"x": np.ones((2, 3), np.float32)}, "'ids' is missing"),
    ({**_ok(), "z": np.ones(1)}, "no input tensor 'z'"),
    ({**_ok(), "x": np.ones((2, 3), np.float64)}, "'x' must be FP32, got FP64"),
    ({**_ok(), "x": np.ones((2, 4), np.float32)}, r"'x' has shape \[2, 4\]; expected \[-1, 3\]"),
    ({**_ok(), "ids": np.ones((3, 1), np.int64)}, "'ids' has 3 rows; the other inputs have 2"),
])
def test_bad_tensors_are_named(tensors: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidTensor, match=message):
        DP.check("m", tensors)


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(ModelNotFound, match="unknown model 'q'; served: \\['m'\\]"):
        DP.model_metadata("q")
    assert DP.model_metadata("m")["inputs"][0] == {"name": "x", "datatype": "FP32",
                                                   "shape": [-1, 3]}


def test_rest_json_and_binary_inputs_decode_alike() -> None:
    body = json.dumps({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "bc"]}]}).encode()
    _, t = decode_rest(body, None)
    assert t["x"].tolist() == [[1.0, 2.0, 3.0]] and t["s"].tolist() == [b"a", b"bc"]
    raw_x = np.asarray([[1, 2, 3]], np.float32).tobytes()
    raw_s = struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    head = json.dumps({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32",
         "parameters": {"binary_data_size": len(raw_x)}},
        {"name": "s", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(raw_s)}}]}).encode()
    _, b = decode_rest(head + raw_x + raw_s, len(head))
    assert b["x"].tolist() == t["x"].tolist() and b["s"].tolist() == t["s"].tolist()


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not valid JSON"),
    (b'{"inputs": []}', "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP16", "data": [1, 2]}]}',
     "datatype 'FP16' is not supported"),
    (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}',
     "'x': data does not fit"),
    # found by the fuzzer (each was a 500 before): a datatype that is not a string, a
    # parameters object that is not an object, a negative binary size, non-string BYTES
    (b'{"inputs": [{"name": "", "shape": [], "datatype": {}, "data": [null, null]}]}',
     r"inputs\[0\].datatype"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": [1]}]}',
     r"inputs\[0\].parameters"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
     b'"parameters": {"binary_data_size": -4}}]}', "binary_data_size"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [{}]}]}',
     "list of strings"),
    (b'{"inputs": [{"name": "x", "shape": [true], "datatype": "FP32", "data": [1]}]}',
     r"inputs\[0\].shape"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
     b'"outputs": ["y"]}', r"outputs\[0\]"),
])
def test_rest_decode_errors(body: bytes, message: str) -> None:
    with pytest.raises(InvalidTensor, match=message):
        decode_rest(body, None)


def test_rest_encode_binary_when_asked() -> None:
    out = {"y": np.asarray([[1.5, 2.5]], np.float32)}
    body, hl = encode_rest(MODEL, out, request_id="r", binary=False)
    assert hl is None and json.loads(body)["outputs"][0]["data"] == [1.5, 2.5]
    body, hl = encode_rest(MODEL, out, request_id="r", binary=True)
    assert hl is not None
    head = json.loads(body[:hl])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(body[hl:], np.float32).tolist() == [1.5, 2.5]
    assert wants_binary_output({"parameters": {"binary_data_output": True}})
    assert wants_binary_output({"outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    assert not wants_binary_output({})


def test_grpc_round_trip_with_the_stock_protos() -> None:
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="m", id="7")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    req.raw_input_contents.append(np.asarray([[1, 2, 3]], np.float32).tobytes())
    req.inputs.add(name="s", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(struct.pack("<I", 2) + b"hi")
    t = decode_grpc(req)
    assert t["x"].tolist() == [[1.0, 2.0, 3.0]] and t["s"].tolist() == [b"hi"]
    typed = service_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="ids", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend(
        [4, 5])
    assert decode_grpc(typed)["ids"].tolist() == [[4], [5]]
    resp = encode_grpc(service_pb2.ModelInferResponse, MODEL,
                       {"y": np.asarray([[0.5]], np.float32)}, "7")
    assert (resp.model_name, resp.id, list(resp.outputs[0].shape)) == ("m", "7", [1, 1])
    assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == [0.5]
