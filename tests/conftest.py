from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Fuzz tests last: the fuzzer decides review items and applies rollout configs on the
    shared stack, which no other test should see."""
    items.sort(key=lambda item: item.get_closest_marker("fuzz") is not None)
