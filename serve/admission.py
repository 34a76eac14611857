"""Admission control: a bound on the feed requests one replica works on at once.

A replica's requests share one event loop and, on a small machine, one or two cores. Past the
load the replica can sustain, more concurrency buys nothing but queueing: every request in
flight waits for the CPU work of the others, sources and the ranker run out of budget, and
every answer is late or degraded. The gate refuses a request at once instead when
`max_inflight` are already in flight (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED),
and counts it, so a client backs off or tries another replica while the admitted requests
keep their latency. How the bound was chosen: docs/performance.md.

Pure logic: one replica's asyncio loop enters and leaves; no lock is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from serve.errors import Overloaded


class AdmissionGate:
    """`with gate.admit(): ...` (or `enter`/`leave`) around one request. `max_inflight` 0:
    no bound."""

    def __init__(self, max_inflight: int, retry_after_s: float = 1.0) -> None:
        if max_inflight < 0:
            raise ValueError(f"max_inflight must be >= 0, got {max_inflight}")
        if retry_after_s <= 0:
            raise ValueError(f"retry_after_s must be > 0, got {retry_after_s}")
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.admitted = 0
        self.shed = 0

    def enter(self) -> None:
        """One more request in flight; raises Overloaded (nothing entered) at the bound.
        Every `enter` that returns is paired with one `leave`."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            self.shed += 1
            raise Overloaded(f"this replica is at its bound of {self.max_inflight} feed "
                             f"requests in flight; retry after {self.retry_after_s:g} s",
                             retry_after_s=self.retry_after_s)
        self.inflight += 1
        self.admitted += 1

    def leave(self) -> None:
        self.inflight -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()
