"""`funnel cost report`: from two scrapes of a real HTTP /metrics endpoint, bad options
named with exit 2, a source that does not answer with exit 1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from tests.cli_runner import run_funnel
from tests.integration.conftest import free_port

funnel = run_funnel


def exposition(scale: float) -> bytes:
    reg = CollectorRegistry()
    core = Counter("funnel_cost_core_seconds", "", ["stage", "model", "variant", "route"],
                   registry=reg)
    req = Counter("funnel_cost_requests", "", ["route", "variant"], registry=reg)
    cpu = Counter("funnel_cost_process_cpu_seconds", "", ["component"], registry=reg)
    core.labels("ingress", "", "primary", "feed").inc(4.0 * scale)
    core.labels("ranker", "v7", "primary", "feed").inc(1.0 * scale)
    req.labels("feed", "primary").inc(1000 * scale)
    cpu.labels("ingress").inc(8.0 * scale)
    return generate_latest(reg)


def test_two_scrapes_of_a_metrics_endpoint_give_the_report(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    served = {"n": 0}

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/opencost/metrics":  # OpenCost's node prices, two nodes
                body = (b"# TYPE node_cpu_hourly_cost gauge\n"
                        b'node_cpu_hourly_cost{node="a"} 3.0\n'
                        b'node_cpu_hourly_cost{node="b"} 4.2\n'
                        b'node_ram_hourly_cost{node="a"} 0.01\n')
            else:
                served["n"] += 1
                body = exposition(served["n"])  # the second scrape: twice the first
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, out = funnel(monkeypatch, capsys, "cost", "report", "--metrics-url",
                           f"http://127.0.0.1:{port}/metrics", "--for", "1",
                           "--cpu-price", "3.6", "--out", str(tmp_path / "r.json"))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, out
    assert served["n"] == 2
    r = json.loads((tmp_path / "r.json").read_text())
    # the increase: 5 core-s over 1,000 feeds at $0.001 per core-s = $0.005 per 1k
    assert r["routes"]["feed"]["usd_per_1k"] == pytest.approx(0.005)
    assert r["attributed_share"] == pytest.approx(5 / 8)
    assert "given on the command line" in r["prices"]["source"]
    assert "ranker" in out and "v7" in out and "overhead: 3.0 core-s (37.5 %)" in out
    # OpenCost's prices: the mean over its nodes; what it does not export stays the default
    port = free_port()
    served["n"] = 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, out = funnel(monkeypatch, capsys, "cost", "report", "--metrics-url",
                           f"http://127.0.0.1:{port}/metrics", "--for", "1", "--opencost",
                           f"http://127.0.0.1:{port}/opencost/metrics",
                           "--out", str(tmp_path / "o.json"))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, out
    p = json.loads((tmp_path / "o.json").read_text())["prices"]
    assert p["cpu_core_hour_usd"] == pytest.approx(3.6)
    assert p["memory_gib_hour_usd"] == pytest.approx(0.01) and p["gpu_hour_usd"] == 0.95
    assert "OpenCost at" in p["source"]


def test_bad_options_exit_2_naming_them_and_a_dead_source_exits_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = funnel(monkeypatch, capsys, "cost", "report")
    assert code == 2 and "--prometheus" in out
    code, out = funnel(monkeypatch, capsys, "cost", "report", "--prometheus", "http://x",
                       "--since", "soon")
    assert code == 2 and "--since" in out
    code, out = funnel(monkeypatch, capsys, "cost", "report", "--metrics-url",
                       "http://x", "--cpu-price", "-1")
    assert code == 2 and "--cpu-price" in out
    code, out = funnel(monkeypatch, capsys, "cost", "report", "--metrics-url",
                       "http://x", "--out", "/nonexistent-dir/r.json")
    assert code == 2 and "--out" in out
    code, out = funnel(monkeypatch, capsys, "cost", "report", "--prometheus",
                       f"http://127.0.0.1:{free_port()}", "--since", "1h")
    assert code == 1 and "Prometheus at" in out
