"""Every review store keeps one contract (serve/review/base.py): the SQL store that ships and
the in-memory one the unit tests use. `open_store` picks one by the config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.errors import AlreadyDecided, ReviewDatabaseUrlError, ReviewItemNotFound
from serve.review.base import ReviewStore, open_store
from serve.review.export import export_labels
from serve.review.store import SqlReviewStore
from tests.fakes import MemoryReviewStore


@pytest.fixture(params=["sql", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    s: ReviewStore = (SqlReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
                      if request.param == "sql" else MemoryReviewStore())
    yield s
    s.close()


def _record(store: ReviewStore, cid: str, decision: str, key: str | None = None,
            flagged: tuple[str, ...] = ("spam",)) -> int | None:
    return store.record_model_decision(
        content_id=cid, decision=decision, model="text-v1", policy_version="p1",
        request_id=f"r-{cid}", text=f"text {cid}", has_image=False, author_id=7,
        scores={"spam": 0.7}, flagged_labels=flagged, reasons=["spam>=0.5"],
        model_versions={"text": "v1"}, idempotency_key=key)


def test_a_store_implements_the_interface(store: ReviewStore) -> None:
    assert isinstance(store, ReviewStore)
    assert store.safe_url


def test_review_decisions_queue_items_and_every_decision_is_logged(store: ReviewStore) -> None:
    assert _record(store, "a", "allow") is None
    first = _record(store, "b", "review")
    second = _record(store, "c", "review")
    assert first is not None and second is not None and second > first
    assert [i.content_id for i in store.list_items()] == ["b", "c"]
    assert [i.content_id for i in store.list_items(after_id=first)] == ["c"]
    assert store.list_items(limit=1)[0].id == first
    depth, oldest = store.backlog()
    assert depth == 2 and oldest is not None
    item = store.get(first)
    assert (item.status, item.scores, item.flagged_labels, item.author_id) == (
        "pending", {"spam": 0.7}, ("spam",), 7)
    log = store.decision_log()
    assert [(e.content_id, e.source, e.decision) for e in log] == [
        ("a", "model", "allow"), ("b", "model", "review"), ("c", "model", "review")]
    assert [e.content_id for e in store.decision_log(after_id=log[0].id)] == ["b", "c"]


def test_an_idempotency_key_writes_once(store: ReviewStore) -> None:
    first = _record(store, "b", "review", key="k1")
    assert _record(store, "b", "review", key="k1") == first
    assert len(store.list_items()) == 1
    assert len(store.audit(content_id="b")) == 1


def test_a_decision_is_made_exactly_once(store: ReviewStore) -> None:
    item_id = _record(store, "b", "review")
    assert item_id is not None
    done = store.decide(item_id, decision="block", reviewer="ana", note="spam ring")
    assert (done.status, done.decided_by, done.decision_note) == ("block", "ana", "spam ring")
    with pytest.raises(AlreadyDecided):
        store.decide(item_id, decision="allow", reviewer="bo")
    with pytest.raises(ReviewItemNotFound):
        store.get(item_id + 100)
    assert store.list_items() == []
    assert store.backlog() == (0, None)
    assert [i.id for i in store.decided()] == [item_id]
    assert [(r["source"], r["actor"]) for r in store.audit(content_id="b")] == [
        ("model", "text-v1"), ("reviewer", "ana")]
    assert store.decision_log()[-1].decision == "block"


def test_export_reads_any_store(store: ReviewStore, tmp_path: Path) -> None:
    item_id = _record(store, "b", "review")
    assert item_id is not None
    store.decide(item_id, decision="block", reviewer="ana")
    counts = export_labels(store, tmp_path / "labels.parquet")
    assert counts["rows"] == 1 and counts["blocked"] == 1


def test_open_store_picks_sql_by_scheme_or_the_configured_class(tmp_path: Path) -> None:
    sql = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    assert isinstance(sql, SqlReviewStore)
    sql.close()
    mem = open_store("memory://x", store_class="tests.fakes:MemoryReviewStore")
    assert isinstance(mem, MemoryReviewStore) and mem.safe_url == "memory://x"


@pytest.mark.parametrize(("url", "store_class", "named"), [
    ("redis://127.0.0.1:6379/0", None, "review.store_class"),
    ("sqlite:///x.db", "tests.fakes:NoSuchStore", "review.store_class"),
    ("sqlite:///x.db", "no_such_module_here:Store", "review.store_class"),
    ("sqlite:///x.db", "tests.fakes:FakeRanker", "cannot be constructed"),
    ("sqlite:///x.db", "tests.fakes:HashingTextEncoder", "does not implement"),
])
def test_open_store_refuses_what_it_cannot_open_naming_the_setting(
        url: str, store_class: str | None, named: str) -> None:
    with pytest.raises(ReviewDatabaseUrlError, match=named):
        open_store(url, store_class=store_class)


def test_the_queue_filters_counts_keeps_thumbnails_and_pages_the_audit(
        store: ReviewStore) -> None:
    from datetime import UTC, datetime, timedelta

    from serve.review.base import ItemFilter

    old = datetime.now(UTC) - timedelta(hours=3)
    ids = []
    for cid, flagged, policy, at, thumb in (("a", ["hate"], "p1", old, b"RIFFwebp"),
                                            ("b", ["spam"], "p1", None, None),
                                            ("c", ["hate", "spam"], "p2", None, None)):
        ids.append(store.record_model_decision(
            content_id=cid, decision="review", model="m", policy_version=policy,
            request_id="r", text=None, has_image=thumb is not None, author_id=None,
            scores={}, flagged_labels=flagged, reasons=[], model_versions={}, at=at,
            thumbnail=thumb))
    def cids(where: ItemFilter) -> list[str]:
        return [i.content_id for i in store.list_items(where=where)]

    assert cids(ItemFilter(label="hate")) == ["a", "c"]
    assert cids(ItemFilter(label="spam", policy_version="p1")) == ["b"]
    assert cids(ItemFilter(created_before=datetime.now(UTC) - timedelta(hours=1))) == ["a"]
    assert store.count_items(where=ItemFilter(label="spam")) == 2
    assert store.count_items(status="allow") == 0
    assert store.thumbnail(ids[0]) == b"RIFFwebp" and store.thumbnail(ids[1]) is None
    newest = store.audit(newest_first=True, limit=2)
    assert [r["content_id"] for r in newest] == ["c", "b"]
    assert [r["content_id"] for r in store.audit(before_id=newest[-1]["id"])] == ["a"]
