"""Wire payloads of the HTTP API (pydantic), separate from the pipeline's value objects.

Ids are strict integers: `"user_id": "42"` is a 422 naming the field, not a silent cast.
The one id that is text is moderation's `content_id` (content from any system: post ids,
UUIDs, comment keys); it also takes a feed item id as a JSON integer, read as its decimal
string, which is how the feed's moderation filter matches it (`serve.moderation.verdicts`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from funnel.contracts import names

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]")


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # well inside what pandas' ns timestamps hold


def _iso_text(v: Any) -> Any:
    """A date-time on the wire is ISO 8601 text: pydantic alone would also read a number (or
    a numeric string) as seconds since 1970, which the schema does not promise."""
    if isinstance(v, datetime) or (isinstance(v, str) and _ISO_DATE.match(v)):
        return v
    raise ValueError("an ISO 8601 date-time string, e.g. 2026-12-01T10:00:00Z")


def _in_range(v: datetime) -> datetime:
    """Found by the fuzzer: years 60 or 2999 broke the time features (500)."""
    aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"a time from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d}")
    return v


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_in_range)]
MAX_LIMIT = 200
MAX_EXCLUDE = 10_000



def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("NUL characters (U+0000) are not allowed")
    return v


# Text the review database keeps: PostgreSQL's text cannot hold U+0000 (SQLite's can), and
# the API's answer must not depend on the database, so it is refused here on every backend.
StoredText = Annotated[str, AfterValidator(_no_nul),
                       Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})]

MAX_ID = 2**63 - 1  # item ids are signed 64-bit integers in the databases
_UINT = re.compile(r"^[0-9]{1,19}$")


def parse_uint(text: str, *, maximum: int = MAX_ID) -> int | None:
    """A decimal integer in 0..maximum in ASCII digits, else None (`str.isdigit` also takes
    '²' and other digits `int` refuses, and a database refuses ids past 64 bits)."""
    if not _UINT.match(text):
        return None
    value = int(text)
    return value if value <= maximum else None
_CONTENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"


def _item_id_as_text(v: Any) -> Any:
    """A JSON integer content id (a feed item id) as its decimal string; anything else is
    left to the string checks (so `true` or `1.5` is still refused)."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v <= MAX_ID:
            raise ValueError(f"an integer content_id is a feed item id in 0..{MAX_ID}; "
                             f"got {v}")
        return str(v)
    return v


ContentId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=_CONTENT_ID_PATTERN),
    BeforeValidator(_item_id_as_text),
    # the wire form clients may send (pydantic alone would document only the string)
    WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 128, "pattern": _CONTENT_ID_PATTERN},
        {"type": "integer", "minimum": 0, "maximum": MAX_ID}]}, mode="validation")]


class FeedContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["ios", "android", "web", "other"] | None = None
    locale: str | None = Field(None, max_length=35,
                               pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
                               description="BCP 47 tag, e.g. en-US")
    timestamp: IsoDateTime | None = Field(None, description="ISO 8601; default: serving clock")


class FeedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: StrictInt = Field(ge=0, le=2**63 - 1)
    limit: StrictInt = Field(50, ge=1, le=MAX_LIMIT)
    context: FeedContext = Field(default_factory=FeedContext)
    exclude_item_ids: list[StrictInt] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class FeedItemOut(BaseModel):
    item_id: int
    rank: int
    score: float
    sources: list[str]
    explain: dict[str, Any]


class FeedResponse(BaseModel):
    request_id: str
    user_id: int
    items: list[FeedItemOut]
    model_versions: dict[str, str]
    variants: dict[str, str]
    degraded: list[str]
    cold_start: bool = False


class ErrorBody(BaseModel):
    error: str
    detail: Any
    request_id: str


class ModerateRequest(BaseModel):
    """`POST /v1/moderate`: text, an image, or both."""

    # documented for clients and the fuzzer; enforced by missing_content() (both fields named)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}},
        {"required": ["image_base64"], "properties": {"image_base64": {"type": "string",
                                                                       "minLength": 1}}}]})

    content_id: ContentId = Field(
        description="your id for the content, as text (1-128 of A-Z a-z 0-9 . _ : -): ids "
        "from any system, e.g. UUIDs. A feed post's id may be sent as a JSON integer; it is "
        "read as its decimal string, and answered as one (`1241` -> `\"1241\"`), which is "
        "how the feed matches moderation decisions to its items.")
    text: StoredText | None = Field(None, description="at most 64 KiB of UTF-8, no U+0000")
    image_base64: str | None = Field(None, description="JPEG/PNG/WebP/...; <= 5 MiB decoded, "
                                     "<= 4096 px a side")
    author_id: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    locale: str | None = Field(None, max_length=35,
                               pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    reported: StrictBool = Field(False, description="a user reported this content: the "
                                 "decision is at least `review` (a person looks at it, "
                                 "whatever the models say); a model's `block` stays")

    def missing_content(self) -> list[dict[str, Any]]:
        """Validation detail when neither text nor image is given (both fields named)."""
        has_text = self.text is not None and self.text.strip() != ""
        if has_text or self.image_base64:
            return []
        msg = "give at least one of text or image_base64, non-empty"
        return [{"field": "text", "message": msg, "given": self.text},
                {"field": "image_base64", "message": msg, "given": self.image_base64}]


class ModerateResponse(BaseModel):
    content_id: str
    labels: dict[str, float]
    decision: Literal["allow", "review", "block"]
    reasons: list[str]
    policy_version: str
    model_versions: dict[str, str]
    request_id: str
    review_id: int | None = None
    degraded: list[str] = Field(default_factory=list)


class ReviewItemOut(BaseModel):
    id: int
    content_id: str
    text: str | None
    has_image: bool
    author_id: int | None
    scores: dict[str, float]
    flagged_labels: list[str]
    reasons: list[str]
    policy_version: str
    model_versions: dict[str, str]
    status: Literal["pending", "allow", "block"]
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None


class ReviewList(BaseModel):
    items: list[ReviewItemOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page")


class ReviewDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["allow", "block"]
    reviewer: StoredText | None = Field(
        None, max_length=128, deprecated=True,
        description="Deprecated and ignored: a decision is recorded as the authenticated "
        "caller (a console account, or `token:admin` for the admin token).")
    note: StoredText | None = Field(None, max_length=4000)


EVENT_TYPES = names.EVENT_TYPES
MAX_EVENTS = 500


class EventIn(BaseModel):
    """One outcome of a served item (`POST /v1/events`). `event_id` makes retries idempotent;
    without one, the event's own fields are its id (the same event sent twice counts once)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(None, min_length=1, max_length=128,
                                 pattern=r"^[A-Za-z0-9._:-]+$")
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                            description="the feed response's request_id")
    user_id: StrictInt = Field(ge=0, le=2**63 - 1)
    item_id: StrictInt = Field(ge=0, le=2**63 - 1)
    event: Literal["click", "like", "comment", "share", "hide", "report", "dwell"]
    value: float | None = Field(None, ge=0, le=86_400,
                                description="dwell: seconds on the item; else optional")
    timestamp: IsoDateTime = Field(description="ISO 8601 with an offset (UTC without one); at "
                                "most 5 minutes ahead of the server's clock")


class EventsRequest(BaseModel):
    """A batch: `{"events": [...]}`, at most 500."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    request_id: str

