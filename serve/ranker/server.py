"""The ranker on Triton: the tritonserver that nvidia-pytriton ships, with Triton's dynamic
batcher in front of the bundle's TorchScript multi-task ranker.

`funnel triton` runs this in its own process; `funnel serve` starts that process and
restarts it if it dies, so Triton can be stopped and restarted (a fault test does exactly
that) while the Serve app keeps answering, in retrieval order, with `degraded: ["ranker"]`.

Two ways to host the model, `args.triton.runtime`:

- `python_backend` (default): a Triton model repository written at start (config.pbtxt +
  `serve/ranker/triton_model.py` as model.py) served by PyTriton's bundled tritonserver and its
  Python backend. The model runs in Triton's backend stub: one process hop per call.
- `pytriton`: the same model bound with PyTriton's Python API (`Triton.bind`); PyTriton
  relays each batch from the backend stub to this process over ZeroMQ, a second hop that
  costs ~4 ms a call on 2 cores. Kept for comparison (`funnel bench triton --runtime`).

The model runs on CUDA when available (`device: auto`). Requests are [n, ...] tensors in the
Open Inference Protocol; Triton's dynamic batcher merges concurrent requests up to
`max_batch_size`, waiting at most `max_queue_delay_us` for a preferred batch size.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from funnel.contracts.bundle import verify_bundle
from funnel.contracts.model_io import RANKER_KEYS, TASKS
from serve.config import TritonSettings
from serve.errors import TritonExited
from serve.ranker.repository import MODEL_NAME, write_model_repository
from serve.ranker.triton_model import run_batch, torch_forward

log = logging.getLogger("funnel.triton")


def _device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _ld_library_path(*dirs: str) -> str:
    """LD_LIBRARY_PATH with `dirs` first. The Triton Python-backend stub links the system
    libpython; with a venv interpreter whose libpython differs it crashes, so the running
    interpreter's LIBDIR goes first."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir, *dirs, *os.environ.get("LD_LIBRARY_PATH", "").split(":")]
    return ":".join(dict.fromkeys(p for p in parts if p))


def prepare_environment() -> None:
    """For PyTriton, which starts tritonserver with this process's environment."""
    os.environ["LD_LIBRARY_PATH"] = _ld_library_path()


def make_infer(model: torch.jit.ScriptModule, device: torch.device
               ) -> Callable[..., dict[str, np.ndarray]]:
    """PyTriton's batched infer function (PyTriton's @batch has already merged requests)."""
    forward = torch_forward(model, device)

    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": run_batch(forward, RANKER_KEYS, [inputs])[0]}

    return infer


def run_triton(bundle_path: str, settings: TritonSettings, *,
               on_ready: Callable[[], None] | None = None) -> None:
    """Start Triton with the bundle's ranker and block until it is stopped (SIGINT/SIGTERM)."""
    if settings.runtime == "pytriton":
        run_pytriton(bundle_path, settings, on_ready=on_ready)
    else:
        run_python_backend(bundle_path, settings, on_ready=on_ready)


def run_pytriton(bundle_path: str, settings: TritonSettings, *,
                 on_ready: Callable[[], None] | None = None) -> None:
    """The ranker bound through PyTriton's Python API (`runtime: pytriton`)."""
    prepare_environment()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    b = verify_bundle(bundle_path)
    meta = b.manifest["models"]["ranker"]
    device = _device(settings.device)
    if device.type == "cpu":
        from serve.loader import limit_threads

        limit_threads(settings.intra_op_threads)
    model = torch.jit.load(str(b.file(meta["path"])), map_location=device).eval()
    n_dense = len(meta["dense_features"])
    inputs = [Tensor(name="dense", dtype=np.float32, shape=(n_dense,)),
              *(Tensor(name=k, dtype=np.int64, shape=(1,)) for k in RANKER_KEYS[1:])]
    batcher: Any = (DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us,
                                   preferred_batch_size=settings.preferred_batch_sizes)
                    if settings.dynamic_batching else None)
    config = TritonConfig(http_address=settings.host, http_port=settings.http_port,
                          grpc_address=settings.host, grpc_port=settings.grpc_port,
                          metrics_port=settings.metrics_port, log_verbose=0,
                          exit_timeout_secs=5)
    # SIGTERM (what a supervisor or Kubernetes sends) takes the same path as Ctrl-C: PyTriton's
    # serve() catches KeyboardInterrupt and stops tritonserver, waiting for it to exit, so
    # this process ends only once Triton is gone. The default SIGTERM action would end it at
    # once and leave tritonserver to shut down on its own, after we have said "stopped".
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL_NAME, infer_func=batch(make_infer(model, device)),
                    inputs=inputs,
                    outputs=[Tensor(name="logits", dtype=np.float32, shape=(len(TASKS),))],
                    config=ModelConfig(max_batch_size=settings.max_batch_size,
                                       batcher=batcher),
                    strict=True)
        log.info("triton: ranker of bundle %s on %s, gRPC %s:%d, HTTP %s:%d, batching %s",
                 b.version, device, settings.host, settings.grpc_port, settings.host,
                 settings.http_port, "dynamic" if settings.dynamic_batching else "off")
        if on_ready:
            on_ready()
        triton.serve()


# ---- runtime: python_backend ------------------------------------------------------------

def _tritonserver_dist() -> tuple[Path, Path, Path]:
    """(tritonserver dist dir, its shared libraries, the backend stub for this Python)."""
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return (get_root_module_path() / "tritonserver", Path(get_libs_path()),
            Path(get_stub_path(version)))


def tritonserver_command(repo: Path, root: Path, settings: TritonSettings,
                         device: torch.device | None = None
                         ) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment; copies the Python backend (with the
    stub built for this interpreter's version) under `root`, as PyTriton does. On the CPU,
    Triton is told not to look for GPUs (pinned memory, GPU metrics through NVML/DCGM)."""
    dist, libs, stub = _tritonserver_dist()
    backends = root / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    # this interpreter's libpython for the stub; tritonserver's own libraries
    env["LD_LIBRARY_PATH"] = _ld_library_path(str(libs))
    # the stub's embedded Python finds this environment's packages through PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = [str(dist / "bin" / "tritonserver"),
           f"--model-repository={repo}", f"--backend-directory={backends}",
           f"--cache-directory={dist / 'caches'}",
           f"--http-address={settings.host}", f"--http-port={settings.http_port}",
           f"--grpc-address={settings.host}", f"--grpc-port={settings.grpc_port}",
           f"--metrics-address={settings.host}", f"--metrics-port={settings.metrics_port}",
           # explicit: the rollout controller loads other bundle versions' rankers at run
           # time (`ranker-<version>`) next to the primary `ranker`
           "--model-control-mode=explicit", f"--load-model={MODEL_NAME}",
           "--exit-timeout-secs=5", "--log-verbose=0", "--log-info=false",
           "--strict-readiness=true", "--allow-metrics=true"]
    if device is not None and device.type == "cpu":
        cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
    return cmd, env


# What tritonserver prints on a machine without a GPU although nothing is wrong: it was built
# with CUDA and says so once at start. Hidden when the ranker runs on the CPU.
CPU_ONLY_NOISE = ("CudaDriverHelper has not been initialized",
                  "CUDA driver version is insufficient",
                  "Failed to initialize NVML", "DCGM", "pinned memory pool",
                  "failed to allocate pinned system memory")


def is_cpu_only_noise(line: str) -> bool:
    return any(n in line for n in CPU_ONLY_NOISE)


def relay_stderr(stream: Any, *, drop: Callable[[str], bool]) -> threading.Thread:
    """Copy a child's stderr to ours line by line, leaving out what `drop` says."""

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            if not drop(line):
                sys.stderr.write(line)
                sys.stderr.flush()
        stream.close()

    t = threading.Thread(target=pump, name="triton-stderr", daemon=True)
    t.start()
    return t


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this child when its parent (thread) dies, so a killed parent leaves no
    child behind (a killed `funnel triton`, no tritonserver; a killed `funnel serve`, no
    `funnel triton`)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float,
                port: int | None = None) -> bool:
    """Ready when our own tritonserver answers: `url` says 200 and, where the OS tells, the
    process listening on `port` is `proc` (not another instance's Triton on that port)."""
    from serve.ports import listener_pids

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                owners = listener_pids(port) if port is not None else []
                if not owners or proc.pid in owners:
                    return proc.poll() is None
        time.sleep(0.2)
    return False


def become_subreaper() -> None:
    """Linux: orphans of our children (Triton's Python-backend stubs, when tritonserver
    dies) become our children, so that `reap_descendants` can stop them."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_descendants(grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process below this one, SIGKILL what is left after `grace_s` (a
    backend stub may ignore SIGTERM); returns the pids that had to be stopped."""
    import psutil

    kids = psutil.Process().children(recursive=True)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [k.pid for k in kids]


# What Triton's Python backend leaves when tritonserver dies without shutting down: its
# execution-environment directories and its shared-memory regions.
_LEFTOVER_GLOBS = (("/tmp", "python_env_*"), ("/dev/shm", "triton_python_backend_shm*"))


def leftovers() -> set[Path]:
    return {p for d, g in _LEFTOVER_GLOBS for p in Path(d).glob(g)}


def remove_leftovers(new: set[Path]) -> None:
    """Remove what appeared while our tritonserver ran and that no process still uses
    (an empty directory; a shared-memory file no process has mapped or open)."""
    import psutil

    in_use: set[str] = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            in_use.update(m.path for m in proc.memory_maps(grouped=True))
            in_use.update(f.path for f in proc.open_files())
    for p in new:
        with contextlib.suppress(OSError):
            if p.is_dir():
                p.rmdir()  # only when empty
            elif str(p) not in in_use:
                p.unlink()


def run_python_backend(bundle_path: str, settings: TritonSettings, *,
                       on_ready: Callable[[], None] | None = None,
                       ready_timeout_s: float = 180.0) -> None:
    """tritonserver as a child process with a model repository written for the bundle;
    SIGINT/SIGTERM stop it (Triton drains in-flight requests for up to 5 s) before this
    process returns. Raises TritonExited if Triton exits on its own."""
    b = verify_bundle(bundle_path)
    device = _device(settings.device)
    stop_requested = False

    def on_signal(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    proc: subprocess.Popen[bytes] | None = None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    become_subreaper()
    before = leftovers()
    with tempfile.TemporaryDirectory(prefix="funnel-triton-") as tmp:
        root = Path(tmp)
        repo = write_model_repository(b, settings, device, root)
        cmd, env = tritonserver_command(repo, root, settings, device)
        proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent,
                                stderr=subprocess.PIPE if device.type == "cpu" else None)
        if proc.stderr is not None:
            relay_stderr(proc.stderr, drop=is_cpu_only_noise)
        try:
            ready_url = (f"http://{settings.host}:{settings.http_port}/v2/models/"
                         f"{MODEL_NAME}/ready")
            if _wait_ready(ready_url, proc, ready_timeout_s, port=settings.http_port):
                log.info("triton: ranker of bundle %s on %s (python backend), gRPC %s:%d, "
                         "HTTP %s:%d, batching %s", b.version, device, settings.host,
                         settings.grpc_port, settings.host, settings.http_port,
                         "dynamic" if settings.dynamic_batching else "off")
                if on_ready:
                    on_ready()
            elif proc.poll() is None:
                log.warning("triton: model %r not ready after %.0f s; still waiting on "
                            "tritonserver (its log is above)", MODEL_NAME, ready_timeout_s)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            stray = reap_descendants()  # backend stubs tritonserver left behind
            if stray or proc.returncode != 0:
                if stray:
                    log.warning("triton: stopped %d process(es) tritonserver left behind",
                                len(stray))
                remove_leftovers(leftovers() - before)
    if not stop_requested:
        raise TritonExited(f"tritonserver exited with code {code}; its log is above")
