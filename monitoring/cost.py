"""Dollars per thousand requests, by stage, model and variant, from the cost counters
(pure: no I/O; `monitoring/cost_cli.py` reads Prometheus or the app's /metrics; docs/cost.md).

The model is OpenCost's: workload + idle + overhead = total.

- *attributed* (workload): the core-seconds each request used, by stage, model, variant and
  route (`funnel_cost_core_seconds_total`, written by serve/cost.py);
- *overhead* (idle and the platform): the stack's processes' CPU
  (`funnel_cost_process_cpu_seconds_total`, monitoring/process_cost.py) minus the
  attributed part: the web framework between a request's sections, Ray's processes, Triton
  beyond its compute time, idle loops;
- *memory*: the stack's resident memory times the window, at the memory price;
- *idle*: the cores the stack may use (`funnel_cost_capacity_cores`) times the window,
  minus its processes' CPU.

"All-in" dollars per thousand requests share the overhead and memory among routes in
proportion to their attributed CPU, as OpenCost shares idle cost by allocation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# OpenCost's default prices (its configs/default.json: GCP us-central1, on demand)
DEFAULT_CPU_CORE_HOUR_USD = 0.031611
DEFAULT_MEMORY_GIB_HOUR_USD = 0.004237
DEFAULT_GPU_HOUR_USD = 0.95
OPENCOST_METRICS = {"node_cpu_hourly_cost": "cpu_core_hour_usd",
                    "node_ram_hourly_cost": "memory_gib_hour_usd",
                    "node_gpu_hourly_cost": "gpu_hour_usd"}
GIB = float(1 << 30)


@dataclass(frozen=True)
class Prices:
    cpu_core_hour_usd: float = DEFAULT_CPU_CORE_HOUR_USD
    memory_gib_hour_usd: float = DEFAULT_MEMORY_GIB_HOUR_USD
    gpu_hour_usd: float = DEFAULT_GPU_HOUR_USD
    source: str = "OpenCost's default prices (GCP us-central1, on demand)"

    def cpu_usd(self, core_s: float) -> float:
        return core_s / 3600.0 * self.cpu_core_hour_usd

    def gpu_usd(self, gpu_s: float) -> float:
        return gpu_s / 3600.0 * self.gpu_hour_usd


def usd_per_1k(core_s_per_request: float | None, prices: Prices) -> float | None:
    """Dollars of CPU for a thousand requests of `core_s_per_request` each."""
    if core_s_per_request is None:
        return None
    return prices.cpu_usd(core_s_per_request * 1000.0)


def prices_from_opencost(samples: Iterable[tuple[str, float]], *, fallback: Prices,
                         source: str) -> Prices:
    """Prices from OpenCost's exported node prices (`(metric name, value)` samples of its
    /metrics): each price is the mean over nodes; one OpenCost does not export keeps
    `fallback`'s. Raises ValueError when it exports none of them."""
    found: dict[str, list[float]] = {}
    for name, value in samples:
        field_ = OPENCOST_METRICS.get(name)
        if field_ is not None and math.isfinite(value) and value >= 0:
            found.setdefault(field_, []).append(value)
    if not found:
        raise ValueError(f"{source}: none of {', '.join(OPENCOST_METRICS)} in its metrics")
    values = {k: sum(v) / len(v) for k, v in found.items()}
    return Prices(cpu_core_hour_usd=values.get("cpu_core_hour_usd",
                                               fallback.cpu_core_hour_usd),
                  memory_gib_hour_usd=values.get("memory_gib_hour_usd",
                                                 fallback.memory_gib_hour_usd),
                  gpu_hour_usd=values.get("gpu_hour_usd", fallback.gpu_hour_usd),
                  source=f"OpenCost at {source}")


@dataclass(frozen=True)
class CostInputs:
    """The counters' increase over one window."""

    window_s: float
    attributed: Mapping[tuple[str, str, str, str], float]  # (stage, model, variant, route)
    requests: Mapping[tuple[str, str], float]  # (route, variant) -> requests
    process_cpu: Mapping[str, float]  # component -> CPU seconds
    memory_bytes: Mapping[str, float] = field(default_factory=dict)  # component -> mean RSS
    gpu_attributed: Mapping[tuple[str, str, str, str], float] = field(default_factory=dict)
    capacity_cores: float | None = None  # mean over the window; None: unknown


@dataclass(frozen=True)
class CostRow:
    route: str
    stage: str
    model: str
    variant: str
    core_s: float
    usd_per_1k: float | None  # per thousand requests of the route (and variant, if any)
    gpu_s: float = 0.0  # GPU-seconds (a ranker on a GPU instance), in usd_per_1k too


@dataclass(frozen=True)
class VariantCost:
    route: str
    variant: str
    requests: float
    core_ms_per_request: float | None
    usd_per_1k: float | None


@dataclass(frozen=True)
class CostReport:
    prices: Prices
    window_s: float
    rows: list[CostRow]
    variants: list[VariantCost]
    routes: dict[str, dict[str, float | None]]
    total_core_s: float
    attributed_core_s: float
    overhead_core_s: float
    memory_gib_hours: float
    by_component: dict[str, float]
    idle_core_s: float | None = None  # capacity not used: OpenCost's idle

    @property
    def attributed_share(self) -> float | None:
        return self.attributed_core_s / self.total_core_s if self.total_core_s > 0 else None

    @property
    def overhead_share(self) -> float | None:
        return self.overhead_core_s / self.total_core_s if self.total_core_s > 0 else None


def build_report(inp: CostInputs, prices: Prices) -> CostReport:
    route_requests: dict[str, float] = {}
    for (route, _), n in inp.requests.items():
        route_requests[route] = route_requests.get(route, 0.0) + n
    variant_requests = dict(inp.requests)

    def per_1k(core_s: float, requests: float, gpu_s: float = 0.0) -> float | None:
        usd = prices.cpu_usd(core_s) + prices.gpu_usd(gpu_s)
        return usd * 1000.0 / requests if requests > 0 else None

    rows = []
    for key in sorted(set(inp.attributed) | set(inp.gpu_attributed)):
        stage, model, variant, route = key
        sec, gpu = max(inp.attributed.get(key, 0.0), 0.0), max(inp.gpu_attributed.get(key, 0.0),
                                                                0.0)
        if sec <= 0 and gpu <= 0:
            continue
        # a model's variant is known where the request's was (the ingress); the moderation
        # process charges its batches with no variant: per request of the whole route
        n = (variant_requests.get((route, variant), 0.0) if variant
             else route_requests.get(route, 0.0))
        rows.append(CostRow(route, stage, model, variant, sec, per_1k(sec, n, gpu), gpu))

    attributed = sum(v for v in inp.attributed.values() if v > 0)
    total = sum(inp.process_cpu.values())
    overhead = max(0.0, total - attributed)
    mem_gib_h = sum(inp.memory_bytes.values()) / GIB * inp.window_s / 3600.0
    mem_usd = mem_gib_h * prices.memory_gib_hour_usd

    by_route: dict[str, float] = {}
    for (_, _, _, route), sec in inp.attributed.items():
        by_route[route] = by_route.get(route, 0.0) + max(sec, 0.0)
    gpu_by_route: dict[str, float] = {}
    for (_, _, _, route), sec in inp.gpu_attributed.items():
        gpu_by_route[route] = gpu_by_route.get(route, 0.0) + max(sec, 0.0)
    routes: dict[str, dict[str, float | None]] = {}
    for route in sorted(set(route_requests) | set(by_route)):
        sec, n = by_route.get(route, 0.0), route_requests.get(route, 0.0)
        share = sec / attributed if attributed > 0 else 0.0
        gpu = gpu_by_route.get(route, 0.0)
        all_in = (prices.cpu_usd(sec + overhead * share) + mem_usd * share
                  + prices.gpu_usd(gpu))
        routes[route] = {"requests": n, "core_s": sec, "gpu_s": gpu,
                         "core_ms_per_request": sec * 1000 / n if n > 0 else None,
                         "usd_per_1k": per_1k(sec, n, gpu),
                         "all_in_usd_per_1k": all_in * 1000.0 / n if n > 0 else None}

    variants = []
    for (route, variant), n in sorted(inp.requests.items()):
        if n <= 0:
            continue
        sec = sum(v for (_, _, var, r), v in inp.attributed.items()
                  if r == route and var == variant and v > 0)
        gpu = sum(v for (_, _, var, r), v in inp.gpu_attributed.items()
                  if r == route and var == variant and v > 0)
        variants.append(VariantCost(route, variant, n, sec * 1000 / n, per_1k(sec, n, gpu)))
    return CostReport(prices=prices, window_s=inp.window_s, rows=rows, variants=variants,
                      routes=routes, total_core_s=total, attributed_core_s=attributed,
                      overhead_core_s=overhead, memory_gib_hours=mem_gib_h,
                      by_component=dict(inp.process_cpu),
                      idle_core_s=(max(0.0, inp.capacity_cores * inp.window_s - total)
                                   if inp.capacity_cores else None))


def format_report(r: CostReport) -> str:
    """The report as text tables (`funnel cost report`)."""
    def usd(x: float | None) -> str:
        return "-" if x is None else f"${x:.6f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f} %"

    lines = [f"window {r.window_s:.0f} s; prices: ${r.prices.cpu_core_hour_usd:g}/core-hour, "
             f"${r.prices.memory_gib_hour_usd:g}/GiB-hour, ${r.prices.gpu_hour_usd:g}/GPU-hour"
             f" ({r.prices.source})", ""]
    lines.append(f"{'route':<10}{'requests':>10}{'core ms/req':>13}{'$/1k CPU':>12}"
                 f"{'$/1k all-in':>13}")
    for route, rt in r.routes.items():
        if not rt["requests"] and not rt["core_s"]:
            continue  # a route with no traffic in the window
        cm = rt["core_ms_per_request"]
        lines.append(f"{route:<10}{rt['requests'] or 0:>10.0f}"
                     f"{'-' if cm is None else f'{cm:.2f}':>13}{usd(rt['usd_per_1k']):>12}"
                     f"{usd(rt['all_in_usd_per_1k']):>13}")
    gpu = any(row.gpu_s > 0 for row in r.rows)
    lines += ["", f"{'route':<10}{'stage':<18}{'model':<24}{'variant':<12}{'core-s':>10}"
                  f"{'share':>9}" + (f"{'GPU-s':>9}" if gpu else "") + f"{'$/1k':>11}"]
    for row in sorted(r.rows, key=lambda x: (x.route, -x.core_s)):
        share = row.core_s / r.attributed_core_s if r.attributed_core_s else None
        lines.append(f"{row.route:<10}{row.stage:<18}{(row.model or '-')[:23]:<24}"
                     f"{(row.variant or '-'):<12}{row.core_s:>10.2f}{pct(share):>9}"
                     + (f"{row.gpu_s:>9.2f}" if gpu else "") + f"{usd(row.usd_per_1k):>11}")
    if any(v.variant != "primary" for v in r.variants):
        lines += ["", f"{'route':<10}{'variant':<14}{'requests':>10}{'core ms/req':>13}"
                      f"{'$/1k':>11}"]
        for v in r.variants:
            cm = v.core_ms_per_request
            lines.append(f"{v.route:<10}{v.variant:<14}{v.requests:>10.0f}"
                         f"{'-' if cm is None else f'{cm:.2f}':>13}{usd(v.usd_per_1k):>11}")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in
                      sorted(r.by_component.items(), key=lambda kv: -kv[1]) if v > 0)
    lines += ["", f"CPU of the stack's processes: {r.total_core_s:.1f} core-s "
                  f"({parts or 'none measured'})",
              f"attributed to requests: {r.attributed_core_s:.1f} core-s "
              f"({pct(r.attributed_share)}); overhead: {r.overhead_core_s:.1f} core-s "
              f"({pct(r.overhead_share)})",
              f"memory: {r.memory_gib_hours:.3f} GiB-hours "
              f"({usd(r.memory_gib_hours * r.prices.memory_gib_hour_usd)})"]
    if r.idle_core_s is not None:
        lines.append(f"idle capacity (not used by the stack): {r.idle_core_s:.1f} core-s "
                     f"({usd(r.prices.cpu_usd(r.idle_core_s))})")
    return "\n".join(lines)
