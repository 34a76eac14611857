"""A real Redis for the feature-store tests: FUNNEL_TEST_REDIS_URL (CI sets it; `.ci/run`
uses database 15 of the Redis on 127.0.0.1). Each test gets its own key prefix and removes
its keys after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("FUNNEL_TEST_REDIS_URL")


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.skip("FUNNEL_TEST_REDIS_URL is not set (CI sets it): Redis not tested")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    import redis

    p = f"test:{uuid.uuid4().hex[:10]}"
    yield p
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        r.delete(*keys)
