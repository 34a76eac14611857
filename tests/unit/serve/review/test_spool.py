"""The review spool: decisions parked on local disk, drained oldest first, none lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve.errors import ReviewStoreError
from serve.review.spool import ReviewSpool


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_records_drain_oldest_first_and_leave_only_once_written(tmp_path: Path) -> None:
    clock = Clock()
    spool = ReviewSpool(tmp_path / "spool.db", clock=clock)
    assert not spool.pending and spool.depth().records == 0
    for i in range(3):
        spool.park(f"k{i}", {"n": i})
        clock.t += 10
    assert spool.pending
    assert (spool.depth().records, spool.depth().oldest_age_s) == (3, 30.0)
    seen: list[tuple[str, Any]] = []
    done = spool.drain(lambda k, r: seen.append((k, r["n"])))
    assert seen == [("k0", 0), ("k1", 1), ("k2", 2)]
    assert (done.written, done.remaining, done.error) == (3, 0, None)
    assert not spool.pending and spool.depth().oldest_age_s == 0.0


def test_a_drain_stops_at_the_first_failure_and_keeps_the_order(tmp_path: Path) -> None:
    spool = ReviewSpool(tmp_path / "spool.db")
    for i in range(4):
        spool.park(f"k{i}", {"n": i})
    written: list[int] = []

    def write(key: str, rec: dict[str, Any]) -> None:
        if rec["n"] == 1:
            raise ReviewStoreError("review database unavailable (x): refused")
        written.append(rec["n"])

    done = spool.drain(write)
    assert written == [0] and done.remaining == 3 and "refused" in (done.error or "")
    assert spool.pending
    done = spool.drain(lambda k, r: written.append(r["n"]))
    assert written == [0, 1, 2, 3] and done.remaining == 0


def test_parked_records_survive_a_restart(tmp_path: Path) -> None:
    ReviewSpool(tmp_path / "spool.db").park("k", {"content_id": "c1"})
    again = ReviewSpool(tmp_path / "spool.db")  # a new replica on the same disk
    assert again.pending and again.depth().records == 1
    got: list[dict[str, Any]] = []
    again.drain(lambda k, r: got.append(r))
    assert got == [{"content_id": "c1"}]


def test_a_key_parked_twice_is_kept_once(tmp_path: Path) -> None:
    spool = ReviewSpool(tmp_path / "spool.db")
    spool.park("k", {"n": 1})
    spool.park("k", {"n": 1})
    assert spool.depth().records == 1


def test_an_unwritable_spool_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    spool = ReviewSpool(tmp_path / "spool.db")
    (tmp_path / "spool.db").unlink()
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(ReviewStoreError, match=r"spool .*spool\.db cannot be written"):
        spool.park("k", {"n": 1})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ReviewStoreError, match="cannot open the review spool"):
        ReviewSpool(blocker / "spool.db")
