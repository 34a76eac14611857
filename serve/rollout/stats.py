"""Live numbers per (stage, variant): what replicas count and what the controller judges.

Each ingress replica counts into a `Tally` and hands its contents to the controller every
report interval (`drain`, plain dicts so that they cross Ray's process boundary as-is). The
controller merges them into one `Window` per variant for the current promotion step; a new
step or config starts new windows. Latencies and scores are kept as bounded samples (the
newest `sample_size`), so p99 and drift are computed on real values, in bounded memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_SIZE = 5000
REPORT_SAMPLE_CAP = 2000  # per variant per report: a burst cannot make a report unbounded


@dataclass
class _Count:
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    comparisons: int = 0
    compare_errors: int = 0
    overlap_sum: dict[int, float] = field(default_factory=dict)
    rbo_sum: float = 0.0
    score_delta_sum: float = 0.0
    latency_delta_sum: float = 0.0
    dropped: int = 0
    cost_requests: int = 0  # requests whose CPU was attributed, and its core-seconds
    cost_core_s: float = 0.0


class Tally:
    """Replica-side counters, keyed by (stage, variant). Not thread-safe: the replica's event
    loop is its one writer."""

    def __init__(self) -> None:
        self._c: dict[tuple[str, str], _Count] = {}

    def _of(self, stage: str, variant: str) -> _Count:
        c = self._c.get((stage, variant))
        if c is None:
            c = self._c[(stage, variant)] = _Count()
        return c

    def served(self, stage: str, variant: str, *, latency_ms: float | None, error: bool,
               score: float | None = None) -> None:
        c = self._of(stage, variant)
        c.requests += 1
        c.errors += int(error)
        if latency_ms is not None and len(c.latencies_ms) < REPORT_SAMPLE_CAP:
            c.latencies_ms.append(float(latency_ms))
        if score is not None and len(c.scores) < REPORT_SAMPLE_CAP:
            c.scores.append(float(score))

    def compared(self, stage: str, variant: str, *, overlaps: dict[int, float], rbo: float,
                 score_delta: float, latency_delta_ms: float) -> None:
        c = self._of(stage, variant)
        c.comparisons += 1
        for k, v in overlaps.items():
            c.overlap_sum[k] = c.overlap_sum.get(k, 0.0) + v
        c.rbo_sum += rbo
        c.score_delta_sum += score_delta
        c.latency_delta_sum += latency_delta_ms

    def cost(self, stage: str, variant: str, core_s: float) -> None:
        """One request's attributed core-seconds, every stage of it (serve/cost.py)."""
        c = self._of(stage, variant)
        c.cost_requests += 1
        c.cost_core_s += core_s

    def compare_failed(self, stage: str, variant: str) -> None:
        self._of(stage, variant).compare_errors += 1

    def dropped(self, stage: str, variant: str) -> None:
        self._of(stage, variant).dropped += 1

    def errors(self, stage: str, variant: str) -> int:
        c = self._c.get((stage, variant))
        return c.errors if c is not None else 0

    def drain(self) -> list[dict[str, Any]]:
        """Everything counted since the last drain, as plain dicts; the tally starts empty."""
        out = [{"stage": s, "variant": v, **c.__dict__,
                "overlap_sum": {str(k): x for k, x in c.overlap_sum.items()}}
               for (s, v), c in self._c.items()]
        self._c = {}
        return out


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = 10,
        eps: float = 1e-4) -> float:
    """Population stability index of `current` against `reference`, over the reference's
    decile bins. < 0.1 is read as no shift, 0.1-0.25 moderate, > 0.25 a shift."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if len(ref) == 0 or len(cur) == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    rp = np.maximum(r / len(ref), eps)
    cp = np.maximum(c / len(cur), eps)
    return float(np.sum((cp - rp) * np.log(cp / rp)))


class Window:
    """One variant's numbers over the current step, merged from every replica's reports."""

    def __init__(self, sample_size: int = SAMPLE_SIZE) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies_ms: deque[float] = deque(maxlen=sample_size)
        self.scores: deque[float] = deque(maxlen=sample_size)
        self.comparisons = 0
        self.compare_errors = 0
        self.overlap_sum: dict[int, float] = {}
        self.rbo_sum = 0.0
        self.score_delta_sum = 0.0
        self.latency_delta_sum = 0.0
        self.dropped = 0
        self.cost_requests = 0
        self.cost_core_s = 0.0

    def merge(self, r: dict[str, Any]) -> None:
        self.requests += int(r.get("requests", 0))
        self.errors += int(r.get("errors", 0))
        self.latencies_ms.extend(float(x) for x in r.get("latencies_ms", ()))
        self.scores.extend(float(x) for x in r.get("scores", ()))
        self.comparisons += int(r.get("comparisons", 0))
        self.compare_errors += int(r.get("compare_errors", 0))
        for k, v in (r.get("overlap_sum") or {}).items():
            self.overlap_sum[int(k)] = self.overlap_sum.get(int(k), 0.0) + float(v)
        self.rbo_sum += float(r.get("rbo_sum", 0.0))
        self.score_delta_sum += float(r.get("score_delta_sum", 0.0))
        self.latency_delta_sum += float(r.get("latency_delta_sum", 0.0))
        self.dropped += int(r.get("dropped", 0))
        self.cost_requests += int(r.get("cost_requests", 0))
        self.cost_core_s += float(r.get("cost_core_s", 0.0))

    def core_ms_per_request(self) -> float | None:
        """Mean attributed CPU of one request this variant served, core-milliseconds."""
        return (self.cost_core_s * 1000 / self.cost_requests if self.cost_requests
                else None)

    def p99_ms(self) -> float | None:
        return float(np.percentile(np.fromiter(self.latencies_ms, float), 99)) \
            if self.latencies_ms else None

    def mean(self, total: float) -> float | None:
        return total / self.comparisons if self.comparisons else None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "p99_ms": self.p99_ms(), "comparisons": self.comparisons,
            "compare_errors": self.compare_errors, "dropped": self.dropped,
            "overlap_at_k": {k: self.mean(v) for k, v in sorted(self.overlap_sum.items())},
            "rank_correlation": self.mean(self.rbo_sum),
            "score_delta": self.mean(self.score_delta_sum),
            "latency_delta_ms": self.mean(self.latency_delta_sum),
            "cost_requests": self.cost_requests,
            "core_ms_per_request": self.core_ms_per_request(),
        }
