"""Faults under continuous load on the real stack, each with its client-visible effect
measured and bounded (Triton killed and restarted: tests/integration/test_feed.py; a corrupt
bundle and an invalid rollout config: tests/integration/test_rollout.py). The review database
going away needs PostgreSQL (FUNNEL_TEST_POSTGRES_URL; CI sets it): the stack reaches it through
a proxy the test cuts.

They run after the other integration tests (conftest orders them): they kill a replica and
break the impression log of the shared stack. With FUNNEL_FAULTS_OUT set, each writes what
it measured there (JSON lines) for BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import Stack
from tests.integration.test_monitoring import impression_count, read_log, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@dataclass
class Load:
    """Feed requests from a thread, each one's outcome and time kept."""

    url: str
    prefix: str
    interval_s: float = 0.05
    log: list[tuple[float, int, str, int]] = field(default_factory=list)  # t, status, rid, items
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as c:
            k = 0
            while not self._stop.is_set():
                rid = f"{self.prefix}-{k}"
                try:
                    r = c.post(f"{self.url}/v1/feed", json={"user_id": 1 + k % 50,
                                                            "limit": 10},
                               headers={"x-request-id": rid})
                    n = len(r.json()["items"]) if r.status_code == 200 else 0
                    self.log.append((time.monotonic(), r.status_code, rid, n))
                except (httpx.HTTPError, ValueError):
                    self.log.append((time.monotonic(), 599, rid, 0))
                k += 1
                time.sleep(self.interval_s)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str, int]]:
        return [e for e in self.log if e[1] != 200 and e[0] >= since]


@contextmanager
def load(stack: Stack, prefix: str) -> Iterator[Load]:
    ld = Load(stack.url, prefix)
    t = threading.Thread(target=ld.run, daemon=True)
    t.start()
    try:
        yield ld
    finally:
        ld._stop.set()
        t.join(30)


@dataclass
class EventLoad:
    """`POST /v1/events` from a thread, one event each with its own id; the acknowledged
    (202) ids kept."""

    url: str
    prefix: str
    interval_s: float = 0.02
    acked: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from datetime import UTC, datetime

        with httpx.Client(timeout=10) as c:
            k = 0
            while not self._stop.is_set():
                eid = f"{self.prefix}-{k}"
                try:
                    r = c.post(f"{self.url}/v1/events", json={
                        "event_id": eid, "request_id": f"{self.prefix}-r", "user_id": 1 + k % 50,
                        "item_id": 1 + k, "event": "click",
                        "timestamp": datetime.now(UTC).isoformat()})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 599
                self.statuses[code] = self.statuses.get(code, 0) + 1
                if code == 202:
                    self.acked.append(eid)
                k += 1
                time.sleep(self.interval_s)


def logged_event_ids(root: Path, prefix: str) -> set[str]:
    import pyarrow.dataset as pads

    if not (root / "events").is_dir():
        return set()
    t = pads.dataset(root / "events", format="parquet", partitioning="hive").to_table(
        columns=["event_id"])
    return {e for e in t.column("event_id").to_pylist() if e.startswith(prefix)}


def report(case: str, **figures: Any) -> None:
    out = os.environ.get("FUNNEL_FAULTS_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"case": case, **figures}) + "\n")


@dataclass
class ModerationLoad:
    """/v1/moderate calls from a thread, each with its own content id; outcomes kept."""

    url: str
    prefix: str
    interval_s: float = 0.05
    texts: tuple[str, ...] = ("you people are vermin and should disappear",
                              "our team won the match last night",
                              "send me your bank password to claim the prize")
    log: list[tuple[float, int, str, str, list[str], int | None]] = field(
        default_factory=list)  # t, status, content id, decision, degraded, review id
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=30) as c:
            k = 0
            while not self._stop.is_set():
                cid = f"{self.prefix}-{k}"
                try:
                    r = c.post(f"{self.url}/v1/moderate", json={
                        "content_id": cid, "text": self.texts[k % len(self.texts)]})
                    b = r.json() if r.status_code == 200 else {}
                    self.log.append((time.monotonic(), r.status_code, cid,
                                     b.get("decision", ""), b.get("degraded", []),
                                     b.get("review_id")))
                except (httpx.HTTPError, ValueError):
                    self.log.append((time.monotonic(), 599, cid, "", [], None))
                k += 1
                time.sleep(self.interval_s)


def replica_pids(stack: Stack, deployment: str) -> list[int]:
    title = f"ServeReplica:funnel:{deployment}"
    out = []
    for p in psutil.Process(stack.serve_pid).children(recursive=True):
        try:
            if any(title in part for part in p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def until(check: Callable[[], bool], timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    return None


def test_a_killed_ingress_replica_is_replaced_and_traffic_recovers(stack: Stack) -> None:
    """SIGKILL the feed ingress replica (the only one) under load. Requests in flight or sent
    before Serve has a new replica fail (there is no other replica to take them); the bound:
    served again within 60 s of the kill, and from then on every request is."""
    before = replica_pids(stack, "FeedIngress")
    assert len(before) == 1, before
    events = EventLoad(stack.url, "killev")
    poster = threading.Thread(target=events.run, daemon=True)
    poster.start()
    with load(stack, "kill") as ld:
        assert until(lambda: len(ld.log) >= 20 and len(events.acked) >= 50, 30)
        killed = time.monotonic()
        psutil.Process(before[0]).kill()  # events in its buffer and spool, not yet parquet
        back = until(lambda: any(e[0] > killed + 0.5 and e[1] == 200 for e in ld.log), 60)
        assert back is not None, f"no request served within 60 s of the kill: {ld.log[-5:]}"
        time.sleep(5)  # and it stays back
    events._stop.set()
    poster.join(30)
    # acknowledged means durable: the new replica wrote what the killed one had spooled
    log_root = stack.config.parent / "impressions"
    acked = set(events.acked)
    assert until(lambda: not acked - logged_event_ids(log_root, "killev"), 30) is not None, (
        f"{len(acked - logged_event_ids(log_root, 'killev'))} of {len(acked)} acknowledged "
        f"events not in the log; statuses {events.statuses}")
    failed = ld.failures(killed)
    recovered = max([e[0] for e in failed], default=killed)
    after = [e for e in ld.log if e[0] > recovered]
    assert len(after) >= 20 and all(e[1] == 200 for e in after)
    assert recovered - killed <= 60
    now = replica_pids(stack, "FeedIngress")
    assert len(now) == 1 and now != before
    report("ingress replica killed (SIGKILL)", requests=len(ld.log), failed=len(failed),
           failed_statuses=sorted({e[1] for e in failed}),
           seconds_to_recover=round(recovered - killed, 1), events_acknowledged=len(acked),
           events_lost=0, event_statuses=events.statuses)


def test_an_unwritable_impression_log_costs_records_counted_never_requests(
        stack: Stack) -> None:
    """The impression log's storage refuses writes for ~5 s under load: every request is
    still answered 200; the records that could not be written are counted as failed (none
    silently missing: items served = rows logged + rows counted lost); writing resumes."""
    root = stack.impressions
    wait_for(lambda: (root / "feed").is_dir(), 20)
    failed0 = impression_count(stack, "failed")
    dropped0 = impression_count(stack, "dropped")
    moved = root / "feed.moved"
    with load(stack, "unwritable") as ld:
        assert until(lambda: len(ld.log) >= 20, 30)
        time.sleep(1.5)  # what was buffered before the outage is written
        (root / "feed").rename(moved)
        (root / "feed").write_text("a file where the feed partitions should be")
        broken = time.monotonic()
        counted = until(lambda: impression_count(stack, "failed") > failed0, 20)
        time.sleep(max(0.0, 5 - (time.monotonic() - broken)))
        (root / "feed").unlink()
        moved.rename(root / "feed")
        restored = time.monotonic()
        assert until(lambda: sum(1 for e in ld.log if e[0] > restored + 2) >= 20, 30)
    assert counted is not None, "the failed writes were not counted"
    assert ld.failures() == [], "an impression-log outage reached a client"
    served = {rid: n for _, status, rid, n in ld.log if status == 200}

    def settled() -> bool:  # every record either written or counted lost
        logged = sum(1 for r in read_log(root, "feed", "unwritable-"))
        lost = (impression_count(stack, "failed") - failed0
                + impression_count(stack, "dropped") - dropped0)
        return logged + lost >= sum(served.values())

    assert wait_for(settled, 30)
    rows = read_log(root, "feed", "unwritable-")
    logged = len(rows)
    lost = int(impression_count(stack, "failed") - failed0
               + impression_count(stack, "dropped") - dropped0)
    assert logged + lost == sum(served.values()), (logged, lost, sum(served.values()))
    assert lost > 0
    late = {f"unwritable-{k}" for k in range(len(ld.log))
            if ld.log[k][0] > restored + 2}
    assert late and late <= {r["request_id"] for r in rows}, "writing did not resume"
    report("impression log storage unwritable for 5 s", requests=len(ld.log),
           client_errors=len(ld.failures()), items_served=sum(served.values()),
           rows_logged=logged, rows_counted_lost=lost)


def test_a_corrupt_bundle_and_an_invalid_config_are_refused_under_load(stack: Stack) -> None:
    """Offered while traffic flows: a rollout naming a bundle whose file fails its checksum,
    and a config with bad fields. Both are refused naming the field, no request fails, and
    the rollout stays as it was (none)."""
    from tests.integration.test_rollout import copy_bundle

    src = Path(stack.bundle).resolve()
    primary = json.loads((src / "manifest.json").read_text())["version"]
    bad = copy_bundle(src, f"{primary}-fault-corrupt")
    with (src.parent / bad / "models" / "user_tower.pt").open("ab") as f:
        f.write(b"\0")
    corrupt = {"stages": {"retrieval": {"variants": [
        {"name": "control", "bundle_version": primary, "weight": 90},
        {"name": "candidate", "bundle_version": bad, "weight": 10}]}}}
    invalid = {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": primary, "weight": 60}]}}}
    admin = httpx.Client(headers={"authorization": f"Bearer {stack.admin_token}"}, timeout=120)
    with load(stack, "refused") as ld:
        assert until(lambda: len(ld.log) >= 20, 30)
        r1 = admin.put(f"{stack.url}/v1/admin/rollout", json=corrupt)
        r2 = admin.put(f"{stack.url}/v1/admin/rollout", json=invalid)
        sent = len(ld.log)
        assert until(lambda: len(ld.log) >= sent + 20, 30)
    assert r1.status_code == 422 and "checksum mismatch" in r1.text, r1.text
    assert r2.status_code == 422 and "stages.ranker" in r2.text, r2.text
    assert ld.failures() == []
    status = admin.get(f"{stack.url}/v1/admin/rollout").json()
    assert status["stages"] == {}, "a refused config changed the rollout"
    report("corrupt bundle and invalid config offered", requests=len(ld.log),
           client_errors=len(ld.failures()), refused=[r1.status_code, r2.status_code])


def test_the_review_database_away_moderation_answers_and_loses_nothing(stack: Stack) -> None:
    """The review database (PostgreSQL, through a proxy) cut for FUNNEL_FAULT_DB_OUTAGE_S
    (default 8 s; the benchmark run: 30) under moderation and feed load. Bounds: every
    request answered 200; decisions made meanwhile say `degraded: ["review_queue"]` and are
    parked; within 30 s of the database's return every decision is in the database exactly
    once (decision rows = moderation answers; review items = `review` answers)."""
    from serve.review.store import SqlReviewStore as ReviewStore
    from tests.integration.test_monitoring import scrape

    if stack.review is None or stack.review.proxy is None:
        pytest.skip("FUNNEL_TEST_POSTGRES_URL is not set (CI sets it): the review database "
                    "outage needs PostgreSQL behind a proxy")
    proxy = stack.review.proxy
    outage_s = float(os.environ.get("FUNNEL_FAULT_DB_OUTAGE_S", "8"))
    mod = ModerationLoad(stack.url, "dbfault")
    t = threading.Thread(target=mod.run, daemon=True)
    t.start()
    try:
        with load(stack, "dbfault") as feed:
            assert until(lambda: len(mod.log) >= 10, 30)
            proxy.down()
            cut = time.monotonic()
            time.sleep(outage_s)
            proxy.up()
            restored = time.monotonic()

            def spool_depth() -> float:
                return scrape(stack.url).get(("funnel_review_spool_depth", ()), -1.0)

            drained = until(lambda: spool_depth() == 0.0 and any(
                e[0] > restored and e[4] == [] for e in mod.log), 60)
            time.sleep(1)
    finally:
        mod._stop.set()
        t.join(30)
    assert drained is not None, "parked decisions were not written within 60 s"
    answers = [e for e in mod.log if e[1] == 200]
    assert [e for e in mod.log if e[1] != 200] == [], "a database outage reached a client"
    assert feed.failures() == [], "a database outage failed a feed request"
    parked = [e for e in answers if "review_queue" in e[4]]
    during = [e for e in answers if cut + 1 < e[0] < restored]
    assert during and all("review_queue" in e[4] for e in during)
    store = ReviewStore(stack.review.direct_url)
    try:
        rows = [r for r in store.audit() if r["content_id"].startswith("dbfault-")]
        items = [i for i in store.list_items(status=None, limit=100_000)
                 if i.content_id.startswith("dbfault-")]
    finally:
        store.close()
    assert sorted(r["content_id"] for r in rows) == sorted(e[2] for e in answers), \
        "decision rows differ from the answers given (lost or duplicated)"
    assert sorted(i.content_id for i in items) == sorted(
        e[2] for e in answers if e[3] == "review")
    assert parked, "nothing was parked: the outage did not reach moderation"
    assert drained - restored <= 30
    report(f"review database away for {outage_s:g} s", moderation_requests=len(mod.log),
           feed_requests=len(feed.log),
           client_errors=len(feed.failures()) + len(mod.log) - len(answers),
           decisions_parked=len(parked),
           decision_rows=len(rows), review_items=len(items), records_lost=0,
           seconds_to_drain=round(drained - restored, 1))
