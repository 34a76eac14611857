"""Where `funnel cost report` and the rollout controller read cost inputs: Prometheus'
query API, two scrapes of the app's /metrics, and OpenCost's node prices (docs/cost.md).
Thin I/O around the pure `monitoring.cost`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from monitoring.cost import CostInputs, Prices, prices_from_opencost

CORE = "funnel_cost_core_seconds"
GPU = "funnel_cost_gpu_seconds"
REQUESTS = "funnel_cost_requests"
PROCESS_CPU = "funnel_cost_process_cpu_seconds"
MEMORY = "funnel_cost_process_memory_bytes"
CAPACITY = "funnel_cost_capacity_cores"


class SourceUnavailable(RuntimeError):
    """Prometheus, the app or OpenCost did not answer (exit 1)."""


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The cost samples of one /metrics scrape: name -> sorted labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name.removesuffix("_total")
            if name in (CORE, GPU, REQUESTS, PROCESS_CPU, MEMORY, CAPACITY) \
                    and not s.name.endswith(
                    "_created"):
                out.setdefault(name, {})[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def inputs_from_scrapes(before: str, after: str, window_s: float) -> CostInputs:
    """The counters' increase between two scrapes (a counter that went down, a restarted
    process's, counts from zero); memory: the mean of the two."""
    a, b = parse_metrics(before), parse_metrics(after)

    def delta(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        out = {}
        for labels, v in b.get(name, {}).items():
            prev = a.get(name, {}).get(labels, 0.0)
            out[labels] = v - prev if v >= prev else v
        return out

    def keyed(samples: dict[tuple[tuple[str, str], ...], float], keys: tuple[str, ...]
              ) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for labels, v in samples.items():
            d = dict(labels)
            k = tuple(d.get(x, "") for x in keys)
            out[k] = out.get(k, 0.0) + v
        return out

    mem_a, mem_b = keyed(a.get(MEMORY, {}), ("component",)), keyed(b.get(MEMORY, {}),
                                                                  ("component",))
    caps = [v for m in (a, b) for v in m.get(CAPACITY, {}).values() if v > 0]
    return CostInputs(
        window_s=window_s,
        attributed=keyed(delta(CORE), ("stage", "model", "variant", "route")),  # type: ignore[arg-type]
        gpu_attributed=keyed(delta(GPU), ("stage", "model", "variant", "route")),  # type: ignore[arg-type]
        requests=keyed(delta(REQUESTS), ("route", "variant")),  # type: ignore[arg-type]
        process_cpu={k[0]: v for k, v in keyed(delta(PROCESS_CPU), ("component",)).items()},
        memory_bytes={k[0]: (mem_a.get(k, v) + v) / 2 for k, v in mem_b.items()},
        capacity_cores=sum(caps) / len(caps) if caps else None)


def inputs_from_prometheus(query: Callable[[str], list[dict[str, Any]]], window_s: float
                           ) -> CostInputs:
    """The counters' increase over the last `window_s` from Prometheus (`query`: PromQL
    -> the result vector of /api/v1/query)."""
    w = f"{int(window_s)}s"

    def vec(q: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for r in query(q):
            k = tuple(r["metric"].get(x, "") for x in keys)
            out[k] = out.get(k, 0.0) + float(r["value"][1])
        return out

    core = vec(f"sum by (stage, model, variant, route) (increase({CORE}_total[{w}]))",
               ("stage", "model", "variant", "route"))
    gpu = vec(f"sum by (stage, model, variant, route) (increase({GPU}_total[{w}]))",
              ("stage", "model", "variant", "route"))
    req = vec(f"sum by (route, variant) (increase({REQUESTS}_total[{w}]))", ("route", "variant"))
    cpu = vec(f"sum by (component) (increase({PROCESS_CPU}_total[{w}]))", ("component",))
    mem = vec(f"sum by (component) (avg_over_time({MEMORY}[{w}]))", ("component",))
    cap = vec(f"max(avg_over_time({CAPACITY}[{w}]))", ())
    return CostInputs(window_s=window_s, attributed=core,  # type: ignore[arg-type]
                      requests=req,  # type: ignore[arg-type]
                      process_cpu={k[0]: v for k, v in cpu.items()},
                      memory_bytes={k[0]: v for k, v in mem.items()},
                      gpu_attributed=gpu,  # type: ignore[arg-type]
                      capacity_cores=cap.get((), None) or None)


def prometheus_query(base: str, timeout_s: float = 10.0) -> Callable[[str], list[dict[str, Any]]]:
    def query(q: str) -> list[dict[str, Any]]:
        try:
            r = httpx.get(base.rstrip("/") + "/api/v1/query", params={"query": q},
                          timeout=timeout_s)
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise SourceUnavailable(f"Prometheus at {base}: {e}") from e
        if r.status_code != 200 or body.get("status") != "success":
            raise SourceUnavailable(f"Prometheus at {base} refused {q!r}: "
                                    f"{body.get('error', r.status_code)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
    return query


def scrape(url: str, timeout_s: float = 10.0) -> str:
    try:
        r = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise SourceUnavailable(f"{url}: {e}") from e
    if r.status_code != 200:
        raise SourceUnavailable(f"{url} answered {r.status_code}")
    return r.text


def opencost_prices(url: str, fallback: Prices) -> Prices:
    """Prices from an OpenCost /metrics endpoint (its node_*_hourly_cost gauges)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = scrape(url)
    samples: Iterable[tuple[str, float]] = (
        (s.name, float(s.value)) for fam in text_string_to_metric_families(text)
        for s in fam.samples)
    return prices_from_opencost(samples, fallback=fallback, source=url)
