from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Fault tests, then fuzz tests, after every other test: they kill a replica, break the
    impression log, decide review items and apply rollout configs on the shared stack,
    which no other test should see. (The fuzz module's last test reads every log.)"""
    def rank(item: object) -> int:
        marker = item.get_closest_marker  # type: ignore[attr-defined]
        return 2 if marker("fuzz") else 1 if marker("fault") else 0

    items.sort(key=rank)
