"""The impression log's write-ahead spool: acknowledged records survive a SIGKILL of the
process that took them, and are written exactly by the next process on that disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from monitoring.impressions import EVENTS_SCHEMA, ImpressionLog

# a process taking events from four threads, each acknowledged (printed) only once
# append(durable=True) returned; the buffer is never flushed, so only the spool keeps them
_WRITER = r"""
import sys, threading, time
from monitoring.impressions import EVENTS_SCHEMA, ImpressionLog
log = ImpressionLog(sys.argv[1], kind="events", schema=EVENTS_SCHEMA, replica="victim",
                    flush_interval_s=3600, flush_rows=10**6, max_buffered_rows=10**6,
                    spool_dir=sys.argv[2])
lock = threading.Lock()
def work(t):
    for i in range(10**6):
        eid = f"t{t}-{i}"
        now = int(time.time() * 1e6)
        log.append({"event_id": [eid], "request_id": "q", "user_id": [1], "item_id": [i],
                    "event": ["click"], "value": None, "ts": [now], "received_ts": now,
                    "replica": "victim"}, 1, durable=True)
        with lock:
            print(eid, flush=True)
for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
time.sleep(3600)
"""


def _ids(root: Path) -> list[str]:
    out: list[str] = []
    for f in sorted(root.rglob("*.parquet")):
        out += pq.read_table(f, columns=["event_id"]).column("event_id").to_pylist()
    return out


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    log_url, spool = tmp_path / "log", tmp_path / "spool"
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(log_url), str(spool)],
                         stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert p.stdout is not None
    acked: list[str] = []
    deadline = time.monotonic() + 60
    while len(acked) < 400 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
    p.send_signal(signal.SIGKILL)  # under traffic: four threads mid-append
    rest = p.stdout.read()
    p.wait(10)
    acked += [x for x in rest.split() if x]
    assert len(acked) >= 400, "the writer did not start"
    assert not log_url.exists() or not _ids(log_url)  # nothing reached parquet before

    after = ImpressionLog(str(log_url), kind="events", schema=EVENTS_SCHEMA, replica="next",
                          spool_dir=str(spool))
    after.close()  # writes what it took over
    written = _ids(log_url)
    missing = set(acked) - set(written)
    assert not missing, f"{len(missing)} acknowledged event(s) lost, e.g. {sorted(missing)[:3]}"
    assert len(written) == len(set(written))  # each once
    assert not list((spool / "events").glob("*.jsonl")), "the spool was not emptied"


def test_a_normal_flush_empties_the_spool_and_a_restart_adds_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = ImpressionLog(str(tmp_path / "log"), kind="events", schema=EVENTS_SCHEMA,
                        replica="r", spool_dir=str(spool))
    now = int(time.time() * 1e6)
    threads = [threading.Thread(target=log.append, args=(
        {"event_id": [f"e{i}"], "request_id": "q", "user_id": [1], "item_id": [i],
         "event": ["like"], "value": None, "ts": [now], "received_ts": now,
         "replica": "r"}, 1), kwargs={"durable": True}) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.flush() == 50
    log.close()
    assert [p for p in (spool / "events").glob("*.jsonl") if p.stat().st_size] == []
    again = ImpressionLog(str(tmp_path / "log"), kind="events", schema=EVENTS_SCHEMA,
                          replica="r2", spool_dir=str(spool))
    assert again.buffered == 0
    again.close()
    assert sorted(_ids(tmp_path / "log")) == sorted(f"e{i}" for i in range(50))


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    seg = tmp_path / "spool" / "events"
    seg.mkdir(parents=True)
    now = int(time.time() * 1e6)
    good = {"rows": 1, "columns": {"event_id": ["ok"], "request_id": "q", "user_id": [1],
                                   "item_id": [2], "event": ["click"], "value": None,
                                   "ts": [now], "received_ts": now, "replica": "x"}}
    (seg / "dead-1-abc-000001.jsonl").write_text(json.dumps(good) + "\n" + '{"rows": 1, "co')
    log = ImpressionLog(str(tmp_path / "log"), kind="events", schema=EVENTS_SCHEMA,
                        replica="r", spool_dir=str(tmp_path / "spool"))
    assert log.buffered == 1
    log.close()
    assert _ids(tmp_path / "log") == ["ok"]


def test_a_batch_that_failed_to_write_is_written_by_the_next_start(tmp_path: Path) -> None:
    spool, root = tmp_path / "spool", tmp_path / "log"
    log = ImpressionLog(str(root), kind="events", schema=EVENTS_SCHEMA, replica="r",
                        spool_dir=str(spool), retries=0)
    now = int(time.time() * 1e6)
    log.append({"event_id": ["lost-once"], "request_id": "q", "user_id": [1], "item_id": [2],
                "event": ["click"], "value": None, "ts": [now], "received_ts": now,
                "replica": "r"}, 1, durable=True)
    root.write_text("not a directory")  # the write fails
    assert log.flush() == 0 and log.counts["failed"] == 1
    log.close()
    root.unlink()
    again = ImpressionLog(str(root), kind="events", schema=EVENTS_SCHEMA, replica="r2",
                          spool_dir=str(spool))
    again.close()
    assert _ids(root) == ["lost-once"]
