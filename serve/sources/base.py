"""The candidate-source interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serve.types import Candidate


@dataclass(frozen=True)
class SourceQuery:
    """What a source may use: the user, whether the catalog knows them, their two-tower
    vector (None for a cold-start user) and the serving clock."""

    user_id: int
    known_user: bool
    user_vec: np.ndarray | None
    now_s: float


class CandidateSource(Protocol):
    """Proposes up to `k` items for a user, best first by the source's own score. Sources
    are synchronous and CPU-bound (faiss and numpy release the GIL); the pipeline runs them
    concurrently in threads, each under its own timeout."""

    name: str
    cold_start: bool  # serves users the catalog does not know

    def generate(self, query: SourceQuery, k: int) -> list[Candidate]: ...
