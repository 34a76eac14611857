"""The request's cost ledger: sections charge the thread's CPU, child tasks and worker
threads charge the same request, Triton's rows are priced from its statistics' deltas."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve import cost
from serve.pipeline import run_source
from serve.sources import SourceQuery
from serve.types import Candidates


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


def test_a_section_charges_this_threads_cpu_not_its_waiting() -> None:
    c = cost.RequestCost("feed")
    with cost.charging(c):
        with cost.section(cost.INGRESS):
            burn(0.05)
        with cost.section(cost.source_stage("ann"), "v1"):
            time.sleep(0.1)  # waiting is no CPU
            burn(0.02)
    assert 0.05 <= c.core_s[(cost.INGRESS, "")] < 0.09
    assert 0.02 <= c.core_s[("source:ann", "v1")] < 0.05
    assert c.total_s == pytest.approx(sum(c.core_s.values()))


def test_no_request_means_no_charge_and_an_override_takes_every_section() -> None:
    with cost.section(cost.INGRESS):  # outside a request: nothing to charge, no error
        burn(0.001)
    shadow = cost.shadow_cost("candidate")
    with cost.charging(shadow):
        with cost.section(cost.INGRESS):
            burn(0.01)
        shadow.charge(cost.RANKER, 0.5, "v2")
    assert {k[0] for k in shadow.core_s} == {cost.SHADOW}
    assert shadow.route == "shadow" and shadow.variant == "candidate"


def test_laps_skip_what_the_loop_ran_between_them() -> None:
    c = cost.RequestCost("feed")
    lap = cost.Lap(c)
    burn(0.02)
    lap.charge(cost.INGRESS)
    burn(0.05)  # another request's turn on the loop
    lap.mark()
    burn(0.01)
    lap.charge(cost.INGRESS)
    assert 0.03 <= c.core_s[(cost.INGRESS, "")] < 0.05


def test_child_tasks_and_a_pooled_sources_thread_charge_the_same_request() -> None:
    class Slow:
        name = "social"
        inline = False

        def generate(self, query: SourceQuery, quota: int) -> Candidates:
            burn(0.03)
            return Candidates.empty()

    async def main() -> cost.RequestCost:
        c = cost.RequestCost("feed")
        with cost.charging(c):
            async def child() -> None:
                with cost.section(cost.INGRESS):
                    burn(0.01)
            await asyncio.gather(child(), run_source(Slow(), SourceQuery(  # type: ignore[arg-type]
                user_id=1, known_user=True, user_vec=None, now_s=0.0), 10, 5.0))
        return c

    c = asyncio.run(main())
    assert c.core_s[("source:social", "")] >= 0.03
    assert c.core_s[(cost.INGRESS, "")] >= 0.01


def test_triton_rows_are_priced_by_the_compute_per_row_between_two_polls() -> None:
    rates = cost.TritonRates()
    c = cost.RequestCost("feed")
    c.ranker_model = "v1"
    c.ranker_rows("ranker", 40)
    assert rates.per_row("ranker") == 0.0  # no rate before two polls
    rates.update("ranker", compute_ns=1_000_000_000, rows=1_000)
    rates.update("ranker", compute_ns=3_000_000_000, rows=2_000)  # 2 s over 1,000 rows
    assert rates.per_row("ranker") == pytest.approx(0.002)
    c.price_rows(rates)
    assert c.core_s == {(cost.RANKER, "v1"): pytest.approx(0.08)}
    assert c.rows == {}
    rates.update("ranker", compute_ns=3_000_000_000, rows=2_000)  # idle: rate kept
    assert rates.per_row("ranker") == pytest.approx(0.002)
    rates.update("ranker", compute_ns=10, rows=1)  # Triton restarted: new baseline
    assert rates.per_row("ranker") == pytest.approx(0.002)
    rates.update("ranker", compute_ns=10 + 500_000_000, rows=101)
    assert rates.per_row("ranker") == pytest.approx(0.005)
    assert "ranker" in rates.models


def test_triton_statistics_sum_every_version_and_compute_part() -> None:
    stats = {"model_stats": [
        {"name": "ranker", "version": "1", "inference_count": "30",
         "inference_stats": {"compute_input": {"count": "3", "ns": "100"},
                             "compute_infer": {"count": "3", "ns": "1000"},
                             "compute_output": {"count": "3", "ns": "10"},
                             "queue": {"count": "3", "ns": "99999"}}},
        {"name": "ranker", "version": "2", "inference_count": "5",
         "inference_stats": {"compute_infer": {"ns": "7"}}}]}
    assert cost.triton_compute(stats) == (1117, 35)  # queueing is waiting, not compute
    assert cost.triton_compute({}) == (0, 0)


def test_a_metered_loop_charges_each_tasks_steps_to_its_own_request() -> None:
    async def request(c: cost.RequestCost, ms: float, source_ms: float) -> None:
        with cost.charging(c):
            burn(ms / 1000)
            await asyncio.sleep(0.01)  # the other request runs meanwhile
            with cost.section(cost.source_stage("trending")):  # split out of the step
                burn(source_ms / 1000)
            with cost.section(cost.INGRESS):  # the step covers it: not charged twice
                burn(ms / 1000)
            await asyncio.sleep(0)

    async def background() -> None:
        burn(0.03)  # no request's

    async def main() -> tuple[cost.RequestCost, cost.RequestCost]:
        assert cost.meter_loop(asyncio.get_running_loop())
        assert not cost.meter_loop(asyncio.get_running_loop())  # once
        a, b = cost.RequestCost("feed"), cost.RequestCost("moderate")
        await asyncio.gather(asyncio.create_task(request(a, 20, 10)),
                             asyncio.create_task(request(b, 5, 0)),
                             asyncio.create_task(background()))
        return a, b

    a, b = asyncio.run(main())
    assert 0.040 <= a.core_s[(cost.INGRESS, "")] < 0.050
    assert 0.010 <= a.core_s[("source:trending", "")] < 0.015
    assert 0.010 <= b.core_s[(cost.INGRESS, "")] < 0.014


def test_rows_of_a_model_on_a_gpu_are_gpu_seconds() -> None:
    rates = cost.TritonRates()
    rates.kinds["ranker"] = cost.triton_on_gpu(
        {"config": {"instance_group": [{"kind": "KIND_GPU", "count": 1}]}})
    assert not cost.triton_on_gpu({"config": {"instance_group": [{"kind": "KIND_CPU"}]}})
    rates.update("ranker", 0, 0)
    rates.update("ranker", 1_000_000, 100)  # 10 us of GPU per row
    c = cost.RequestCost("feed")
    c.ranker_model = "v1"
    c.ranker_rows("ranker", 50)
    c.price_rows(rates)
    assert c.core_s == {} and c.gpu_s == {(cost.RANKER, "v1"): pytest.approx(0.0005)}


def test_with_costs_off_nothing_is_metered_or_recorded() -> None:
    from monitoring import metrics

    before = metrics.COST_REQUESTS.labels("feed", "primary")._value.get()
    cost.set_recording(False)
    try:
        async def main() -> bool:
            return cost.meter_loop(asyncio.get_running_loop())

        assert asyncio.run(main()) is False
        with cost.request("feed") as c:
            burn(0.001)
        assert c is not None  # the ledger still exists for the code that uses it
        assert metrics.COST_REQUESTS.labels("feed", "primary")._value.get() == before
    finally:
        cost.set_recording(True)
    with cost.request("feed"):
        pass
    assert metrics.COST_REQUESTS.labels("feed", "primary")._value.get() == before + 1


def test_the_loops_work_between_steps_is_shared_by_steps() -> None:
    """CPU a loop spends outside task steps (here: plain callbacks) is shared among the
    requests finished afterwards, by their number of steps (`event_loop`)."""
    async def request(c: cost.RequestCost) -> None:
        with cost.charging(c):
            for _ in range(5):
                asyncio.get_running_loop().call_soon(burn, 0.004)  # between steps
                await asyncio.sleep(0)
            c.finish()

    async def main() -> cost.RequestCost:
        loop = asyncio.get_running_loop()
        assert cost.meter_loop(loop)
        sampler = loop.create_task(cost._loop_share(every_s=0.05))
        await asyncio.sleep(0)
        last = cost.RequestCost("feed")
        for _ in range(15):  # steady work: every sample sees requests and callbacks
            last = cost.RequestCost("feed")
            await loop.create_task(request(last))
        sampler.cancel()
        return last

    c = asyncio.run(main())
    # about 4 ms per step: the last request's ~6 steps get some 20-30 ms
    assert 0.005 < c.core_s[(cost.EVENT_LOOP, "")] < 0.1
    assert c.steps == 0  # charged once
