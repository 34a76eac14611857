"""`ranker.backend`: Triton or the bundle's TorchScript in-process, picked in one place."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from serve.config import RankerSettings
from serve.errors import RankerUnavailable
from serve.ranker.client import LocalRanker, TritonRanker, make_ranker
from serve.ranker.versions import InProcessRankers


class _Sum(torch.nn.Module):
    def forward(self, dense: torch.Tensor, user_hash: torch.Tensor, item_hash: torch.Tensor,
                topic: torch.Tensor, modality: torch.Tensor, age_band: torch.Tensor
                ) -> torch.Tensor:
        return dense.sum(1, keepdim=True).repeat(1, 2) + topic.to(dense.dtype)


def _inputs(n: int) -> dict[str, np.ndarray]:
    ids = {k: np.arange(n, dtype=np.int64).reshape(n, 1)
           for k in ("user_hash", "item_hash", "topic", "modality", "age_band")}
    return {"dense": np.ones((n, 3), np.float32), **ids}


def test_the_backend_defaults_to_triton_and_rejects_others_naming_the_field() -> None:
    assert RankerSettings().backend == "triton"
    assert RankerSettings(backend="local").backend == "local"
    with pytest.raises(ValidationError, match="backend"):
        RankerSettings(backend="gpu")  # type: ignore[arg-type]


def test_local_ranker_scores_in_process(tmp_path: Path) -> None:
    path = tmp_path / "ranker.pt"
    torch.jit.script(_Sum()).save(str(path))
    out = asyncio.run(LocalRanker(str(path)).logits(_inputs(3)))
    np.testing.assert_allclose(out, [[3, 3], [4, 4], [5, 5]])


def test_a_failing_local_ranker_is_unavailable_not_a_failed_request(tmp_path: Path) -> None:
    path = tmp_path / "ranker.pt"
    torch.jit.script(_Sum()).save(str(path))
    bad = _inputs(2)
    del bad["topic"]
    with pytest.raises(RankerUnavailable, match="in-process ranker"):
        asyncio.run(LocalRanker(str(path)).logits(bad))


def test_make_ranker_gives_triton_a_client_and_checks_a_local_bundle(tmp_path: Path) -> None:
    triton = make_ranker(RankerSettings(), bundle=tmp_path, model_name="ranker-v2")
    assert isinstance(triton, TritonRanker)
    from funnel.contracts.errors import FunnelError

    with pytest.raises(FunnelError):  # not a bundle: refused before anything loads
        make_ranker(RankerSettings(backend="local"), bundle=tmp_path, model_name="ranker")


def test_in_process_rankers_have_nothing_to_load_into_triton() -> None:
    rankers = InProcessRankers()
    assert rankers.ensure(["v2", "v3"], ["v3"]) == []
    rankers.retire(set())
    assert rankers.loaded == {}
