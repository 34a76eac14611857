"""What `funnel triton` does when tritonserver dies without shutting down: its orphaned
backend stubs (which may ignore SIGTERM) are stopped, and what it left on disk is removed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from serve.ranker.server import remove_leftovers

ORPHAN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    import psutil
    from serve.ranker.server import become_subreaper, reap_descendants
    become_subreaper()
    stub = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(120)")
    # a parent that starts a stub and dies at once: the stub is orphaned, as Triton's are
    mid = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', %r], "
        "stdout=subprocess.PIPE); p.stdout.readline(); print(p.pid, flush=True)" % stub],
        stdout=subprocess.PIPE, text=True)
    orphan = int(mid.stdout.readline())
    mid.wait()
    time.sleep(0.5)
    assert psutil.Process(orphan).ppid() == os.getpid(), "not reparented to the subreaper"
    stopped = reap_descendants(grace_s=1.0)
    assert orphan in stopped, stopped
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    print("ok")
""")


def test_orphaned_stubs_that_ignore_sigterm_are_stopped() -> None:
    r = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_leftovers_are_removed_only_when_empty_or_unused(tmp_path: Path) -> None:
    empty = tmp_path / "python_env_a"
    empty.mkdir()
    full = tmp_path / "python_env_b"
    full.mkdir()
    (full / "x").write_text("kept")
    shm = tmp_path / "triton_python_backend_shm_region_1"
    shm.write_bytes(b"\0" * 16)
    with (tmp_path / "triton_python_backend_shm_region_2").open("wb") as held:
        remove_leftovers({empty, full, shm, tmp_path / "triton_python_backend_shm_region_2"})
        assert (tmp_path / "triton_python_backend_shm_region_2").exists()  # still open
        held.write(b"x")
    assert not empty.exists() and full.exists() and not shm.exists()


def test_on_the_cpu_triton_is_told_not_to_look_for_gpus_and_its_gpu_noise_is_hidden(
        tmp_path: Path) -> None:
    import torch

    from serve.config import parse_app_args
    from serve.ranker.server import is_cpu_only_noise, tritonserver_command

    settings = parse_app_args({"bundle": "b"}).triton
    cmd, _ = tritonserver_command(tmp_path / "repo", tmp_path, settings, torch.device("cpu"))
    assert "--allow-gpu-metrics=false" in cmd and "--pinned-memory-pool-byte-size=0" in cmd
    assert is_cpu_only_noise('E1203 server.cc:241] "CudaDriverHelper has not been initialized."')
    assert is_cpu_only_noise("Error: Failed to initialize NVML")
    assert not is_cpu_only_noise('E1203 model.cc:1] "failed to load model ranker"')
