"""The soak's load (`funnel bench soak`), run by locust in its own process: 90 % feed, 10 %
moderation, each user at `FUNNEL_SOAK_USER_RPS` requests/s (0: as fast as answers come).

Each paced user starts its requests as a Poisson process (exponential gaps, a random first
one), so the users together send a Poisson stream at the total rate, as independent clients
do. Not locust's `constant_throughput`: users spawned together keep the same phase under it,
and 24 of them arrive as one burst of 24 every 1/rate seconds. Measured on the 2-core CPU
stack: 24 such users at 10.7 req/s in all got p50 481 ms with 39 % of answers degraded
(sources past their 50 ms budget); 24 Poisson users at 17.1 req/s got p50 76 ms, 1.2 %.

Every request is written to `FUNNEL_SOAK_LOG` as one CSV line: wall time at its start, route,
status (0: no answer), latency ms, items served (feed), the request id (the impression log
keys its rows by it; ids start with `FUNNEL_SOAK_PREFIX`) and the stages the response says
were degraded (`|`-joined; a fallback answered, e.g. the ranker timed out).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, events, task

from benchmarks.pacing import PoissonPacer

USER_RPS = float(os.environ.get("FUNNEL_SOAK_USER_RPS", "0"))
PREFIX = os.environ.get("FUNNEL_SOAK_PREFIX", "soak")
USERS = int(os.environ.get("FUNNEL_SOAK_FEED_USERS", "900"))
TEXTS = ("our team won the match last night", "you people are vermin and should disappear",
         "send me your bank password to claim the prize", "lovely sunset at the beach",
         "new recipe: lentil soup with lemon")
_out = open(os.environ.get("FUNNEL_SOAK_LOG", "soak-requests.csv"), "a",  # noqa: SIM115
            buffering=1 << 16)


@events.quitting.add_listener
def _close(**_: Any) -> None:
    _out.close()


class FeedUser(FastHttpUser):
    pacer: PoissonPacer | None = None

    def on_start(self) -> None:
        if USER_RPS > 0:
            self.pacer = PoissonPacer(USER_RPS)
            time.sleep(self.pacer.wait_s())  # cooperative: locust patches it

    def wait_time(self) -> float:
        return self.pacer.wait_s() if self.pacer is not None else 0.0

    def _post(self, route: str, body: dict[str, Any], count_items: bool) -> None:
        rid = f"{PREFIX}-{uuid.uuid4().hex[:16]}"
        t0 = time.time()
        p0 = time.perf_counter()
        status, items, degraded = 0, 0, ""
        with self.client.post(route, json=body, headers={"x-request-id": rid},
                              catch_response=True, name=route) as r:
            status = int(r.status_code or 0)
            if status == 200:
                try:
                    body = r.json()
                    items = len(body["items"]) if count_items else 0
                    degraded = "|".join(body.get("degraded") or [])
                    r.success()
                except (ValueError, KeyError, TypeError):
                    r.failure("unreadable body")
            else:
                r.failure(f"HTTP {status}")
        _out.write(f"{t0:.3f},{route},{status},{(time.perf_counter() - p0) * 1000:.2f},"
                   f"{items},{rid},{degraded}\n")

    @task(9)
    def feed(self) -> None:
        self._post("/v1/feed", {"user_id": random.randint(1, USERS), "limit": 20}, True)

    @task(1)
    def moderate(self) -> None:
        self._post("/v1/moderate", {"content_id": f"{PREFIX}-c-{uuid.uuid4().hex[:12]}",
                                    "text": random.choice(TEXTS)}, False)
