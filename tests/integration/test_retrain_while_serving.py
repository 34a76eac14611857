"""The README's review -> export -> retrain loop runs while `funnel serve` serves: training
shares the machine with the server's Ray (its own Ray, found by address, at a lower CPU
priority), the server keeps answering, and Ctrl-C stops training at once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from funnel.contracts.bundle import verify_bundle
from tests.integration.conftest import FUNNEL, Stack

pytestmark = pytest.mark.integration


def _poll_feed(url: str, stop: threading.Event, codes: list[int]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            try:
                codes.append(c.post(f"{url}/v1/feed", json={"user_id": 3, "limit": 5})
                             .status_code)
            except httpx.HTTPError:
                codes.append(0)
            stop.wait(1.0)


def test_training_completes_while_the_server_keeps_answering(stack: Stack,
                                                             tmp_path: Path) -> None:
    stop = threading.Event()
    codes: list[int] = []
    poller = threading.Thread(target=_poll_feed, args=(stack.url, stop, codes), daemon=True)
    poller.start()
    try:
        r = subprocess.run([*FUNNEL, "train", "--profile", "tiny", "--out",
                            str(tmp_path / "artifacts")],
                           capture_output=True, text=True, timeout=900, check=False)
    finally:
        stop.set()
        poller.join(60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "another Ray runs on this machine" in out, out[-3000:]
    assert "WorkerGroupStartupTimeout" not in out
    verify_bundle(tmp_path / "artifacts" / "latest")
    assert len(codes) >= 30, codes
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def test_ctrl_c_stops_training_at_once_and_its_ray_with_it(tmp_path: Path) -> None:
    # Ctrl-C in a terminal reaches a process whose SIGINT is handled. A test run started in
    # the background of a shell (`make test &`) ignores SIGINT, and a child inherits that:
    # give the child the terminal's default back, as a foreground command has it
    proc = subprocess.Popen([*FUNNEL, "train", "--profile", "tiny", "--out",
                             str(tmp_path / "artifacts")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            seen.append(line)
            if "retrieval: tuning" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
        time.sleep(5)  # trials are starting or running
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any(p.name() == "raylet" for p in tree), [p.name() for p in tree]
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen)[-2000:] + rest[-2000:]
    assert took < 20, f"Ctrl-C took {took:.1f}s"
    assert "training interrupted" in rest
    time.sleep(3)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert not (tmp_path / "artifacts" / "latest").exists()
