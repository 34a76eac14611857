"""Ranker backends behind one interface (`Ranker`): Triton over gRPC (`ranker.backend:
triton`, the default) and the bundle's TorchScript in-process (`ranker.backend: local`, no
Triton; also the in-process benchmark floor). Both take the feature module's ranker inputs
and return per-task logits [n, tasks]. `make_ranker` is the one place that picks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from funnel.contracts.model_io import RANKER_KEYS
from serve import cost
from serve.errors import RankerUnavailable

if TYPE_CHECKING:
    from serve.config import RankerSettings


class Ranker(Protocol):
    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class LocalRanker:
    """The bundle's TorchScript ranker called in-process (no Triton)."""

    def __init__(self, path: str) -> None:
        self._model = torch.jit.load(path).eval()

    def logits_sync(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = self._model(*(torch.from_numpy(np.ascontiguousarray(inputs[k]))
                                for k in RANKER_KEYS))
        return np.asarray(out.numpy(), dtype=np.float32)

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """As TritonRanker: any failure is RankerUnavailable (the feed keeps retrieval order
        and says `degraded: ["ranker"]`), never a failed request. Its CPU is the request's
        `ranker` cost, measured."""
        c = cost.current()
        try:
            with cost.section(cost.RANKER, c.ranker_model if c is not None else "", c):
                return self.logits_sync(inputs)
        except Exception as e:
            raise RankerUnavailable(f"in-process ranker: {type(e).__name__}: {e}") from e


_TRITON_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


class TritonRanker:
    """tritonclient's asyncio gRPC client against the `ranker` model.

    Scalar id inputs travel as [n, 1] (the model config declares them dims [1], batched).
    Any failure, a timeout included, becomes RankerUnavailable, which the pipeline turns into
    retrieval order and `degraded: ["ranker"]`.
    """

    def __init__(self, url: str, *, model_name: str = "ranker", timeout_s: float = 0.15) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._mod = grpcclient
        self._url = url
        self._client: Any = None
        self._model = model_name
        self._timeout_s = timeout_s

    def _get_client(self) -> Any:
        # Created on first use, inside the event loop that will use it (a grpc.aio channel
        # belongs to the loop it was made on). Reconnect backoff is capped at 1 s: gRPC's
        # default grows to 120 s, which would keep the ranker "down" long after Triton is back.
        if self._client is None:
            self._client = self._mod.InferenceServerClient(url=self._url, channel_args=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ])
        return self._client

    async def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The request is charged its rows (priced by Triton's compute time per row,
        `serve.cost.TritonRates`) and the CPU of building and reading the call here."""
        g = self._mod
        req = []
        c = cost.current()
        cpu = cost.Lap(c)
        for k in RANKER_KEYS:
            a = np.ascontiguousarray(inputs[k])
            if a.ndim == 1:
                a = a.reshape(-1, 1)
            t = g.InferInput(k, list(a.shape), _TRITON_DTYPES[a.dtype])
            t.set_data_from_numpy(a)
            req.append(t)
        cpu.charge(cost.INGRESS)
        try:
            res = await asyncio.wait_for(
                self._get_client().infer(self._model, req,
                                   outputs=[g.InferRequestedOutput("logits")]),
                timeout=self._timeout_s)
        except TimeoutError as e:
            raise RankerUnavailable(f"Triton did not answer within {self._timeout_s * 1000:.0f}"
                                    " ms") from e
        except Exception as e:
            raise RankerUnavailable(f"Triton call failed: {type(e).__name__}: {e}") from e
        cpu.mark()
        out = res.as_numpy("logits")
        if out is None:
            raise RankerUnavailable("Triton answered without 'logits'")
        if c is not None:
            c.ranker_rows(self._model, len(out))
        cpu.charge(cost.INGRESS)
        return np.asarray(out, dtype=np.float32)

    async def compute_stats(self, model: str | None = None) -> tuple[int, int]:
        """Triton's cumulative (compute ns, rows) for `model` (this one by default), every
        version of it."""
        stats = await asyncio.wait_for(self._get_client().get_inference_statistics(
            model or self._model, as_json=True), 2.0)
        return cost.triton_compute(stats)

    async def on_gpu(self, model: str | None = None) -> bool:
        """Whether Triton runs `model` (this one by default) on a GPU."""
        config = await asyncio.wait_for(self._get_client().get_model_config(
            model or self._model, as_json=True), 2.0)
        return cost.triton_on_gpu(config)

    @property
    def model_name(self) -> str:
        return self._model

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._get_client().is_model_ready(self._model), 1.0))
        except Exception:
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_ranker(settings: RankerSettings, *, bundle: Path, model_name: str) -> Ranker:
    """The ranker of the bundle at `bundle` on the configured backend: Triton's model
    `model_name` (Triton loads the bundle's ranker itself), or the bundle's TorchScript loaded
    here after its checksums are verified."""
    if settings.backend == "local":
        from funnel.contracts.bundle import verify_bundle

        b = verify_bundle(bundle)
        return LocalRanker(str(b.file(b.manifest["models"]["ranker"]["path"])))
    return TritonRanker(settings.url, model_name=model_name,
                        timeout_s=settings.timeout_ms / 1000.0)
