"""`funnel serve` with its own supervised Triton: it starts, serves, and on SIGTERM stops
everything it started (Ray, the Serve app, Triton), leaving no process behind."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import FUNNEL, write_serve_config

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("ingress", [
    "proxy",
    pytest.param("haproxy", marks=pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy not installed (apt-get install haproxy): --ingress haproxy untested")),
])
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
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        url = json.loads(ready.read_text())["url"]
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
        assert b"stopped" in (tmp_path / "serve.log").read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
