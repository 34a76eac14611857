"""Wire payloads of the HTTP API (pydantic), separate from the pipeline's value objects.

Ids are strict integers: `"user_id": "42"` is a 422 naming the field, not a silent cast.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

MAX_LIMIT = 200
MAX_EXCLUDE = 10_000


class FeedContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["ios", "android", "web", "other"] | None = None
    locale: str | None = Field(None, max_length=35,
                               pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
                               description="BCP 47 tag, e.g. en-US")
    timestamp: datetime | None = Field(None, description="ISO 8601; default: serving clock")


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
