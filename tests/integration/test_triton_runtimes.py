"""Both ways `funnel triton` hosts the ranker answer with the bundle's own model: logits over
gRPC equal the in-process TorchScript's, for one request and for several that Triton's
dynamic batcher may merge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from benchmarks.triton_batching import DEFAULT_CONFIG, TritonProcess
from funnel.contracts.bundle import verify_bundle
from funnel.contracts.model_io import RANKER_KEYS
from serve.ranker.client import LocalRanker, TritonRanker

pytestmark = pytest.mark.integration


def _request(rows: int, n_dense: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ranker inputs in the wire shape ([n, 1] ids). Ids 0 and 1 exist in every vocabulary;
    drawn per key and row, so a swapped or misaligned input changes the logits."""
    out = {"dense": rng.normal(size=(rows, n_dense)).astype(np.float32)}
    for k in RANKER_KEYS[1:]:
        out[k] = rng.integers(0, 2, size=(rows, 1), dtype=np.int64)
    return out


@pytest.mark.parametrize("runtime", ["python_backend", "pytriton"])
def test_triton_logits_equal_the_bundles_model(tiny_bundle: Path, runtime: str) -> None:
    b = verify_bundle(tiny_bundle)
    meta = b.manifest["models"]["ranker"]
    local = LocalRanker(str(b.file(meta["path"])))
    rng = np.random.default_rng(0)
    requests = [_request(n, len(meta["dense_features"]), rng) for n in (37, 1, 400, 5)]

    with TritonProcess(str(b.path), dynamic_batching=True, base_config=DEFAULT_CONFIG,
                       runtime=runtime) as t:
        async def ask() -> list[np.ndarray]:
            r = TritonRanker(f"127.0.0.1:{t.grpc_port}", timeout_s=10)
            try:
                return list(await asyncio.gather(*(r.logits(q) for q in requests)))
            finally:
                await r.close()

        answers = asyncio.run(ask())
    for q, got in zip(requests, answers, strict=True):
        want = local.logits_sync({k: v.reshape(len(v), -1) if k == "dense" else v.reshape(-1)
                                  for k, v in q.items()})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
