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

ROOT = Path(__file__).resolve().parents[2]


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


def rule_metric_names() -> set[str]:
    import promql_parser
    import yaml

    doc = yaml.safe_load((ROOT / "monitoring" / "alerts" / "funnel-rules.yaml").read_text())
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    for group in doc["groups"]:
        for rule in group["rules"]:
            promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
    return names


def exported_names(text: str) -> set[str]:
    """Every series name a scrape offers: families with their samples' names (a counter's
    _total, a histogram's _bucket/_sum/_count), including families with no sample yet."""
    out: set[str] = set()
    for fam in text_string_to_metric_families(text):
        out.add(fam.name)
        out.update(s.name for s in fam.samples)
        if fam.type == "counter":
            out.add(f"{fam.name}_total")
        elif fam.type == "histogram":
            out.update(f"{fam.name}_{x}" for x in ("bucket", "sum", "count"))
    return out


def test_metrics_cover_every_metric_the_alert_rules_use(stack: Stack, tmp_path: Path) -> None:
    """`/metrics` of the serving endpoint and of the drift monitor (`funnel drift watch`, as
    the cluster runs it) export every series the alert rules query, and the rules file
    parses as Prometheus rules (the rule-file schema and each expression)."""
    import subprocess

    import yaml

    from tests.integration.conftest import FUNNEL, _stop, free_port

    doc = yaml.safe_load((ROOT / "monitoring" / "alerts" / "funnel-rules.yaml").read_text())
    assert set(doc) == {"groups"} and all(set(g) <= {"name", "interval", "rules", "limit"}
                                          for g in doc["groups"])
    wanted = rule_metric_names()
    assert len(wanted) >= 15, wanted
    serve_feeds(stack, "scrape", 3)
    httpx.post(f"{stack.url}/v1/moderate", json={"content_id": "scrape-1", "text": "hello"},
               timeout=30).raise_for_status()
    serving = exported_names(httpx.get(f"{stack.url}/metrics", timeout=30).text)

    port = free_port()
    watch = subprocess.Popen(
        # windows end on whole minutes; the first one (the last hour) holds this session's
        # impressions, so the first run compares real records with the bundle's reference
        [*FUNNEL, "drift", "watch", "--every", "1m", "--window", "1h", "--settle-s", "0",
         "--port", str(port),
         "--host", "127.0.0.1", "--log", str(stack.impressions), "--bundle",
         str(stack.bundle), "--out", str(tmp_path / "reports")],
        stdout=(tmp_path / "watch.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        def drift_scrape() -> str | None:
            assert watch.poll() is None, (tmp_path / "watch.log").read_text()[-3000:]
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return None
            runs = {s.labels["outcome"]: s.value
                    for fam in text_string_to_metric_families(text)
                    if fam.name == "funnel_drift_runs" for s in fam.samples
                    if s.name == "funnel_drift_runs_total"}
            return text if runs.get("ok", 0) + runs.get("empty", 0) >= 1 else None

        text = wait_for(drift_scrape, timeout_s=180)
        assert text, "the drift monitor did not finish its first run within 180 s:\n" + (
            tmp_path / "watch.log").read_text()[-3000:]
        drift = exported_names(text)
    finally:
        _stop(watch)
    missing = sorted(wanted - serving - drift)
    assert not missing, f"named in the alert rules but exported by no /metrics: {missing}"
