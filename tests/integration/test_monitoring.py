"""Monitoring on the real local stack: the impression log holds exactly what was served,
a storage failure is counted (not silent), and `/metrics` exports every metric the alert
rules use."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def impression_count(stack: Stack, outcome: str, kind: str = "feed") -> float:
    return scrape(stack.url)[("funnel_impression_records_total",
                              (("kind", kind), ("outcome", outcome)))]


def read_log(root: Path, kind: str, prefix: str) -> list[dict[str, Any]]:
    if not (root / kind).is_dir():
        return []
    t = ds.dataset(root / kind, format="parquet", partitioning="hive").to_table(
        columns=["request_id", "item_id", "position", "score", "user_id", "post_ctr",
                 "p_click", "ranker_version"] if kind == "feed"
        else ["request_id", "content_id", "decision", "score_spam"])
    return [r for r in t.to_pylist() if r["request_id"].startswith(prefix)]


def serve_feeds(stack: Stack, prefix: str, n: int) -> Counter[tuple[str, int, int]]:
    served: Counter[tuple[str, int, int]] = Counter()
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        for i in range(n):
            rid = f"{prefix}-{i}"
            r = c.post("/v1/feed", json={"user_id": 1 + i % 50, "limit": 10},
                       headers={"x-request-id": rid})
            assert r.status_code == 200, r.text
            for item in r.json()["items"]:
                served[(rid, item["item_id"], item["rank"])] += 1
    return served


def wait_for(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def test_the_impression_log_holds_exactly_what_was_served(stack: Stack) -> None:
    served = serve_feeds(stack, "imp", 120)
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        for i in range(10):
            r = c.post("/v1/moderate", json={"content_id": f"imp-c{i}", "text": f"post {i}"},
                       headers={"x-request-id": f"impm-{i}"})
            assert r.status_code == 200, r.text
    total = sum(served.values())
    rows = wait_for(lambda: (lambda r: r if len(r) >= total else None)(
        read_log(stack.impressions, "feed", "imp-")))
    assert rows is not None, "the impression log did not catch up within 20 s"
    logged = Counter((r["request_id"], r["item_id"], r["position"]) for r in rows)
    assert logged == served  # every item once: nothing lost, nothing twice
    assert all(r["ranker_version"] and r["post_ctr"] is not None for r in rows)
    assert sum(r["p_click"] is not None for r in rows) > total // 2
    mod = wait_for(lambda: (lambda r: r if len(r) >= 10 else None)(
        read_log(stack.impressions, "moderation", "impm-")))
    assert mod is not None and sorted(r["content_id"] for r in mod) == sorted(
        f"imp-c{i}" for i in range(10))
    assert all(r["decision"] in {"allow", "review", "block"} for r in mod)


def test_a_failing_writer_is_counted_not_silent(stack: Stack) -> None:
    """The log's directory for feeds is replaced by a file, so every write fails: the items
    served meanwhile are counted as failed, and written + failed still equals served."""
    root = stack.impressions / "feed"
    assert wait_for(lambda: root.is_dir()), "no feed impressions written yet"
    wait_for(lambda: impression_count(stack, "written") > 0)
    time.sleep(1.0)  # let the writer finish what it holds
    written0, failed0 = impression_count(stack, "written"), impression_count(stack, "failed")
    moved = root.with_name("feed.moved")
    root.rename(moved)
    root.write_text("not a directory: every write below it fails")
    try:
        served = sum(serve_feeds(stack, "fail", 20).values())
        failed = wait_for(lambda: impression_count(stack, "failed") - failed0 >= served,
                          timeout_s=30)
        assert failed, (impression_count(stack, "failed") - failed0, served)
        assert impression_count(stack, "written") == written0
        assert impression_count(stack, "failed") - failed0 == served
    finally:
        root.unlink()
        shutil.move(str(moved), str(root))
    # storage back: records are written again
    served = sum(serve_feeds(stack, "back", 5).values())
    assert wait_for(lambda: impression_count(stack, "written") - written0 >= served)
