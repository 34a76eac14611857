"""The stack's processes by component, and their CPU measured from a real child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from monitoring.process_cost import (
    ProcessCost,
    capacity_cores,
    component_of,
    cpu_limit,
    stack_root,
)


def test_components_by_ray_title_or_program() -> None:
    assert component_of(["ray::ServeReplica:funnel:FeedIngress"]) == "ingress"
    assert component_of(["ray::ServeReplica:funnel:ModerationModels.handle_request"]) \
        == "moderation"
    assert component_of(["ray::ServeReplica:funnel:ShadowScorer"]) == "scorer"
    assert component_of(["ray::ServeReplica:funnel:RolloutController"]) == "controller"
    assert component_of(["ray::ProxyActor"]) == "proxy"
    assert component_of(["ray::ServeController"]) == "ray"
    assert component_of(["ray::IDLE"]) == "ray"
    assert component_of(["/usr/sbin/haproxy", "-f", "x.cfg"]) == "proxy"
    assert component_of(["/opt/tritonserver/bin/tritonserver", "--model-repository=x"]) \
        == "triton"
    assert component_of(["/x/triton_python_backend_stub", "model.py"]) == "triton"
    assert component_of(["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet",
                         "--node"]) == "ray"
    assert component_of(["/venv/bin/python", "-u", "/venv/site-packages/ray/dashboard/"
                         "dashboard.py"]) == "ray"
    assert component_of(["/venv/bin/python", "-m", "funnel", "serve"], is_root=True) \
        == "launcher"
    assert component_of(["sleep", "1"]) == "other" and component_of([]) == "other"


BURN = ("import time\nend = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\ntime.sleep(60)")


def test_a_descendant_that_burns_cpu_is_counted_once_under_its_root() -> None:
    # a root of its own (as `funnel serve` is), whose child burns 0.4 s of CPU then sleeps
    root = subprocess.Popen([sys.executable, "-c",
                             "import subprocess, sys, time\n"
                             f"subprocess.Popen([sys.executable, '-c', {BURN!r}])\n"
                             "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(root.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        meter = ProcessCost(root.pid, every_s=60)
        got: dict[str, float] = {}
        rss: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and got.get("other", 0.0) < 0.35:
            time.sleep(0.2)
            cpu, rss = meter.sample()
            for k, v in cpu.items():
                got[k] = got.get(k, 0.0) + v
        # the child's 0.4 s, counted once over the samples (some of it may have run before
        # the meter's baseline); the sleeping root next to nothing
        assert 0.2 <= got.get("other", 0.0) < 0.6, got
        assert got.get("launcher", 0.0) < 0.1, got
        assert rss["launcher"] > 1 << 20 and rss["other"] > 1 << 20
    finally:
        for p in psutil.Process(root.pid).children(recursive=True):
            p.kill()
        root.kill()
        root.wait()


def test_without_a_raylet_above_the_root_is_the_process_itself() -> None:
    assert stack_root() == os.getpid()


def test_the_capacity_is_the_containers_cpu_limit_else_its_cpus(tmp_path: Path) -> None:
    assert cpu_limit("max 100000", None) is None
    assert cpu_limit("150000 100000", None) == 1.5  # cgroup v2 cpu.max
    assert cpu_limit("-1", "100000") is None and cpu_limit("50000", "100000") == 0.5
    assert cpu_limit(None, None) is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert capacity_cores(v2) == 0.5
    assert capacity_cores(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_one_collector_per_process_exports_the_total_by_component() -> None:
    from monitoring import metrics
    from monitoring.process_cost import _export, start_collector

    assert start_collector(60) is start_collector(60)
    before = metrics.COST_PROCESS_CPU.labels("triton")._value.get()
    _export({"triton": 1.5}, {"triton": 2e9})
    assert metrics.COST_PROCESS_CPU.labels("triton")._value.get() == before + 1.5
    assert metrics.COST_PROCESS_MEMORY.labels("triton")._value.get() == 2e9
    assert metrics.COST_CAPACITY_CORES._value.get() >= 1
