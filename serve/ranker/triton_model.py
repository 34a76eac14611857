"""The ranker as a Triton Python-backend model (copied into the model repository as
`ranker/1/model.py` by `serve.ranker.server`).

Triton's Python backend runs this file in a stub process next to tritonserver and hands it
the requests of one dynamic batch through shared memory. `execute` concatenates them, runs
the bundle's TorchScript ranker once, and splits the logits back per request. Compared with
binding a Python function through PyTriton, this removes one inter-process hop per call
(PyTriton relays each batch from the stub to the user's process over ZeroMQ): 2.9 ms instead
of 7.2 ms per 395-candidate call on 2 CPU cores (BENCHMARKS.md).

Parameters (from config.pbtxt, or the JSON config of a version loaded at run time):
`model_path` (TorchScript; empty: `model.pt` in the model version's own directory of Triton's
repository, where a version loaded at run time sends it), `model_sha256` (when set, the file
is checked against it before loading; a mismatch fails the load), `keys` (input names in
the model's argument order), `device` (`cpu`, `cuda` or `auto`), `intra_op_threads`,
`cpu_class` (`idle`: every thread of this stub process moves into Linux's idle scheduling
class, for a version only shadows call: it then runs on CPU time the serving path leaves;
`normal`, the default, changes nothing).

Only numpy and torch are imported at module level besides Triton's own utilities, which
exist only inside the stub; the batching logic is `run_batch`, a pure function with unit
tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def run_batch(forward: Callable[..., np.ndarray], keys: Sequence[str],
              requests: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """One forward pass over several requests: inputs concatenated along the batch axis in
    `keys` order (the first, `dense`, is [n, d]; the id inputs after it arrive as [n, 1] and
    the model takes [n]); the output split back, one array per request, in request order."""
    if not requests:
        return []
    sizes = [len(r[keys[0]]) for r in requests]
    for i, r in enumerate(requests):
        for k in keys:
            if len(r[k]) != sizes[i]:
                raise ValueError(f"request {i}: input {k!r} has {len(r[k])} rows, "
                                 f"{keys[0]!r} has {sizes[i]}")
    columns = [np.concatenate([r[keys[0]] for r in requests])]
    columns += [np.concatenate([r[k].reshape(-1) for r in requests]) for k in keys[1:]]
    out = forward(*columns)
    return np.split(out, np.cumsum(sizes)[:-1])


def idle_cpu_class() -> bool:
    """Move every thread of this process into the idle scheduling class (SCHED_IDLE; threads
    started later inherit it). True when it took; False where the platform has no such
    class or refuses it. Lowering needs no privilege and cannot be undone without it: Triton
    starts a new stub process when it loads the model again at another class. (The idle
    half of `serve.offpath.lower_priority`, repeated: this file runs in Triton's stub, where
    the serve package need not be installed.)"""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that just ended
            continue
        except OSError:
            return False
    return True


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def torch_forward(model: torch.jit.ScriptModule, device: torch.device
                  ) -> Callable[..., np.ndarray]:
    """numpy arrays in, float32 logits out, on `device`, without autograd."""

    def forward(*arrays: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    return forward


SENT_MODEL_FILE = "model.pt"


def sent_model_path(args: dict[str, Any]) -> str:
    """Where a model loaded with its files (`load_model(files={"file:1/model.pt": ...})`)
    finds its TorchScript: its version's directory in the repository Triton made for it."""
    return os.path.join(args["model_repository"], str(args["model_version"]), SENT_MODEL_FILE)


class TritonPythonModel:
    """Triton Python-backend entry points: initialize / execute / finalize."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = {k: v["string_value"]
                  for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.keys = params["keys"].split(",")
        path = params.get("model_path") or sent_model_path(args)
        expected = params.get("model_sha256", "")
        if expected:  # a version loaded at run time checks its own file before loading it
            actual = file_sha256(path)
            if actual != expected:
                raise ValueError(f"{path}: checksum mismatch (manifest sha256 "
                                 f"{expected[:12]}…, file {actual[:12]}…); refusing the model")
        device = params.get("device", "cpu")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        else:
            torch.set_num_threads(int(params.get("intra_op_threads", "1")))
            torch.set_num_interop_threads(1)
        dev = torch.device(device)
        self.model = torch.jit.load(path, map_location=dev).eval()
        self._forward = torch_forward(self.model, dev)
        if params.get("cpu_class", "normal") == "idle":
            idle_cpu_class()  # refused (a seccomp profile): the model runs as any other

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        inputs = [{k: pb_utils.get_input_tensor_by_name(r, k).as_numpy() for k in self.keys}
                  for r in requests]
        try:
            outs = run_batch(self._forward, self.keys, inputs)
        except Exception as e:  # answer every request of the batch with the error
            err = pb_utils.TritonError(f"ranker failed: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", o)])
                for o in outs]

    def finalize(self) -> None:
        del self._forward, self.model
