"""Wire input the fuzzer found holes in: ids and timestamps."""

from __future__ import annotations


def test_ids_in_paths_and_queries_are_ascii_and_64_bit() -> None:
    # found by the fuzzer: an id past 64 bits reached SQLite (500), and str.isdigit also
    # takes digits int() refuses
    from serve.api import MAX_ID, parse_uint

    assert parse_uint("12") == 12 and parse_uint(str(MAX_ID)) == MAX_ID
    for bad in ("²", "١٢", "-1", "", "1e3", " 1", str(MAX_ID + 1), "9" * 40):
        assert parse_uint(bad) is None, bad
    assert parse_uint("51", maximum=50) is None


def test_timestamps_on_the_wire_are_iso_text_not_numbers() -> None:
    # found by the fuzzer: pydantic alone reads 0 (or "0") as 1970-01-01
    import pytest
    from pydantic import ValidationError

    from serve.api import EventIn, FeedRequest

    ok = FeedRequest.model_validate({"user_id": 1, "context": {
        "timestamp": "2026-12-01T10:00:00Z"}})
    assert ok.context.timestamp is not None and ok.context.timestamp.year == 2026
    for bad in (0, "0", "1700000000", 1.5e9, True):
        with pytest.raises(ValidationError) as e:
            FeedRequest.model_validate({"user_id": 1, "context": {"timestamp": bad}})
        assert e.value.errors()[0]["loc"] == ("context", "timestamp")
    with pytest.raises(ValidationError):
        EventIn.model_validate({"request_id": "r", "user_id": 1, "item_id": 2,
                                "event": "click", "timestamp": 1764583200})
    # found by the fuzzer: years the time features cannot hold (500 before)
    for far in ("0060-06-30T06:15:15-11:28", "2999-01-01T00:00:00Z", "1969-12-31T23:59:59Z"):
        with pytest.raises(ValidationError, match="a time from 1970-01-01"):
            FeedRequest.model_validate({"user_id": 1, "context": {"timestamp": far}})


def test_text_the_review_database_keeps_refuses_nul_on_every_backend() -> None:
    # found by the gRPC fuzzer once CI ran the stack on PostgreSQL: a text with U+0000 passed
    # validation, PostgreSQL refused to store it, Moderate answered INTERNAL (SQLite took it)
    import pytest
    from pydantic import ValidationError

    from serve.api import ModerateRequest, ReviewDecisionIn

    assert ModerateRequest.model_validate({"content_id": "c", "text": "fine"}).text == "fine"
    with pytest.raises(ValidationError, match="NUL characters") as e:
        ModerateRequest.model_validate({"content_id": "c", "text": "a\x00b"})
    assert e.value.errors()[0]["loc"] == ("text",)
    for field in ("reviewer", "note"):
        body = {"decision": "block", "reviewer": "ana", field: "x\x00"}
        with pytest.raises(ValidationError, match="NUL characters") as e:
            ReviewDecisionIn.model_validate(body)
        assert e.value.errors()[0]["loc"] == (field,)
    # the schema says so, for clients and the HTTP fuzzer
    assert ModerateRequest.model_json_schema()["properties"]["text"]["anyOf"][0][
        "pattern"] == "^[^\\u0000]*$"


def test_content_id_is_text_and_takes_a_feed_item_id_as_an_integer() -> None:
    # found by a new user: feed item ids are integers, content_id was text only (422 for
    # `"content_id": 1241`); it stays text (ids from any system) and reads an item id too
    import pytest
    from pydantic import ValidationError

    from serve.api import ModerateRequest

    max_id = 2**63 - 1

    def content_id(v: object) -> str:
        return ModerateRequest.model_validate({"content_id": v, "text": "hi"}).content_id

    assert content_id(1241) == "1241" and content_id(max_id) == str(max_id)
    assert content_id("1241") == "1241"
    assert content_id("5f0c6e1a-9a3b-4c1e-8f55-2b7d9e3c1a00").startswith("5f0c")
    for bad in (-1, max_id + 1, True, 12.0, "bad id!", ""):
        with pytest.raises(ValidationError) as e:
            content_id(bad)
        assert e.value.errors()[0]["loc"] == ("content_id",), bad
    with pytest.raises(ValidationError, match="an integer content_id is a feed item id"):
        content_id(-1)
    # documented as either, for clients and the HTTP fuzzer; answered as text
    field = ModerateRequest.model_json_schema()["properties"]["content_id"]
    assert {s["type"] for s in field["anyOf"]} == {"string", "integer"}
    assert "JSON integer" in field["description"]
