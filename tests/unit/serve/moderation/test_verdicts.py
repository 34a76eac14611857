"""Live verdicts: reviewer decisions are final; model decisions can only tighten."""

from __future__ import annotations

from serve.filters import FilterContext, Moderation
from serve.moderation.verdicts import LiveVerdicts, VerdictEvent
from tests.fakes import Info, items_of


def _ev(i: int, cid: str, source: str, decision: str) -> VerdictEvent:
    return VerdictEvent(id=i, content_id=cid, source=source, decision=decision)  # type: ignore[arg-type]


def test_reviewer_decision_is_final_either_way() -> None:
    lv = LiveVerdicts()
    lv.apply([_ev(1, "5", "model", "block"), _ev(2, "5", "reviewer", "allow"),
              _ev(3, "6", "reviewer", "block")])
    assert lv.effective(5, "allow") == "allow"
    assert lv.effective(6, "allow") == "block"


def test_model_decision_tightens_but_never_unblocks() -> None:
    lv = LiveVerdicts()
    lv.apply([_ev(1, "5", "model", "review"), _ev(2, "6", "model", "allow")])
    assert lv.effective(5, "allow") == "review"
    assert lv.effective(6, "block") == "block"
    assert lv.effective(7, "allow") == "allow"  # nothing live: the catalog's verdict


def test_replay_skips_seen_ids_and_non_post_content() -> None:
    lv = LiveVerdicts()
    assert lv.apply([_ev(1, "5", "model", "block"), _ev(2, "img-9", "model", "block")]) == 2
    assert lv.apply([_ev(2, "5", "model", "allow"), _ev(3, "8", "model", "review")]) == 1
    assert lv.last_id == 3 and len(lv) == 2
    assert lv.effective(5, "allow") == "block"


def test_moderation_filter_uses_live_verdicts() -> None:
    lv = LiveVerdicts()
    lv.apply([_ev(1, "10", "reviewer", "block"), _ev(2, "11", "model", "review")])
    items = items_of([(i, Info(author_id=1, topic="t")) for i in (10, 11, 12)])
    hold = FilterContext(exclude_ids=frozenset(), seen_ids=frozenset(),
                         blocked_authors=frozenset(), languages=None, live_verdicts=lv)
    serve_review = FilterContext(exclude_ids=frozenset(), seen_ids=frozenset(),
                                 blocked_authors=frozenset(), languages=None,
                                 review_policy="allow", live_verdicts=lv)
    f = Moderation()
    assert items.ids[f.keep(items, hold)].tolist() == [12]
    assert items.ids[f.keep(items, serve_review)].tolist() == [11, 12]
