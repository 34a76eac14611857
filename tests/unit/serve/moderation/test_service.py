"""ModerationService: score combination, policy, recording, and degrading to review."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from serve.moderation.media import ImageInfo
from serve.moderation.policy import parse_policy
from serve.moderation.service import ModerationInput, ModerationService, write_record
from serve.review.spool import ReviewSpool
from serve.review.store import SqlReviewStore as ReviewStore
from tests.fakes import FakeContentScorer

LABELS = ("abuse", "nudity")
POLICY = parse_policy({"version": "t1", "labels": {
    "abuse": {"review_at": 0.5, "block_at": 0.9},
    "nudity": {"review_at": 0.2, "block_at": 0.8}}}, labels=LABELS)
IMAGE = ImageInfo(data=b"img", format="JPEG", width=1, height=1)
VERSIONS = {"moderation_text": "b1", "moderation_image": "nsfw-1"}


def _service(scorer: FakeContentScorer, store: ReviewStore | None = None,
             timeout_s: float = 1.0) -> ModerationService:
    return ModerationService(scorer=scorer, policy=POLICY, store=store,
                             model_versions=VERSIONS, timeout_s=timeout_s)


def _run(svc: ModerationService, **kw: object) -> object:
    return asyncio.run(svc.moderate(ModerationInput(content_id="c1", request_id="r1", **kw)))  # type: ignore[arg-type]


def test_text_and_image_take_the_higher_score_per_label() -> None:
    svc = _service(FakeContentScorer(text={"abuse": 0.1, "nudity": 0.1}, image={"nudity": 0.3}))
    out = _run(svc, text="hi", image=IMAGE)
    assert out.labels == {"abuse": 0.1, "nudity": 0.3}  # type: ignore[attr-defined]
    assert out.decision == "review"  # type: ignore[attr-defined]
    assert out.model_versions == VERSIONS  # type: ignore[attr-defined]


def test_review_is_queued_and_every_decision_logged(tmp_path: Path) -> None:
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
    svc = _service(FakeContentScorer(text={"abuse": 0.6, "nudity": 0.0}), store)
    out = _run(svc, text="you idiot", author_id=9)
    assert out.review_id is not None  # type: ignore[attr-defined]
    [item] = store.list_items()
    assert (item.content_id, item.text, item.author_id, item.flagged_labels) == (
        "c1", "you idiot", 9, ("abuse",))
    assert item.policy_version == "t1"
    allow = _service(FakeContentScorer(text={"abuse": 0.0, "nudity": 0.0}), store)
    assert _run(allow, text="hello").review_id is None  # type: ignore[attr-defined]
    assert [e.decision for e in store.decision_log()] == ["review", "allow"]


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_failed_model_degrades_to_review_never_allow(mode: str) -> None:
    scorer = FakeContentScorer(text={"abuse": 0.0, "nudity": 0.0}, image={"nudity": 0.0},
                        **{mode: "image"})  # type: ignore[arg-type]
    out = _run(_service(scorer, timeout_s=0.05), text="hello", image=IMAGE)
    assert out.degraded == ("moderation_image",)  # type: ignore[attr-defined]
    assert out.decision == "review"  # type: ignore[attr-defined]
    assert "moderation_image: unavailable" in out.reasons[-1]  # type: ignore[attr-defined]
    assert set(out.model_versions) == {"moderation_text"}  # type: ignore[attr-defined]


def test_a_reported_item_goes_to_review_whatever_the_models_say(tmp_path: Path) -> None:
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
    svc = _service(FakeContentScorer(text={"abuse": 0.0, "nudity": 0.0}), store)
    out = _run(svc, text="buy cheap pills now", reported=True)
    assert out.decision == "review"  # type: ignore[attr-defined]
    assert out.reasons[-1] == "reported by a user; held for human review"  # type: ignore[attr-defined]
    assert out.review_id is not None  # type: ignore[attr-defined]
    assert [i.text for i in store.list_items()] == ["buy cheap pills now"]
    blocked = _service(FakeContentScorer(text={"abuse": 0.95, "nudity": 0.0}), store)
    assert _run(blocked, text="x", reported=True).decision == "block"  # type: ignore[attr-defined]


def test_a_block_stays_a_block_when_another_model_fails() -> None:
    scorer = FakeContentScorer(text={"abuse": 0.95, "nudity": 0.0}, fail="image")
    out = _run(_service(scorer), text="x", image=IMAGE)
    assert out.decision == "block"  # type: ignore[attr-defined]


class FlakyStore(ReviewStore):
    """A real SQLite review store whose writes fail while `down` (the database away), or
    commit and then fail (the answer lost on the way back) while `lose_answers`."""

    down = False
    lose_answers = False

    def record_model_decision(self, **kw: Any) -> int | None:  # type: ignore[override]
        from serve.errors import ReviewStoreError

        if self.down:
            raise ReviewStoreError("review database unavailable (test): refused")
        out = super().record_model_decision(**kw)
        if self.lose_answers:
            raise ReviewStoreError("review database unavailable (test): connection reset")
        return out


def _parking(tmp_path: Path, scores: dict[str, float]) -> tuple[ModerationService, FlakyStore,
                                                                 ReviewSpool]:
    store = FlakyStore(f"sqlite:///{tmp_path / 'r.db'}")
    spool = ReviewSpool(tmp_path / "spool.db")
    svc = ModerationService(scorer=FakeContentScorer(text=scores), policy=POLICY, store=store,
                            model_versions=VERSIONS, spool=spool)
    return svc, store, spool


def _moderate(svc: ModerationService, cid: str) -> Any:
    return asyncio.run(svc.moderate(ModerationInput(content_id=cid, request_id="r-" + cid,
                                                    text="x")))


def test_while_the_database_is_away_decisions_are_parked_and_answered(tmp_path: Path) -> None:
    svc, store, spool = _parking(tmp_path, {"abuse": 0.6, "nudity": 0.0})
    store.down = True
    out = _moderate(svc, "c1")
    assert out.decision == "review" and out.review_id is None
    assert out.degraded == ("review_queue",)  # the decision stands; the queue write waits
    assert spool.depth().records == 1 and store.audit() == []
    store.down = False
    later = _moderate(svc, "c2")  # parked behind c1: the log keeps the order decisions came
    assert later.degraded == ("review_queue",) and spool.depth().records == 2
    done = spool.drain(lambda k, r: write_record(store, k, r))
    assert (done.written, done.remaining) == (2, 0)
    assert [(e.content_id, e.decision) for e in store.decision_log()] == [
        ("c1", "review"), ("c2", "review")]
    assert [i.content_id for i in store.list_items()] == ["c1", "c2"]
    assert _moderate(svc, "c3").degraded == ()  # drained: straight to the database again


def test_a_write_whose_answer_was_lost_is_not_recorded_twice(tmp_path: Path) -> None:
    svc, store, spool = _parking(tmp_path, {"abuse": 0.6, "nudity": 0.0})
    store.lose_answers = True  # committed, then the connection dropped: parked anyway
    assert _moderate(svc, "c1").degraded == ("review_queue",)
    store.lose_answers = False
    assert spool.drain(lambda k, r: write_record(store, k, r)).remaining == 0
    assert len(store.audit()) == 1 and len(store.list_items()) == 1


def test_without_a_spool_an_unreachable_database_fails_the_request(tmp_path: Path) -> None:
    from serve.errors import ReviewStoreError

    store = FlakyStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.down = True
    svc = _service(FakeContentScorer(text={"abuse": 0.0, "nudity": 0.0}), store)
    with pytest.raises(ReviewStoreError):
        _moderate(svc, "c1")


def _png(w: int, h: int) -> ImageInfo:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return ImageInfo(data=buf.getvalue(), format="PNG", width=w, height=h)


def test_a_reviewed_image_keeps_a_small_thumbnail_even_when_parked(tmp_path: Path) -> None:
    import io

    from PIL import Image

    store = ReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
    svc = _service(FakeContentScorer(text={"abuse": 0.0}, image={"nudity": 0.5}), store)
    out = _run(svc, image=_png(1200, 600))
    thumb = store.thumbnail(out.review_id)  # type: ignore[attr-defined]
    assert thumb is not None
    with Image.open(io.BytesIO(thumb)) as im:
        assert (im.format, im.size) == ("WEBP", (320, 160))
    allowed = _service(FakeContentScorer(image={"nudity": 0.0}), store)
    assert _run(allowed, image=_png(50, 50)).review_id is None  # type: ignore[attr-defined]
    # parked while the database is away: the spool keeps the thumbnail (as base64 JSON)
    svc2, flaky, spool = _parking(tmp_path / "p", {"abuse": 0.0})
    svc2.scorer = FakeContentScorer(text={"abuse": 0.0}, image={"nudity": 0.5})
    flaky.down = True
    assert asyncio.run(svc2.moderate(ModerationInput(
        content_id="c9", request_id="r9", image=_png(40, 30)))).degraded == ("review_queue",)
    flaky.down = False
    spool.drain(lambda k, r: write_record(flaky, k, r))
    [item] = flaky.list_items()
    assert flaky.thumbnail(item.id) is not None
