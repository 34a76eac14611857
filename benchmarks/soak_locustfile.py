"""The soak's load (`funnel bench soak`), run by locust in its own process: 90 % feed, 10 %
moderation, each user at `FUNNEL_SOAK_USER_RPS` requests/s (0: as fast as answers come).

Every request is written to `FUNNEL_SOAK_LOG` as one CSV line: wall time at its start, route,
status (0: no answer), latency ms, items served (feed) and the request id (the impression log
keys its rows by it). Request ids start with `FUNNEL_SOAK_PREFIX`.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, constant_throughput, events, task

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
    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else between(0, 0)

    def _post(self, route: str, body: dict[str, Any], count_items: bool) -> None:
        rid = f"{PREFIX}-{uuid.uuid4().hex[:16]}"
        t0 = time.time()
        p0 = time.perf_counter()
        status, items = 0, 0
        with self.client.post(route, json=body, headers={"x-request-id": rid},
                              catch_response=True, name=route) as r:
            status = int(r.status_code or 0)
            if status == 200:
                if count_items:
                    try:
                        items = len(r.json()["items"])
                    except (ValueError, KeyError, TypeError):
                        r.failure("unreadable body")
                r.success()
            else:
                r.failure(f"HTTP {status}")
        _out.write(f"{t0:.3f},{route},{status},{(time.perf_counter() - p0) * 1000:.2f},"
                   f"{items},{rid}\n")

    @task(9)
    def feed(self) -> None:
        self._post("/v1/feed", {"user_id": random.randint(1, USERS), "limit": 20}, True)

    @task(1)
    def moderate(self) -> None:
        self._post("/v1/moderate", {"content_id": f"{PREFIX}-c-{uuid.uuid4().hex[:12]}",
                                    "text": random.choice(TEXTS)}, False)
