"""Triton dynamic batching on vs off: ranker throughput with concurrent callers.

Two Triton processes, one after the other, each hosting the bundle's ranker exactly as
`funnel triton` does, differing only in `dynamic_batching`. For each request size (rows =
candidates per request) `callers` asyncio gRPC clients send requests back to back for
`duration_s`; the result is requests/s and rows/s, and the on/off ratio.

    funnel bench triton [--bundle artifacts/latest] [--callers 16] [--rows 1 8 64 400]
                        [--runtime python_backend|pytriton] [--load-generator python|h2load]

Load generators: `python` is tritonclient's asyncio gRPC client in this process; `h2load`
(nghttp2's C load generator, Debian package nghttp2-client) sends the same ModelInfer call,
serialised once, as raw gRPC over HTTP/2 with `callers` connections. On a 2-core machine the
Python client takes most of a core at a few thousand calls/s, so the server's batching gain
is capped by the client; h2load is the stand-in for Triton's perf_analyzer (C++), which has
no build for every platform. Either way, Triton's own counters (`nv_inference_request_success`,
`nv_inference_exec_count`) are read before and after: the request rate is checked against
them and the mean batch size comes from them.

With batching on, each request size is also sent by one caller alone (`one_caller_latency`):
the cost of a call without queueing, which is what a feed request pays at low load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.h2load import H2LoadError, run_h2load
from funnel.contracts.bundle import verify_bundle
from funnel.contracts.model_io import RANKER_KEYS
from serve.config import load_serve_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve" / "configs" / "local.yaml"


_taken: set[int] = set()


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A loopback port that is free now and outside the kernel's ephemeral range.

    A port from bind(("", 0)) is released again before the server binds it, and the kernel
    may hand the same number to the next bind(0), which Ray makes many of while starting
    (measured: Serve's proxy failed to bind an HTTP port chosen that way). Ports below the
    ephemeral range (32768+ on Linux) and above Ray's worker ports (10002-19999) are never
    handed out that way; this process also never returns the same port twice.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{high}")


def _inputs(rows: int, n_dense: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {"dense": rng.normal(size=(rows, n_dense)).astype(np.float32)}
    for k in RANKER_KEYS[1:]:
        out[k] = np.ones((rows, 1), dtype=np.int64)  # index 1 exists in every vocabulary
    return out


class TritonProcess:
    """`python -m funnel triton` on free ports with one setting changed."""

    def __init__(self, bundle: str, *, dynamic_batching: bool, base_config: Path,
                 runtime: str | None = None) -> None:
        doc = yaml.safe_load(base_config.read_text())
        args = doc["applications"][0]["args"]
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        args["triton"].update(http_port=free_port(), grpc_port=self.grpc_port,
                              metrics_port=self.metrics_port, dynamic_batching=dynamic_batching)
        if runtime:
            args["triton"]["runtime"] = runtime
        self._dir = tempfile.TemporaryDirectory(prefix="funnel-bench-")
        self.config = Path(self._dir.name) / "serve.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self._cmd = [sys.executable, "-m", "funnel", "triton", "--bundle", bundle, "--config",
                     str(self.config)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TritonProcess:
        import tritonclient.grpc as grpcclient

        self.proc = subprocess.Popen(self._cmd, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"triton exited with {self.proc.returncode}")
            with contextlib.suppress(Exception):
                if client.is_model_ready("ranker"):
                    return self
            time.sleep(0.3)
        raise RuntimeError("triton did not become ready within 180 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._dir.cleanup()


def triton_counters(metrics_port: int, model: str = "ranker") -> dict[str, float]:
    """Triton's cumulative request and execution counters for `model` (Prometheus text)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = {"nv_inference_request_success": "success", "nv_inference_request_failure": "failure",
            "nv_inference_exec_count": "executions"}
    out = dict.fromkeys(want.values(), 0.0)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            # the parser names counter samples `<family>_total`; the family keeps Triton's name
            if fam.name in want and sample.labels.get("model") == model:
                out[want[fam.name]] += sample.value
    return out


def model_infer_frame(rows: int, n_dense: int, model: str = "ranker") -> bytes:
    """One gRPC ModelInfer message for the ranker, framed for the wire (1-byte compressed
    flag, 4-byte big-endian length, protobuf bytes)."""
    from tritonclient.grpc import service_pb2

    payload = _inputs(rows, n_dense, np.random.default_rng(0))
    req = service_pb2.ModelInferRequest(model_name=model)
    for k in RANKER_KEYS:
        arr = payload[k]
        req.inputs.add(name=k, datatype="FP32" if arr.dtype == np.float32 else "INT64",
                       shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
    msg = req.SerializeToString()
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def _drive_h2load(t: TritonProcess, rows: int, n_dense: int, *, callers: int,
                  duration_s: float) -> dict[str, float]:
    frame = model_infer_frame(rows, n_dense)
    before = triton_counters(t.metrics_port)
    res = run_h2load(f"http://127.0.0.1:{t.grpc_port}/inference.GRPCInferenceService/ModelInfer",
                     frame, connections=callers, duration_s=duration_s,
                     headers={"content-type": "application/grpc", "te": "trailers"})
    after = triton_counters(t.metrics_port)
    served = after["success"] - before["success"]
    failed = after["failure"] - before["failure"]
    # h2load counts HTTP 200s; a gRPC error is also an HTTP 200 (its status is in the
    # trailers), so Triton's own counters are the check that every call was a real inference.
    if failed or served < res["succeeded"]:
        raise H2LoadError(f"Triton counted {served:.0f} successes and {failed:.0f} failures "
                          f"for {res['succeeded']} calls h2load saw succeed")
    executions = after["executions"] - before["executions"]
    return {"requests_per_s": res["requests_per_s"],
            "rows_per_s": round(res["requests_per_s"] * rows, 1),
            "mean_ms": res["mean_ms"], "max_ms": res["max_ms"],
            "mean_batch_requests": round(served / executions, 2) if executions else 0.0}


async def _drive(url: str, rows: int, n_dense: int, *, callers: int,
                 duration_s: float) -> dict[str, float]:
    import tritonclient.grpc.aio as g

    rng = np.random.default_rng(0)
    payload = _inputs(rows, n_dense, rng)
    client = g.InferenceServerClient(url)

    def request() -> list[Any]:
        out = []
        for k in RANKER_KEYS:
            t = g.InferInput(k, list(payload[k].shape),
                             "FP32" if payload[k].dtype == np.float32 else "INT64")
            t.set_data_from_numpy(payload[k])
            out.append(t)
        return out

    for _ in range(5):  # warm-up
        await client.infer("ranker", request())
    done = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def caller() -> None:
        # Each caller serialises its request once and resends it (as perf_analyzer does with
        # its preloaded data): the client shares these 2 cores with Triton, and re-encoding
        # numpy arrays per call would measure the Python client more than the server.
        nonlocal done
        req = request()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await client.infer("ranker", req)
            latencies.append(time.perf_counter() - t0)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - started
    await client.close()
    lat = np.asarray(latencies) * 1000
    return {"requests_per_s": round(done / elapsed, 1),
            "rows_per_s": round(done * rows / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def run(*, bundle: str, rows: list[int], callers: int, duration_s: float,
        config: Path = DEFAULT_CONFIG, runtime: str | None = None,
        load_generator: str = "python",
        say: Callable[[str], None] = print) -> dict[str, Any]:
    _, args = load_serve_config(config)  # refuse a bad config before starting anything
    runtime = runtime or args.triton.runtime
    b = verify_bundle(bundle)
    n_dense = len(b.manifest["models"]["ranker"]["dense_features"])
    results: dict[str, dict[str, dict[str, float]]] = {}
    single: dict[str, dict[str, float]] = {}
    for batching in (True, False):
        name = "dynamic_batching_on" if batching else "dynamic_batching_off"
        with TritonProcess(str(b.path), dynamic_batching=batching, base_config=config,
                           runtime=runtime) as t:
            url = f"127.0.0.1:{t.grpc_port}"
            for r in rows:
                say(f"triton {name} ({runtime}): {callers} callers x {r} rows/request for "
                    f"{duration_s:.0f}s")
                if load_generator == "h2load":
                    res = _drive_h2load(t, r, n_dense, callers=callers, duration_s=duration_s)
                else:
                    res = asyncio.run(_drive(url, r, n_dense, callers=callers,
                                             duration_s=duration_s))
                results.setdefault(name, {})[str(r)] = res
                say(f"  {res}")
                if batching:  # one caller: the per-call cost of the hops, no queueing
                    one = asyncio.run(_drive(url, r, n_dense, callers=1,
                                             duration_s=min(duration_s, 5.0)))
                    single[str(r)] = one
                    say(f"  one caller: p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms")
    speedup = {str(r): round(results["dynamic_batching_on"][str(r)]["requests_per_s"]
                             / results["dynamic_batching_off"][str(r)]["requests_per_s"], 2)
               for r in rows}
    return {"runtime": runtime, "load_generator": load_generator, "callers": callers,
            "duration_s": duration_s,
            "rows_per_request": rows, "bundle": b.version, "results": results,
            "speedup_on_vs_off": speedup, "one_caller_latency": single}
