"""A local `funnel serve` for the benchmarks that need the whole stack (rollout, fuzz): the
bundle copied into a scratch bundle root, free ports for HTTP, gRPC and Triton, a SQLite
review queue, the admin token set; stopped (SIGTERM, then kill) and removed on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.triton_batching import DEFAULT_CONFIG, free_port
from funnel.contracts.bundle import resolve_bundle, verify_bundle

Say = Callable[[str], None]
TOKEN = "bench-admin-token"


@dataclass(frozen=True)
class LocalStack:
    url: str            # http://127.0.0.1:PORT
    grpc: str           # 127.0.0.1:PORT (funnel.v1 and the Open Inference Protocol)
    root: Path          # the bundle root (add versions beside the bundle here)
    version: str        # the served bundle's version
    manifest: dict[str, Any]
    args: dict[str, Any]  # the app's args as started
    work: Path
    token: str = TOKEN
    pid: int = 0        # `funnel serve` (Ray, the replicas and Triton are below it)


@contextlib.contextmanager
def local_stack(bundle: str, *, prefix: str, say: Say = print,
                prepare: Callable[[Path, str], None] | None = None,
                tweak: Callable[[dict[str, Any]], None] | None = None, grpc: bool = True,
                start_timeout_s: float = 300, ingress: str = "proxy",
                deployments: dict[str, dict[str, Any]] | None = None
                ) -> Iterator[LocalStack]:
    """Start one `funnel serve` of `bundle`. `prepare(root, version)` runs before it starts
    (e.g. to write more bundle versions); `tweak(args)` edits the app's args; `grpc=False`
    serves no gRPC methods (a faster start); `ingress` is `funnel serve --ingress`;
    `deployments` updates the config's deployment entries by name (e.g.
    {"FeedIngress": {"num_replicas": 2}})."""
    b = verify_bundle(bundle)
    work = Path(tempfile.mkdtemp(prefix=f"funnel-bench-{prefix}-"))
    proc = None
    log = None
    try:
        root = work / "artifacts"
        root.mkdir()
        shutil.copytree(resolve_bundle(bundle), root / b.version)
        if prepare is not None:
            prepare(root, b.version)
        doc = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
        port, gport = free_port(), free_port()
        doc["http_options"]["port"] = port
        doc.setdefault("grpc_options", {})["port"] = gport
        if not grpc:
            doc["grpc_options"]["grpc_servicer_functions"] = []
        args = doc["applications"][0]["args"]
        tport = free_port()
        args["triton"].update(http_port=free_port(), grpc_port=tport, metrics_port=free_port())
        args["feed"]["ranker"]["url"] = f"127.0.0.1:{tport}"
        args["review"]["database_url"] = f"sqlite:///{work / 'review.sqlite3'}"
        args["review"]["spool_path"] = str(work / "review-spool.sqlite3")
        if args.get("impressions"):
            args["impressions"]["url"] = str(work / "impressions")
        if tweak is not None:
            tweak(args)
        for d in doc["applications"][0].get("deployments") or []:
            d.update((deployments or {}).get(d.get("name"), {}))
        config = work / "serve.yaml"
        config.write_text(yaml.safe_dump(doc))
        ready = work / "ready.json"
        log = (work / "serve.log").open("wb")
        say(f"starting funnel serve (bundle {b.version})")
        proc = subprocess.Popen(
            [sys.executable, "-m", "funnel", "serve", "--bundle", str(root / b.version),
             "--config", str(config), "--ready-file", str(ready), "--ingress", ingress,
             *(["--grpc"] if (doc.get("grpc_options") or {}).get("grpc_servicer_functions")
               else [])],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "FUNNEL_ADMIN_TOKEN": TOKEN})
        deadline = time.monotonic() + start_timeout_s
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("funnel serve did not start; see " + str(work / "serve.log"))
            time.sleep(0.5)
        yield LocalStack(url=f"http://127.0.0.1:{port}", grpc=f"127.0.0.1:{gport}", root=root,
                         version=b.version, manifest=b.manifest, args=args, work=work,
                         pid=proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
        if log is not None:
            log.close()
        shutil.rmtree(work, ignore_errors=True)


def process_role(cmdline: list[str], name: str) -> str:
    """A process of the stack by what it does ("ray::ServeReplica:funnel:FeedIngress",
    "tritonserver", "funnel serve", a script's name), not by its pid."""
    cmd = " ".join(cmdline)
    args = cmd.split()
    scripts = [Path(a).name for a in args[1:] if a.endswith(".py")]
    if "ray::" in cmd:  # a Ray worker's title: "ray::<actor>[.<method it runs now>]"
        return args[0].split(".", 1)[0]
    if "tritonserver" in cmd:
        return "tritonserver"
    if "-m funnel serve" in cmd:
        return "funnel serve"
    return scripts[0] if scripts else Path(name).name


def stack_processes(pid: int, measure: Callable[[Any], Any]) -> list[tuple[Any, str, Any]]:
    """(process, role, measure(process)) for `pid` and every process below it that is still
    there to be measured."""
    import psutil

    out = []
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            out.append((p, process_role(p.cmdline(), p.name()), measure(p)))
        except psutil.Error:
            continue
    return out


def cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, user + system CPU seconds so far) of the stack's processes."""
    return {p.pid: (role, t.user + t.system)
            for p, role, t in stack_processes(pid, lambda p: p.cpu_times())}


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
                ) -> dict[str, float]:
    """CPU seconds each role used between two `cpu_seconds` snapshots, matched by pid (a
    Ray worker's title names the method it runs, so its role may change in between: its
    time goes to the role it has at the end); a process new since `before` counts whole."""
    out: dict[str, float] = {}
    for pid, (role, t) in after.items():
        out[role] = out.get(role, 0.0) + t - before.get(pid, (role, 0.0))[1]
    return out
