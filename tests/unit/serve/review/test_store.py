"""The review store on SQLite and, when FUNNEL_TEST_POSTGRES_URL is set (CI sets it), on a
real PostgreSQL server: queueing, listing, single and concurrent decisions, the audit."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serve.errors import AlreadyDecided, ReviewItemNotFound
from serve.review.store import SqlReviewStore as ReviewStore
from serve.review.store import normalise_url

PG_URL = os.environ.get("FUNNEL_TEST_POSTGRES_URL")


class StepClock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    if request.param == "sqlite":
        s = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite3'}", clock=StepClock())
        yield s
        s.close()
        return
    if not PG_URL:
        pytest.skip("FUNNEL_TEST_POSTGRES_URL is not set (CI sets it): PostgreSQL not tested")
    schema = f"funnel_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalise_url(PG_URL))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    s = ReviewStore(f"{PG_URL}{sep}options=-csearch_path%3D{schema}", clock=StepClock())
    yield s
    s.close()
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _queue(s: ReviewStore, content_id: str = "101", decision: str = "review") -> int | None:
    return s.record_model_decision(
        content_id=content_id, decision=decision, model="moderation_text:v1",
        policy_version="p1", request_id="req-1", text="some words", has_image=False,
        author_id=7, scores={"hate": 0.4, "spam": 0.1}, flagged_labels=["hate"],
        reasons=["hate: score 0.400 >= review_at 0.25"], model_versions={"text": "v1"})


def test_review_decision_queues_an_item_and_logs_it(store: ReviewStore) -> None:
    item_id = _queue(store)
    assert item_id is not None
    [item] = store.list_items(status="pending")
    assert (item.id, item.content_id, item.status, item.flagged_labels) == (
        item_id, "101", "pending", ("hate",))
    assert item.scores["hate"] == pytest.approx(0.4)
    assert item.created_at.tzinfo is not None
    [event] = store.decision_log()
    assert (event.content_id, event.source, event.decision) == ("101", "model", "review")


def test_allow_and_block_are_logged_but_not_queued(store: ReviewStore) -> None:
    assert _queue(store, "1", "allow") is None
    assert _queue(store, "2", "block") is None
    assert store.list_items(status=None) == []
    assert [e.decision for e in store.decision_log()] == ["allow", "block"]


def test_list_is_oldest_first_with_limit_and_paging(store: ReviewStore) -> None:
    ids = [_queue(store, str(i)) for i in range(5)]
    first = store.list_items(limit=2)
    assert [i.id for i in first] == ids[:2]
    assert [i.id for i in store.list_items(limit=2, after_id=first[-1].id)] == ids[2:4]


def test_backlog_is_the_pending_count_and_the_oldest_arrival(store: ReviewStore) -> None:
    assert store.backlog() == (0, None)
    first = _queue(store, "1")
    _queue(store, "2")
    _queue(store, "3")
    assert first is not None
    oldest = store.get(first).created_at
    assert store.backlog() == (3, oldest)
    store.decide(first, decision="allow", reviewer="ana")
    n, t = store.backlog()
    assert n == 2 and t is not None and t > oldest and t.tzinfo is not None


def test_decide_once_then_409_naming_who_decided(store: ReviewStore) -> None:
    item_id = _queue(store)
    assert item_id is not None
    item = store.decide(item_id, decision="block", reviewer="ana", note="slur")
    assert (item.status, item.decided_by, item.decision_note) == ("block", "ana", "slur")
    with pytest.raises(AlreadyDecided, match="already decided \\(block\\) by ana"):
        store.decide(item_id, decision="allow", reviewer="bo")
    assert store.get(item_id).status == "block"
    assert store.list_items(status="pending") == []
    reviewer = [e for e in store.audit(content_id="101") if e["source"] == "reviewer"]
    assert [(e["actor"], e["decision"], e["note"]) for e in reviewer] == [("ana", "block", "slur")]


def test_unknown_item_is_not_found(store: ReviewStore) -> None:
    with pytest.raises(ReviewItemNotFound):
        store.decide(999, decision="allow", reviewer="ana")


def test_concurrent_deciders_exactly_one_wins(store: ReviewStore) -> None:
    item_id = _queue(store)
    assert item_id is not None
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def decide(n: int) -> None:
        barrier.wait()
        try:
            store.decide(item_id, decision="allow" if n % 2 else "block", reviewer=f"r{n}")
            result = f"won:r{n}"
        except AlreadyDecided:
            result = "409"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("409") == 7
    item = store.get(item_id)
    assert f"won:{item.decided_by}" == winners[0]
    reviewer_rows = [e for e in store.audit() if e["source"] == "reviewer"]
    assert [e["actor"] for e in reviewer_rows] == [item.decided_by]


def test_audit_is_append_only_in_the_database(store: ReviewStore) -> None:
    _queue(store)
    for stmt in ("UPDATE moderation_decisions SET actor = 'someone else'",
                 "DELETE FROM moderation_decisions"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as c:
            c.execute(sa.text(stmt))
    assert len(store.audit()) == 1


def test_reopening_migrates_nothing_twice(store: ReviewStore) -> None:
    _queue(store)
    again = ReviewStore(store.url)
    assert len(again.list_items()) == 1
    again.close()


def test_an_unusable_url_is_an_input_error_naming_it() -> None:
    from serve.errors import ReviewDatabaseUrlError

    with pytest.raises(ReviewDatabaseUrlError, match="'nope://x' is not usable") as e:
        ReviewStore("nope://x")
    assert e.value.exit_code == 2


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_decision_written_twice_with_one_idempotency_key_is_recorded_once(
        store: ReviewStore) -> None:
    kw: dict[str, Any] = dict(content_id="c9", decision="review", model="m", policy_version="p",
              request_id="r", text="t", has_image=False, author_id=None, scores={"hate": 0.5},
              flagged_labels=["hate"], reasons=[], model_versions={},
              at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    first = store.record_model_decision(**kw, idempotency_key="k1")  # type: ignore[arg-type]
    again = store.record_model_decision(**kw, idempotency_key="k1")  # type: ignore[arg-type]
    other = store.record_model_decision(**kw, idempotency_key="k2")  # type: ignore[arg-type]
    assert first is not None and again == first and other not in (None, first)
    assert [r["idempotency_key"] for r in store.audit()] == ["k1", "k2"]
    assert len(store.list_items()) == 2
    # `at`: the time the decision was made, not the time it reached the database
    assert store.get(first).created_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_a_key_raced_by_two_writers_is_answered_with_the_winners_row(
        store: ReviewStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loser of the unique index (two replicas draining one spool) rolls back whole and
    returns the winner's item id: no second review item, no second decision row."""
    kw: dict[str, Any] = dict(content_id="c1", decision="review", model="m", policy_version="p",
              request_id="r", text=None, has_image=False, author_id=None, scores={},
              flagged_labels=[], reasons=[], model_versions={})
    winner = store.record_model_decision(**kw, idempotency_key="race")  # type: ignore[arg-type]
    real_select = sa.select
    calls = {"n": 0}

    def blind_select(*a: object, **k: object) -> object:  # the loser's first look misses
        calls["n"] += 1
        q = real_select(*a, **k)  # type: ignore[call-overload]
        return q.where(sa.false()) if calls["n"] == 1 else q

    monkeypatch.setattr(sa, "select", blind_select)
    loser = store.record_model_decision(**kw, idempotency_key="race")  # type: ignore[arg-type]
    monkeypatch.undo()
    assert loser == winner
    assert len(store.audit()) == 1 and len(store.list_items()) == 1


def test_an_unreachable_database_is_a_retryable_store_error(tmp_path: Path) -> None:
    from serve.errors import ReviewStoreError

    s = ReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
    s.engine.dispose()
    (tmp_path / "r.db").unlink()
    (tmp_path / "r.db").mkdir()  # the file is gone and cannot be created: unavailable
    with pytest.raises(ReviewStoreError, match="review database unavailable") as e:
        _queue(s)
    assert e.value.http_status == 503
