"""Request pacing for load generators: independent clients as Poisson processes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class PoissonPacer:
    """Start times of one client's requests as a Poisson process at `rate_per_s`: each gap
    exponential, the first one too (so clients started together are not in phase). A client
    behind schedule (answers slower than its gaps) goes again at once and catches up."""

    def __init__(self, rate_per_s: float, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.rng, self.clock = rate_per_s, rng or random.Random(), clock
        self.next_s = clock() + self.rng.expovariate(rate_per_s)

    def wait_s(self) -> float:
        """Seconds until the next request is due (0 when it is overdue), then schedule the
        one after it."""
        due = self.next_s
        self.next_s += self.rng.expovariate(self.rate)
        return max(0.0, due - self.clock())
