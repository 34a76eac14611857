"""The impression log's writer on a real local filesystem: partitioned parquet that reads
back as one dataset, nothing lost on a normal close, and every loss counted (a full buffer,
a storage that refuses the write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from funnel.contracts.model_io import RANKER_DENSE
from monitoring import metrics
from monitoring.impressions import (
    FEED_SCHEMA,
    ImpressionLog,
    ImpressionLogError,
    moderation_schema,
)

HOUR_US = 3_600_000_000
T0 = 1_764_615_600_000_000  # 2025-12-01 19:00:00 UTC, in microseconds


def feed_chunk(rid: str, ts_us: int, n: int = 3) -> dict[str, object]:
    cols: dict[str, object] = {
        "request_id": rid, "ts": ts_us, "user_id": 7, "item_id": np.arange(n, dtype=np.int64),
        "position": np.arange(1, n + 1, dtype=np.int32), "score": np.linspace(1, 0, n),
        "p_click": [0.1] * n, "topic": ["sports"] * n, "sources": ["ann"] * n,
        "exploration": [False] * n, "ranker_variant": "primary",
        "retrieval_variant": "primary", "bundle_version": "v1", "ranker_version": "v1",
        "retrieval_version": "v1", "degraded": "", "cold_start": False, "replica": "r1"}
    for j, name in enumerate(RANKER_DENSE):
        cols[name] = np.full(n, j, np.float32)
    return cols


def counter(kind: str, outcome: str) -> float:
    return metrics.IMPRESSIONS.labels(kind, outcome)._value.get()


def test_records_land_in_hour_partitions_and_read_back(tmp_path: Path) -> None:
    log = ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r/1",
                        flush_rows=1000, flush_interval_s=60)
    before = counter("feed", "written")
    assert log.append(feed_chunk("a", T0), 3)
    assert log.append(feed_chunk("b", T0 + HOUR_US + 5), 3)  # the next hour
    log.close()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "feed/date=2025-12-01/hour=19", "feed/date=2025-12-01/hour=20"]
    assert all("/r-1-" in f for f in files)  # the replica name, made path-safe
    t = ds.dataset(tmp_path / "feed", format="parquet", partitioning="hive").to_table()
    assert t.num_rows == 6
    assert sorted(set(t.column("request_id").to_pylist())) == ["a", "b"]
    assert t.column("p_like").null_count == 6  # not given: null, not zero
    assert t.column(RANKER_DENSE[2]).to_pylist() == [2.0] * 6
    assert log.counts == {"written": 6, "dropped": 0, "failed": 0}
    assert counter("feed", "written") - before == 6


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    log = ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r",
                        flush_rows=4, flush_interval_s=60, max_buffered_rows=5)
    log._thread = object()  # type: ignore[assignment]  # no writer: the buffer only fills
    before = counter("feed", "dropped")
    assert log.append(feed_chunk("a", T0), 3)
    assert not log.append(feed_chunk("b", T0), 3)  # 6 > 5
    assert log.counts["dropped"] == 3 and log.buffered == 3
    assert counter("feed", "dropped") - before == 3
    log._thread = None
    log.close()
    assert log.counts["written"] == 3


def test_a_storage_that_refuses_the_write_is_counted_not_silent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "feed"
    blocker.write_text("a file where the kind's directory should be")
    log = ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r",
                        flush_rows=1000, flush_interval_s=60, retries=1)
    before = counter("feed", "failed")
    log.append(feed_chunk("a", T0), 3)
    log.append(feed_chunk("b", T0), 2)
    with caplog.at_level("ERROR", logger="funnel.impressions"):
        log.close()
    assert log.counts == {"written": 0, "dropped": 0, "failed": 5}
    assert counter("feed", "failed") - before == 5
    assert "5 records lost" in caplog.text


def test_the_writer_thread_flushes_on_size(tmp_path: Path) -> None:
    log = ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r",
                        flush_rows=5, flush_interval_s=30)
    for i in range(4):
        log.append(feed_chunk(f"r{i}", T0), 3)
    import time

    deadline = time.monotonic() + 10
    while log.counts["written"] < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.counts["written"] >= 6  # written without close: the size triggered it
    log.close()
    assert log.counts["written"] == 12
    assert not list(tmp_path.rglob("_*"))  # no half-written file left behind


def test_moderation_records_have_a_column_per_label(tmp_path: Path) -> None:
    labels = ("abuse", "spam")
    log = ImpressionLog(str(tmp_path), kind="moderation", schema=moderation_schema(labels),
                        replica="r", flush_rows=10, flush_interval_s=60)
    log.append({"request_id": "m1", "ts": T0, "content_id": "c1", "content": "text",
                "decision": "review", "score_abuse": 0.7, "score_spam": None,
                "outcome_abuse": "review", "outcome_spam": None, "degraded": "",
                "policy_version": "p1", "text_model_version": "v1",
                "image_model_version": None, "variant": "primary", "review_id": 3,
                "replica": "r"}, 1)
    log.close()
    t = ds.dataset(tmp_path / "moderation", format="parquet", partitioning="hive").to_table()
    row = t.to_pylist()[0]
    assert row["score_abuse"] == 0.7 and row["score_spam"] is None
    assert row["outcome_abuse"] == "review" and row["review_id"] == 3


def test_bad_settings_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ImpressionLogError, match="url: cannot open 'nosuchproto://x'"):
        ImpressionLog("nosuchproto://x", kind="feed", schema=FEED_SCHEMA, replica="r")
    with pytest.raises(ImpressionLogError, match="max_buffered_rows"):
        ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r",
                      flush_rows=10, max_buffered_rows=5)
    with pytest.raises(ImpressionLogError, match="kind"):
        ImpressionLog(str(tmp_path), kind="clicks", schema=FEED_SCHEMA, replica="r")


def test_interleaved_feeds_log_each_items_team(tmp_path: Path) -> None:
    from serve.impression_records import feed_columns
    from serve.pipeline import FeedResult
    from serve.types import FeedItem

    def item(i: int, team: str | None) -> FeedItem:
        explain = {} if team is None else {
            "interleaving": {"team": team, "control": "control", "candidate": "cand"}}
        return FeedItem(i, i, 1.0 / i, ("ann",), explain)

    log = ImpressionLog(str(tmp_path), kind="feed", schema=FEED_SCHEMA, replica="r",
                        flush_rows=1000, flush_interval_s=60)
    for rid, teams in (("mixed", ["candidate", "control", "control", "candidate"]),
                       ("plain", [None] * 4)):
        result = FeedResult(items=[item(k + 1, t) for k, t in enumerate(teams)], degraded=[],
                            cold_start=False)
        cols, n = feed_columns(result, request_id=rid, user_id=7, ts_us=T0,
                               versions={}, variants={"ranker": "control"}, replica="r")
        log.append(cols, n)
    log.close()
    t = ds.dataset(tmp_path / "feed", format="parquet", partitioning="hive").to_table()
    rows = sorted(zip(t.column("request_id").to_pylist(), t.column("position").to_pylist(),
                      t.column("team").to_pylist(),
                      t.column("interleaved_variant").to_pylist(), strict=True))
    assert rows == [("mixed", 1, 1, "cand"), ("mixed", 2, 0, "cand"), ("mixed", 3, 0, "cand"),
                    ("mixed", 4, 1, "cand"), ("plain", 1, None, None), ("plain", 2, None, None),
                    ("plain", 3, None, None), ("plain", 4, None, None)]
