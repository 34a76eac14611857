"""The ranker on Triton: PyTriton (which bundles tritonserver) hosting the bundle's
TorchScript multi-task ranker, with Triton's dynamic batcher in front of it.

`funnel triton` runs this in its own process; `funnel serve` starts that process and
restarts it if it dies, so Triton can be stopped and restarted (a fault test does exactly
that) while the Serve app keeps answering, in retrieval order, with `degraded: ["ranker"]`.

The model runs on CUDA when available (`device: auto`). Requests are [n, ...] tensors in the
Open Inference Protocol; Triton's dynamic batcher merges concurrent requests up to
`max_batch_size`, waiting at most `max_queue_delay_us` for a preferred batch size.
"""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from serve.config import TritonSettings
from training.bundle import verify_bundle
from training.loops import RANKER_KEYS
from training.models.ranker import TASKS

log = logging.getLogger("funnel.triton")


def _device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def prepare_environment() -> None:
    """The Triton Python-backend stub links the system libpython; with a venv interpreter
    whose libpython differs it crashes. Point the loader at the running interpreter's."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def make_infer(model: torch.jit.ScriptModule, device: torch.device
               ) -> Callable[..., dict[str, np.ndarray]]:
    """The batched infer function: id inputs arrive as [n, 1] and the model wants [n]."""

    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        tensors = []
        for k in RANKER_KEYS:
            a = inputs[k]
            if k != "dense":
                a = a.reshape(-1)
            tensors.append(torch.from_numpy(np.ascontiguousarray(a)).to(device))
        with torch.no_grad():
            logits = model(*tensors)
        return {"logits": logits.float().cpu().numpy()}

    return infer


def run_triton(bundle_path: str, settings: TritonSettings, *,
               on_ready: Callable[[], None] | None = None) -> None:
    """Start Triton with the bundle's ranker and block until it is stopped (SIGINT/SIGTERM)."""
    prepare_environment()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    b = verify_bundle(bundle_path)
    meta = b.manifest["models"]["ranker"]
    device = _device(settings.device)
    if device.type == "cpu":
        from serve.loader import limit_threads

        limit_threads(settings.intra_op_threads)
    model = torch.jit.load(str(b.file(meta["path"])), map_location=device).eval()
    n_dense = len(meta["dense_features"])
    inputs = [Tensor(name="dense", dtype=np.float32, shape=(n_dense,)),
              *(Tensor(name=k, dtype=np.int64, shape=(1,)) for k in RANKER_KEYS[1:])]
    batcher: Any = (DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us,
                                   preferred_batch_size=settings.preferred_batch_sizes)
                    if settings.dynamic_batching else None)
    config = TritonConfig(http_address=settings.host, http_port=settings.http_port,
                          grpc_address=settings.host, grpc_port=settings.grpc_port,
                          metrics_port=settings.metrics_port, log_verbose=0,
                          exit_timeout_secs=5)
    # SIGTERM (what a supervisor or Kubernetes sends) takes the same path as Ctrl-C: PyTriton's
    # serve() catches KeyboardInterrupt and stops tritonserver, waiting for it to exit, so
    # this process ends only once Triton is gone. The default SIGTERM action would end it at
    # once and leave tritonserver to shut down on its own, after we have said "stopped".
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Triton(config=config) as triton:
        triton.bind(model_name="ranker", infer_func=batch(make_infer(model, device)),
                    inputs=inputs,
                    outputs=[Tensor(name="logits", dtype=np.float32, shape=(len(TASKS),))],
                    config=ModelConfig(max_batch_size=settings.max_batch_size,
                                       batcher=batcher),
                    strict=True)
        log.info("triton: ranker of bundle %s on %s, gRPC %s:%d, HTTP %s:%d, batching %s",
                 b.version, device, settings.host, settings.grpc_port, settings.host,
                 settings.http_port, "dynamic" if settings.dynamic_batching else "off")
        if on_ready:
            on_ready()
        triton.serve()
