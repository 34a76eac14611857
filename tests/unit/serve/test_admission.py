"""Admission control: the gate's bound, and the refusal as each edge answers it."""

from __future__ import annotations

import asyncio

import pytest

from serve.admission import AdmissionGate
from serve.errors import Overloaded


def test_the_gate_admits_up_to_its_bound_then_refuses_and_counts() -> None:
    gate = AdmissionGate(2, retry_after_s=3.0)
    gate.enter()
    with gate.admit():
        assert gate.inflight == 2
        with pytest.raises(Overloaded, match="bound of 2") as e:
            gate.enter()
        assert e.value.retry_after_s == 3.0
        assert (e.value.http_status, e.value.grpc_code) == (429, "RESOURCE_EXHAUSTED")
    assert gate.inflight == 1  # the refused request entered nothing
    gate.leave()
    assert (gate.inflight, gate.admitted, gate.shed) == (0, 2, 1)


def test_zero_means_no_bound_and_bad_settings_are_refused() -> None:
    gate = AdmissionGate(0)
    for _ in range(1000):
        gate.enter()
    assert gate.shed == 0
    with pytest.raises(ValueError, match="max_inflight"):
        AdmissionGate(-1)
    with pytest.raises(ValueError, match="retry_after_s"):
        AdmissionGate(1, retry_after_s=0)


def test_concurrent_requests_past_the_bound_are_refused_and_the_rest_served() -> None:
    gate = AdmissionGate(3)
    release = asyncio.Event()

    async def request() -> str:
        try:
            with gate.admit():
                await release.wait()
                return "served"
        except Overloaded:
            return "shed"

    async def go() -> list[str]:
        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks)

    assert sorted(asyncio.run(go())) == ["served"] * 3 + ["shed"] * 2
    assert gate.inflight == 0
