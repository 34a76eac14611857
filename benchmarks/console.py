"""`funnel bench console`: the review queue page's weight and time to interactive with 500
pending items, in headless Chromium.

A real SQLite review database holds 500 pending items (synthetic post texts, 80 to 400
characters, some with an image); the console's app (the same FastAPI app the Serve replica
runs, served here by uvicorn in this process) answers; Chromium signs in and loads the queue
page, in interleaved rounds of two views: the default page (`console.page_size`, 50 rows)
and one page of all 500.

Per load, from the browser's own timing (Navigation Timing 2, Paint Timing, Long Tasks):
- weight: the HTML's bytes and the page's (HTML, CSS and JS bodies), and what a repeat load
  transfers (the CSS and JS then come from the browser's cache);
- time to first byte, first contentful paint, DOMContentLoaded, load;
- time to interactive: the later of DOMContentLoaded, first contentful paint and the end of
  the last long task (> 50 ms on the main thread), Lighthouse's definition without its
  network-quiet window (the page makes no request after it loads).
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

LONGTASKS = """
window.__longtasks = [];
new PerformanceObserver(l => { for (const e of l.getEntries())
  window.__longtasks.push([e.startTime, e.duration]); })
  .observe({type: 'longtask', buffered: true});
"""
TIMING = """
const n = performance.getEntriesByType('navigation')[0];
const r = performance.getEntriesByType('resource');
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
const lt = window.__longtasks || [];
return {html_transfer: n.transferSize, html_body: n.encodedBodySize,
        html_decoded: n.decodedBodySize,
        resources: r.map(e => [e.name, e.transferSize, e.encodedBodySize]),
        ttfb: n.responseStart - n.requestStart, dom_interactive: n.domInteractive,
        dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,
        fcp: fcp ? fcp.startTime : null, long_tasks: lt,
        rows: document.querySelectorAll('table.queue tbody tr').length};
"""
_SAMPLE = ("the match last night was something else and everyone in the stadium knew it "
           "new recipe for slow cooked beans with garlic thyme and a little smoked paprika "
           "traffic on the ring road again this morning three lanes closed since six am "
           "photos from the hike up the ridge the fog lifted just before the summit")
WORDS = _SAMPLE.split()


def fill(url: str, n: int, *, seed: int = 7) -> None:
    from serve.review.store import SqlReviewStore

    rng = random.Random(seed)
    store = SqlReviewStore(url)
    start = datetime.now(UTC) - timedelta(hours=6)
    for k in range(n):
        words = rng.randint(15, 70)
        text = " ".join(rng.choice(WORDS) for _ in range(words))[:400]
        labels = rng.sample(["hate", "harassment", "spam", "nudity"], rng.randint(1, 2))
        store.record_model_decision(
            content_id=f"post-{k}", decision="review", model="moderation_text",
            policy_version=rng.choice(["2026-11-30", "2026-12-05"]), request_id=f"b-{k}",
            text=text, has_image=rng.random() < 0.2, author_id=rng.randint(1, 10_000),
            scores={lb: round(rng.uniform(0.5, 0.9), 3) for lb in labels},
            flagged_labels=labels, reasons=[f"{lb}: review" for lb in labels],
            model_versions={"moderation_text": "v1"},
            at=start + timedelta(seconds=30 * k))
    store.close()


def serve_console(url: str, page_size: int) -> tuple[str, Any, Callable[[], None]]:
    """The console's app on a free loopback port: (base URL, the console, stop)."""
    import os

    import uvicorn

    from benchmarks.triton_batching import free_port
    from serve.config import parse_app_args
    from serve.console.state import build_console
    from serve.http.asgi import build_http_app
    from serve.review.store import SqlReviewStore
    from serve.services.admin import AdminAuth
    from serve.services.review import ReviewService
    from serve.users.accounts import hash_password
    from serve.users.store import UserStore

    os.environ.setdefault("FUNNEL_CONSOLE_SECRET", "bench-console-secret-0123456789")
    store = SqlReviewStore(url)
    users = UserStore(engine=store.engine, migrate=False)
    if users.get("bench") is None:
        users.add("bench", role="admin", password_hash=hash_password("bench-password-1"))
    args = parse_app_args({"bundle": "unused", "console": {"page_size": page_size}})
    auth = AdminAuth("", "FUNNEL_ADMIN_TOKEN", users=users)

    async def refresh() -> None:
        return None

    console = build_console(args.console, auth=auth,
                            labels=("hate", "harassment", "spam", "nudity"), thresholds={})
    services = SimpleNamespace(args=args, admin=auth, console=console,
                               review=ReviewService(store, refresh_verdicts=refresh),
                               rollout_controller=None, rollout=None,
                               background=SimpleNamespace(ensure=lambda: None))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_http_app(services), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        store.close()

    return f"http://127.0.0.1:{port}", console, stop


def measure(driver: Any, page: str) -> dict[str, Any]:
    driver.get(page)
    deadline = time.monotonic() + 5  # paint entries arrive a frame after the load
    while not driver.execute_script(
            "return performance.getEntriesByName('first-contentful-paint').length") \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    t = driver.execute_script(TIMING)
    ends = [s + d for s, d in t["long_tasks"]]
    tti = max([t["dcl"], t["fcp"] or 0.0, *ends])
    return {"html_bytes": t["html_body"], "html_decoded_bytes": t["html_decoded"],
            "weight_bytes": t["html_body"] + sum(r[2] for r in t["resources"]),
            "transferred_bytes": t["html_transfer"] + sum(r[1] for r in t["resources"]),
            "resources": {Path(r[0]).name: r[2] for r in t["resources"]},
            "ttfb_ms": round(t["ttfb"], 2), "fcp_ms": t["fcp"] and round(t["fcp"], 2),
            "dcl_ms": round(t["dcl"], 2), "load_ms": round(t["load"], 2),
            "tti_ms": round(tti, 2), "long_tasks": len(ends), "rows": t["rows"]}


def run(*, items: int = 500, rounds: int = 12, say: Callable[[str], None] = print
        ) -> dict[str, Any]:
    from benchmarks.chromium import chromium

    work = Path(tempfile.mkdtemp(prefix="funnel-bench-console-"))
    url = f"sqlite:///{work / 'review.sqlite3'}"
    say(f"queueing {items} review items")
    fill(url, items)
    base, console, stop = serve_console(url, page_size=50)
    views = {"default page (50 rows)": 50, f"all {items} rows": items}
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in views}
    cold: dict[str, dict[str, Any]] = {}
    try:
        with chromium() as driver:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                   {"source": LONGTASKS})
            driver.get(f"{base}/console/login")
            driver.find_element("id", "name").send_keys("bench")
            driver.find_element("id", "password").send_keys("bench-password-1")
            driver.find_element("css selector", "form.login button").click()
            while "/console/login" in driver.current_url:
                time.sleep(0.05)
            for r in range(rounds + 1):  # round 0: warm-up (the browser's cache fills)
                order = list(views.items())
                if r % 2:
                    order.reverse()
                for name, size in order:
                    console.page_size = size
                    m = measure(driver, f"{base}/console/review")
                    assert m["rows"] == size, m
                    if r == 0:
                        cold[name] = m
                    else:
                        samples[name].append(m)
                say(f"round {r}/{rounds}: " + ", ".join(
                    f"{n}: {samples[n][-1]['tti_ms'] if r else cold[n]['tti_ms']} ms"
                    for n in views))
    finally:
        stop()

    def summary(ms: list[dict[str, Any]], first: dict[str, Any]) -> dict[str, Any]:
        med = {k: round(statistics.median(m[k] for m in ms), 2)
               for k in ("ttfb_ms", "fcp_ms", "dcl_ms", "load_ms", "tti_ms")}
        p90 = {k.replace("_ms", "_p90_ms"): round(sorted(m[k] for m in ms)[
            int(0.9 * (len(ms) - 1))], 2) for k in ("tti_ms", "ttfb_ms")}
        return {"rows": ms[0]["rows"], "html_bytes": ms[0]["html_bytes"],
                "weight_bytes": first["weight_bytes"],
                "transferred_bytes_repeat_load": statistics.median(
                    m["transferred_bytes"] for m in ms),
                "resources_bytes": first["resources"], **med, **p90,
                "long_tasks": max(m["long_tasks"] for m in ms), "loads": len(ms)}

    return {
        "date": datetime.now(UTC).date().isoformat(), "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(), "browser": "Chromium (Debian), headless",
        "pending_items": items, "rounds": rounds,
        "server": "the console's FastAPI app under uvicorn, one process, SQLite",
        "views": {n: summary(samples[n], cold[n]) for n in views},
    }
