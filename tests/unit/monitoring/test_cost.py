"""Cost reports from counter increases: $/1k by route, stage, model and variant, overhead
and memory, OpenCost's prices, and the counters read back from real /metrics text."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from monitoring.cost import (
    CostInputs,
    Prices,
    build_report,
    format_report,
    prices_from_opencost,
    usd_per_1k,
)
from monitoring.cost_sources import inputs_from_prometheus, inputs_from_scrapes

PRICES = Prices(cpu_core_hour_usd=3.6, memory_gib_hour_usd=1.0, gpu_hour_usd=2.0,
                source="test")  # $0.001 per core-second


def inputs() -> CostInputs:
    return CostInputs(
        window_s=3600,
        attributed={("ingress", "", "primary", "feed"): 40.0,
                    ("ranker", "v1", "primary", "feed"): 20.0,
                    ("ingress", "", "canary", "feed"): 5.0,
                    ("ranker", "v2", "canary", "feed"): 5.0,
                    ("moderation_text", "v1", "", "moderate"): 10.0,
                    ("ingress", "", "primary", "moderate"): 10.0},
        requests={("feed", "primary"): 1000, ("feed", "canary"): 100,
                  ("moderate", "primary"): 500},
        process_cpu={"ingress": 70.0, "moderation": 15.0, "ray": 10.0, "triton": 5.0},
        memory_bytes={"ingress": 2 * 2**30, "triton": 2**30})


def test_dollars_per_thousand_by_stage_variant_and_route() -> None:
    r = build_report(inputs(), PRICES)
    rows = {(x.route, x.stage, x.variant): x for x in r.rows}
    # the primary's ranker: 20 core-s over its 1,000 requests = $0.02 per 1k
    assert rows[("feed", "ranker", "primary")].usd_per_1k == pytest.approx(0.02)
    assert rows[("feed", "ranker", "canary")].usd_per_1k == pytest.approx(0.05)
    # no variant (the moderation process): per request of the whole route
    assert rows[("moderate", "moderation_text", "")].usd_per_1k == pytest.approx(0.02)
    v = {(x.route, x.variant): x for x in r.variants}
    assert v[("feed", "primary")].core_ms_per_request == pytest.approx(60.0)
    assert v[("feed", "canary")].core_ms_per_request == pytest.approx(100.0)
    assert r.attributed_core_s == pytest.approx(90.0)
    assert r.total_core_s == pytest.approx(100.0)
    assert r.overhead_core_s == pytest.approx(10.0)
    assert r.attributed_share == pytest.approx(0.9)
    assert r.memory_gib_hours == pytest.approx(3.0)
    feed = r.routes["feed"]
    assert feed["requests"] == 1100 and feed["usd_per_1k"] == pytest.approx(70 / 1100)
    # all-in: the overhead (10 core-s) and memory ($3) shared by attributed CPU (70/90)
    assert feed["all_in_usd_per_1k"] == pytest.approx(
        (0.001 * (70 + 10 * 70 / 90) + 3.0 * 70 / 90) * 1000 / 1100)
    text = format_report(r)
    assert "ranker" in text and "canary" in text and "overhead: 10.0 core-s (10.0 %)" in text


def test_gpu_seconds_are_priced_per_gpu_hour() -> None:
    inp = CostInputs(3600, {("ingress", "", "primary", "feed"): 3.6},
                     {("feed", "primary"): 1000}, {"ingress": 3.6},
                     gpu_attributed={("ranker", "v1", "primary", "feed"): 7.2})
    r = build_report(inp, PRICES)  # $2 per GPU-hour: 7.2 GPU-s = $0.004
    [gpu_row] = [x for x in r.rows if x.stage == "ranker"]
    assert gpu_row.gpu_s == pytest.approx(7.2) and gpu_row.core_s == 0
    assert gpu_row.usd_per_1k == pytest.approx(0.004)
    assert r.routes["feed"]["usd_per_1k"] == pytest.approx(0.0036 + 0.004)
    assert "GPU-s" in format_report(r)


def test_idle_is_the_capacity_the_stack_did_not_use() -> None:
    inp = CostInputs(100, {("ingress", "", "primary", "feed"): 60.0},
                     {("feed", "primary"): 100}, {"ingress": 80.0, "ray": 40.0},
                     capacity_cores=2.0)
    r = build_report(inp, PRICES)
    assert r.idle_core_s == pytest.approx(80.0)  # 200 core-s of capacity, 120 used
    assert "idle capacity (not used by the stack): 80.0 core-s" in format_report(r)
    assert build_report(CostInputs(100, {}, {}, {"ingress": 1.0}), PRICES).idle_core_s is None


def test_overhead_is_never_negative_and_an_empty_window_reports_nothing() -> None:
    r = build_report(CostInputs(60, {("ingress", "", "primary", "feed"): 5.0},
                                {("feed", "primary"): 10}, {"ingress": 4.0}), PRICES)
    assert r.overhead_core_s == 0.0
    empty = build_report(CostInputs(60, {}, {}, {}), PRICES)
    assert empty.attributed_share is None and empty.rows == [] and empty.routes == {}
    assert "none measured" in format_report(empty)


def test_usd_per_1k_of_a_request_cost() -> None:
    assert usd_per_1k(0.004, PRICES) == pytest.approx(0.004)
    assert usd_per_1k(None, PRICES) is None
    # the default price: 10 core-ms per request is 10 core-s per 1k = $0.0000878
    assert usd_per_1k(0.010, Prices()) == pytest.approx(10 / 3600 * 0.031611)


def test_opencost_prices_are_the_mean_over_nodes_and_keep_what_it_lacks() -> None:
    p = prices_from_opencost([("node_cpu_hourly_cost", 0.03), ("node_cpu_hourly_cost", 0.05),
                              ("node_ram_hourly_cost", 0.004), ("node_total_hourly_cost", 9)],
                             fallback=PRICES, source="http://opencost:9003/metrics")
    assert p.cpu_core_hour_usd == pytest.approx(0.04)
    assert p.memory_gib_hour_usd == pytest.approx(0.004)
    assert p.gpu_hour_usd == PRICES.gpu_hour_usd  # no GPU nodes: the configured price
    assert "OpenCost" in p.source
    with pytest.raises(ValueError, match="node_cpu_hourly_cost"):
        prices_from_opencost([("up", 1.0)], fallback=PRICES, source="x")


def _exposition(core: float, req: float, cpu: float, mem: float) -> str:
    reg = CollectorRegistry()
    c = Counter("funnel_cost_core_seconds", "", ["stage", "model", "variant", "route"],
                registry=reg)
    r = Counter("funnel_cost_requests", "", ["route", "variant"], registry=reg)
    p = Counter("funnel_cost_process_cpu_seconds", "", ["component"], registry=reg)
    g = Gauge("funnel_cost_process_memory_bytes", "", ["component"], registry=reg)
    c.labels("ranker", "v1", "primary", "feed").inc(core)
    r.labels("feed", "primary").inc(req)
    p.labels("ingress").inc(cpu)
    g.labels("ingress").set(mem)
    return generate_latest(reg).decode()


def test_two_scrapes_give_the_increase_and_a_reset_counts_from_zero() -> None:
    inp = inputs_from_scrapes(_exposition(1.0, 10, 5.0, 100.0),
                              _exposition(3.5, 60, 9.0, 300.0), window_s=30)
    assert inp.attributed == {("ranker", "v1", "primary", "feed"): pytest.approx(2.5)}
    assert inp.requests == {("feed", "primary"): pytest.approx(50)}
    assert inp.process_cpu == {"ingress": pytest.approx(4.0)}
    assert inp.memory_bytes == {"ingress": pytest.approx(200.0)}
    reset = inputs_from_scrapes(_exposition(9.0, 10, 5.0, 1.0),
                                _exposition(2.0, 60, 9.0, 1.0), window_s=30)
    assert reset.attributed[("ranker", "v1", "primary", "feed")] == pytest.approx(2.0)


def test_prometheus_queries_are_summed_by_their_labels() -> None:
    asked: list[str] = []

    def query(q: str) -> list[dict[str, object]]:
        asked.append(q)
        if "capacity" in q:
            return [{"metric": {}, "value": [0, "2"]}]
        if "gpu_seconds" in q:
            return [{"metric": {"stage": "ranker", "model": "v1", "variant": "primary",
                                "route": "feed"}, "value": [0, "0.5"]}]
        if "core_seconds" in q:
            return [{"metric": {"stage": "ranker", "model": "v1", "variant": "primary",
                                "route": "feed"}, "value": [0, "2.5"]}]
        if "requests" in q:
            return [{"metric": {"route": "feed", "variant": "primary"}, "value": [0, "50"]}]
        if "process_cpu" in q:
            return [{"metric": {"component": "ray"}, "value": [0, "4"]}]
        return [{"metric": {"component": "ray"}, "value": [0, "1e9"]}]

    inp = inputs_from_prometheus(query, 900)
    assert all("[900s]" in q for q in asked) and len(asked) == 6
    assert inp.capacity_cores == 2.0
    assert inp.attributed == {("ranker", "v1", "primary", "feed"): 2.5}
    assert inp.gpu_attributed == {("ranker", "v1", "primary", "feed"): 0.5}
    assert inp.process_cpu == {"ray": 4.0} and inp.memory_bytes == {"ray": 1e9}
