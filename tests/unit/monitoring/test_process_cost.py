"""The stack's processes by component, and their CPU measured from a real child process."""

from __future__ import annotations

import os
import subprocess
import sys

from monitoring.process_cost import ProcessCost, component_of, stack_root


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


def test_a_child_that_burns_cpu_is_counted_once() -> None:
    meter = ProcessCost(os.getpid(), every_s=60)
    child = subprocess.run([sys.executable, "-c",
                            "import time\nend = time.process_time() + 0.4\n"
                            "while time.process_time() < end: pass\n"
                            "import sys; sys.stdout.write('x')"], capture_output=True)
    assert child.stdout == b"x"
    cpu, rss = meter.sample()
    # the child exited before the sample: it is gone, so only this process's time counts
    assert set(cpu) <= {"launcher"} and rss["launcher"] > 10 * 2**20
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.process_time() + 0.4\n"
                             "while time.process_time() < end: pass\n"
                             "time.sleep(30)"])
    try:
        import time

        deadline = time.monotonic() + 20
        got = 0.0
        while time.monotonic() < deadline and got < 0.38:
            time.sleep(0.2)
            cpu, _ = meter.sample()
            got += cpu.get("other", 0.0)
        assert 0.38 <= got < 0.6  # the child's 0.4 s, counted once over the samples
    finally:
        proc.kill()
        proc.wait()


def test_without_a_raylet_above_the_root_is_the_process_itself() -> None:
    assert stack_root() == os.getpid()
