from __future__ import annotations

import os
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One set of BLAS kernels on every x86-64 machine: OpenBLAS picks its kernels by CPU, and on
# a CPU with AVX-512 BF16 (Sapphire Rapids) they round the last bits of a float32 product
# differently from the AVX2 kernels every x86-64 runner has, which the page-equality test's
# bit-exact ranker-input digests see. Set before numpy loads (this file is read first).
if platform.machine() in ("x86_64", "AMD64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Fault tests, then fuzz tests, after every other test: they kill a replica, break the
    impression log, decide review items and apply rollout configs on the shared stack,
    which no other test should see. (The fuzz module's last test reads every log.)"""
    def rank(item: object) -> int:
        marker = item.get_closest_marker  # type: ignore[attr-defined]
        return 2 if marker("fuzz") else 1 if marker("fault") else 0

    items.sort(key=rank)
