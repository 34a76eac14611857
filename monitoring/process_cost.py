"""The total that a request's attributed CPU and the overhead add up to: the CPU and memory of
the stack's processes on this node, by component (docs/cost.md).

The stack is the process that started Ray (`funnel serve`; in a Kubernetes pod, the
container's `ray start`) and everything below it: Ray's GCS, raylet, dashboard and workers,
the Serve proxy or HAProxy, every Funnel replica, and Triton when `funnel serve` runs it.
`ProcessCost` finds that root from its own process (the raylet's parent), samples every
`every_s` seconds, and adds each process's CPU since the last sample to
`funnel_cost_process_cpu_seconds_total{component}`, and its resident memory to
`funnel_cost_process_memory_bytes{component}`. A process that started since the last sample
counts whole; one that exited loses its last interval (at most `every_s` of its CPU).

One runs per cluster, in the rollout controller's process. On Kubernetes it sees its own
pod only: a Triton pod or another node's workers are not in its total (cAdvisor's
`container_cpu_usage_seconds_total` of the release's pods has them; docs/cost.md).

The capacity the stack may use, `funnel_cost_capacity_cores`, is the container's CPU limit
(cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), else the CPUs this
process may run on: capacity minus the processes' CPU is idle, in OpenCost's terms.

`component_of` (pure) names a process by Ray's title for its workers
(`ray::ServeReplica:funnel:FeedIngress`) or its program.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from monitoring import metrics

log = logging.getLogger("funnel.cost")

_DEPLOYMENTS = {"FeedIngress": "ingress", "ModerationModels": "moderation",
                "ShadowScorer": "scorer", "RolloutController": "controller"}
_RAY_PROGRAMS = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py",
                 "runtime_env", "dashboard_agent", "agent", "ray_client_server")


def component_of(cmdline: list[str], *, is_root: bool = False) -> str:
    """Which part of the stack a process is, from its command line (pure)."""
    if is_root:
        return "launcher"
    first = cmdline[0] if cmdline else ""
    if first.startswith("ray::"):
        title = first.split()[0]
        for name, component in _DEPLOYMENTS.items():
            if name in title:
                return component
        if "ProxyActor" in title or "HTTPProxyActor" in title:
            return "proxy"
        return "ray"  # Serve's controller, idle workers
    line = " ".join(cmdline)
    prog = os.path.basename(first)
    if "tritonserver" in prog or "triton_python_backend_stub" in line:
        return "triton"
    if prog == "haproxy":
        return "proxy"
    if any(p in line for p in _RAY_PROGRAMS) or "/ray/" in line:
        return "ray"
    return "other"


def cpu_limit(quota: str | None, period: str | None) -> float | None:
    """Cores from a cgroup quota and period (v2 `cpu.max` holds both: "max 100000" is no
    limit); None without a limit (pure)."""
    if quota is None:
        return None
    parts = quota.split()
    if len(parts) == 2 and period is None:
        quota, period = parts
    if quota.strip() in ("max", "-1") or not period:
        return None
    q, p = float(quota), float(period)
    return q / p if q > 0 and p > 0 else None


def capacity_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """The cores this container may use: its CPU limit, else the CPUs it may run on."""
    def read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    limit = cpu_limit(read(cgroup / "cpu.max"), None) or cpu_limit(
        read(cgroup / "cpu" / "cpu.cfs_quota_us"), read(cgroup / "cpu" / "cpu.cfs_period_us"))
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cpus = float(os.cpu_count() or 1)
    return min(limit, cpus) if limit else cpus


def stack_root(pid: int | None = None) -> int:
    """The process that started this node's Ray: the raylet's parent, found by walking up
    from `pid` (this process by default). Without a raylet above (a test), `pid` itself."""
    p = psutil.Process(pid or os.getpid())
    chain = [p, *p.parents()]
    for i, proc in enumerate(chain):
        with contextlib.suppress(psutil.Error):
            if proc.name() == "raylet" or any("raylet" in a for a in proc.cmdline()[:1]):
                return chain[i + 1].pid if i + 1 < len(chain) else proc.pid
    return p.pid


class ProcessCost:
    """Samples `root` and its descendants (see the module's docstring)."""

    def __init__(self, root: int, *, every_s: float = 5.0,
                 on_sample: Callable[[dict[str, float], dict[str, float]], None] | None = None
                 ) -> None:
        self.root = root
        self.every_s = every_s
        self._last: dict[int, float] = {}
        self._on_sample = on_sample or _export
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the baseline: CPU from here on counts
        self._last = {pid: used for pid, _, used, _ in self._read()}

    def _read(self) -> list[tuple[int, str, float, float]]:
        """(pid, component, CPU seconds so far, resident bytes) of each stack process."""
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    out.append((p.pid, component_of(p.cmdline(), is_root=p.pid == self.root),
                                t.user + t.system, float(p.memory_info().rss)))
            except psutil.Error:
                continue  # exited while we looked
        return out

    def sample(self) -> tuple[dict[str, float], dict[str, float]]:
        """(CPU seconds since the last sample, resident bytes now), by component."""
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        now: dict[int, float] = {}
        for pid, comp, used, mem in self._read():
            now[pid] = used
            cpu[comp] = cpu.get(comp, 0.0) + max(0.0, used - self._last.get(pid, 0.0))
            rss[comp] = rss.get(comp, 0.0) + mem
        self._last = now
        return cpu, rss

    def start(self) -> ProcessCost:
        self._thread = threading.Thread(target=self._run, name="funnel-process-cost",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._on_sample(*self.sample())
            except Exception:  # never take the controller down for a metric
                log.warning("cost: sampling the stack's processes failed", exc_info=True)


_COLLECTOR: dict[str, ProcessCost] = {}
_COLLECTOR_LOCK = threading.Lock()


def start_collector(every_s: float) -> ProcessCost:
    """This process's one collector of the stack's processes, started on first call (a
    controller made again in the same process, as tests do, reuses it)."""
    with _COLLECTOR_LOCK:
        running = _COLLECTOR.get("it")
        if running is None:
            running = _COLLECTOR["it"] = ProcessCost(stack_root(), every_s=every_s).start()
        return running


def _export(cpu: dict[str, float], rss: dict[str, float]) -> None:
    metrics.COST_CAPACITY_CORES.set(capacity_cores())
    for comp, sec in cpu.items():
        metrics.COST_PROCESS_CPU.labels(comp).inc(sec)
    for comp in metrics.COST_COMPONENTS:
        metrics.COST_PROCESS_MEMORY.labels(comp).set(rss.get(comp, 0.0))
