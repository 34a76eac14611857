"""Outcome events without the web framework: ids, time checks, duplicate suppression."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from serve.api import EventIn, EventsRequest
from serve.events import Deduper, event_columns, event_key, time_problems

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def ev(**kw: object) -> EventIn:
    base: dict[str, object] = {"request_id": "r1", "user_id": 1, "item_id": 7,
                               "event": "click", "timestamp": NOW.isoformat()}
    return EventIn.model_validate({**base, **kw})


def test_the_same_fields_are_the_same_event() -> None:
    assert event_key(ev()) == event_key(ev())
    assert event_key(ev()) != event_key(ev(event="like"))
    assert event_key(ev(event_id="abc")) == "abc"
    # a naive timestamp is UTC: the same instant, the same id
    assert event_key(ev(timestamp="2026-12-01T12:00:00")) == event_key(ev())


def test_timestamps_ahead_beyond_the_tolerance_or_too_old_name_the_field() -> None:
    ok = ev(timestamp=(NOW + timedelta(minutes=4)).isoformat())
    ahead = ev(timestamp=(NOW + timedelta(hours=1)).isoformat())
    old = ev(timestamp=(NOW - timedelta(days=8)).isoformat())
    assert time_problems([ok], NOW, prefix="") == []
    p = time_problems([ok, ahead, old], NOW, prefix="events")
    assert [x["field"] for x in p] == ["events[1].timestamp", "events[2].timestamp"]
    assert "in the future" in p[0]["message"] and "older than 7 days" in p[1]["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"event": "purchase"}, "event"), ({"user_id": "1"}, "user_id"),
    ({"value": -1.0}, "value"), ({"request_id": "a b"}, "request_id"),
    ({"colour": "red"}, "colour"), ({"timestamp": "yesterday"}, "timestamp")])
def test_bad_events_are_refused_naming_the_field(change: dict[str, object],
                                                 field: str) -> None:
    with pytest.raises(ValidationError) as e:
        ev(**change)
    assert e.value.errors()[0]["loc"][0] == field


def test_batches_are_bounded() -> None:
    one = ev().model_dump(mode="json")
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": [one] * 501})
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": []})


def test_deduper_forgets_the_oldest_first() -> None:
    d = Deduper(capacity=2)
    assert d.first_time("a") and d.first_time("b")
    assert not d.first_time("a")  # seen; now the most recent
    assert d.first_time("c")  # forgets b, the oldest
    assert d.first_time("b") and not d.first_time("c")


def test_columns_carry_the_event_time_in_microseconds() -> None:
    cols, n = event_columns([ev(), ev(event="dwell", value=3.5)], ["k1", "k2"],
                            received_us=1, replica="r")
    assert n == 2 and cols["event_id"] == ["k1", "k2"] and cols["value"] == [None, 3.5]
    assert cols["ts"] == [int(NOW.timestamp() * 1_000_000)] * 2
