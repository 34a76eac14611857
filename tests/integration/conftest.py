"""Session fixtures for integration tests: one tiny bundle, one Triton, one Serve app.

Everything runs as a user runs it: `funnel train`, `funnel triton` and `funnel serve` as
subprocesses (servers and stock clients never share a process), on free loopback ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

FUNNEL = [sys.executable, "-m", "funnel"]
LOCAL_CONFIG = Path(__file__).resolve().parents[2] / "serve" / "configs" / "local.yaml"
# the stack's ranker and source budgets (write_serve_config says why they differ from local.yaml)
TEST_RANKER_TIMEOUT_MS = 3000
TEST_SOURCE_TIMEOUT_MS = 2000


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`funnel train --profile tiny` once per test session. FUNNEL_TEST_BUNDLE names an
    existing tiny bundle to reuse instead (local iteration only; CI always trains)."""
    reuse = os.environ.get("FUNNEL_TEST_BUNDLE")
    if reuse:
        return Path(reuse)
    out = tmp_path_factory.mktemp("artifacts")
    labels = review_labels(tmp_path_factory.mktemp("review"))
    # --push: the session's bundle also goes into a registry (OUT/registry, a local store
    # with its SQLite index), so `funnel train --push` runs as a user would run it
    r = subprocess.run([*FUNNEL, "train", "--profile", "tiny", "--out", str(out),
                        "--review-labels", str(labels), "--push",
                        "--registry", str(out / "registry")],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    return out / "latest"


REVIEWED = [("blk-1", "you people are vermin and should disappear", ["hate"], "block"),
            ("blk-2", "send me your bank password to claim the prize", ["spam"], "block"),
            ("ok-1", "our team won the match last night", ["abuse"], "allow")]


def review_labels(directory: Path) -> Path:
    """Reviewer decisions in a real review database, exported by `funnel review export` the
    way a user would, so the session's bundle is trained with `--review-labels` (the
    manifest's `review_label_rows` proves `funnel train` took them)."""
    from serve.review.store import SqlReviewStore as ReviewStore

    url = f"sqlite:///{directory / 'review.sqlite3'}"
    store = ReviewStore(url)
    for cid, text, flagged, decision in REVIEWED:
        item_id = store.record_model_decision(
            content_id=cid, decision="review", model="moderation_text", policy_version="t",
            request_id="fixture", text=text, has_image=False, author_id=None, scores={},
            flagged_labels=flagged, reasons=[], model_versions={})
        assert item_id is not None
        store.decide(item_id, decision=decision, reviewer="fixture")  # type: ignore[arg-type]
    store.close()
    out = directory / "labels.parquet"
    r = subprocess.run([*FUNNEL, "review", "export", "--database-url", url, "--out", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(REVIEWED)} decisions" in r.stderr
    return out


def free_port() -> int:
    """A free loopback port outside the ephemeral range (see benchmarks.triton_batching)."""
    from benchmarks.triton_batching import free_port as pick

    return pick()


class TcpProxy:
    """A loopback TCP forwarder in front of a real server, able to cut every connection and
    refuse new ones for a while: to the app, the server went away (a restart, a network
    partition) and came back. Threads, one pair per connection; for tests of faults."""

    def __init__(self, host: str, port: int) -> None:
        import socket
        import threading

        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._down:
                    client.close()  # refused: the server is away
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._open.difference_update((src, dst))

    def down(self) -> None:
        """Cut every open connection; refuse new ones until `up()`."""
        import socket

        with self._lock:
            self._down = True
            conns = list(self._open)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def up(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self.down()
        self._listener.close()


@dataclass
class ReviewDatabase:
    url: str                       # what the app is given
    direct_url: str                # the same database, not through the proxy
    proxy: TcpProxy | None = None  # PostgreSQL only: the fault test cuts it


@pytest.fixture(scope="session")
def review_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewDatabase]:
    """The shared stack's review database: with FUNNEL_TEST_POSTGRES_URL set (CI sets it), a
    fresh schema on that PostgreSQL reached through a `TcpProxy`, as in a cluster; else a
    SQLite file (and the database-outage fault test is skipped)."""
    pg = os.environ.get("FUNNEL_TEST_POSTGRES_URL")
    if not pg:
        url = f"sqlite:///{tmp_path_factory.mktemp('review-db') / 'review.sqlite3'}"
        yield ReviewDatabase(url=url, direct_url=url)
        return
    import uuid

    import sqlalchemy as sa

    from serve.review.store import normalise_url

    schema = f"funnel_it_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalise_url(pg))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    u = sa.engine.make_url(pg)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 5432)
    opts = {"options": f"-csearch_path={schema}"}
    direct = u.update_query_dict(opts)
    proxied = direct.set(host="127.0.0.1", port=proxy.port)
    try:
        yield ReviewDatabase(url=proxied.render_as_string(hide_password=False),
                             direct_url=direct.render_as_string(hide_password=False),
                             proxy=proxy)
    finally:
        proxy.close()
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def write_serve_config(directory: Path, *, grpc: bool = True,
                       review_url: str | None = None) -> tuple[Path, int, int]:
    """The shipped local Serve config on free ports: (path, HTTP port, Triton gRPC port).
    The app's own gRPC port is free too (`serve_grpc_port(config)`); `grpc=False` drops the
    gRPC servicers (for --ingress haproxy, which serves no gRPC)."""
    doc = yaml.safe_load(LOCAL_CONFIG.read_text())
    http_port, grpc_port = free_port(), free_port()
    doc["http_options"]["port"] = http_port
    doc["grpc_options"]["port"] = free_port()
    if not grpc:
        doc["grpc_options"]["grpc_servicer_functions"] = []
    args = doc["applications"][0]["args"]
    args["triton"].update(http_port=free_port(), grpc_port=grpc_port, metrics_port=free_port())
    args["feed"]["ranker"]["url"] = f"127.0.0.1:{grpc_port}"
    # Budgets set for the tests: the shipped 150 ms ranker and 50 ms source budgets are
    # production latency targets, and on a busy test machine one late answer would read as a
    # failure. A test that means "the ranker is down" kills Triton: its calls then fail at
    # once (connection refused), well inside these budgets.
    args["feed"]["ranker"]["timeout_ms"] = TEST_RANKER_TIMEOUT_MS
    for source in args["feed"]["sources"].values():
        source["timeout_ms"] = TEST_SOURCE_TIMEOUT_MS
    args["review"]["database_url"] = (review_url
                                      or f"sqlite:///{directory / 'review.sqlite3'}")
    args["review"]["spool_path"] = str(directory / "review-spool.sqlite3")
    args["review"]["verdict_poll_s"] = 0.5
    # the rollout tests inject faults into canary and shadow variants (test_rollout.py)
    args["rollout"]["allow_fault_injection"] = True
    args["rollout"]["triton_unload_grace_s"] = 2.0
    # a ranker version's compute per row is known a second after its first rows (cost)
    args.setdefault("cost", {})["triton_poll_s"] = 1.0
    args["impressions"].update(url=str(directory / "impressions"), flush_interval_s=0.5,
                               spool_dir=str(directory / "spool"))
    # the console's drift page reads the reports `funnel drift run|watch` writes here
    args.setdefault("console", {})["drift_reports_url"] = str(directory / "drift-reports")
    config = directory / "serve.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config, http_port, grpc_port


ADMIN_TOKEN = "integration-admin-token"
CONSOLE_SECRET = "integration-console-session-secret"


def serve_grpc_port(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["grpc_options"]["port"])


@dataclass
class Stack:
    url: str
    config: Path
    bundle: Path
    triton_grpc: str
    triton: subprocess.Popen[bytes] | None = None
    admin_token: str = ADMIN_TOKEN
    grpc: str = ""  # the app's gRPC address (funnel.v1), host:port
    serve_pid: int = 0  # `funnel serve` (Ray, the Serve app and its replicas below it)
    review: ReviewDatabase | None = None

    @property
    def drift_reports(self) -> Path:
        return Path(yaml.safe_load(self.config.read_text())["applications"][0]["args"]
                    ["console"]["drift_reports_url"])

    @property
    def impressions(self) -> Path:
        return Path(yaml.safe_load(self.config.read_text())["applications"][0]["args"]
                    ["impressions"]["url"])

    def start_triton(self, timeout_s: float = 120.0) -> float:
        """Start `funnel triton`; returns the monotonic time it became ready."""
        import tritonclient.grpc as grpcclient

        self.triton = subprocess.Popen([*FUNNEL, "triton", "--bundle", str(self.bundle),
                                        "--config", str(self.config)],
                                       start_new_session=True)
        # reconnect quickly: gRPC's default backoff (growing to 120 s) would see Triton ready
        # seconds after it is, and "ready" is the clock the fault test measures recovery from
        client = grpcclient.InferenceServerClient(self.triton_grpc, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.triton.poll() is None, "funnel triton exited during start-up"
            with contextlib.suppress(Exception):
                if client.is_model_ready("ranker"):
                    return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"Triton not ready within {timeout_s}s")

    def stop_triton(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop `funnel triton` and everything below it (tritonserver, its Python backend
        stubs): SIGTERM lets it shut down; SIGKILL is a crash (nothing cleans up)."""
        p = self.triton
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.triton = None


def _stop(p: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@dataclass(frozen=True)
class S3Registry:
    """A model registry on a real S3 API server (moto's standalone server, its own process
    on loopback): the object store URL, the index URL and the environment s3fs reads."""

    endpoint: str
    url: str
    database_url: str
    env: dict[str, str]

    def open(self) -> Any:
        """The registry as this test process sees it (s3fs options given directly: s3fs
        reads credentials at its first request, not when it is made)."""
        from funnel.registry import ObjectStore, Registry, RegistryIndex

        opts = {"key": self.env["AWS_ACCESS_KEY_ID"],
                "secret": self.env["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {"endpoint_url": self.endpoint}}
        return Registry(ObjectStore(self.url, opts), RegistryIndex(self.database_url))


@pytest.fixture(scope="session")
def s3_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Registry]:
    import urllib.request

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    env = {"FUNNEL_REGISTRY_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    index = tmp_path_factory.mktemp("registry") / "index.sqlite3"
    reg = S3Registry(endpoint, "s3://funnel-models/registry", f"sqlite:///{index}", env)
    r = reg.open()
    r.store.fs.mkdir("funnel-models")
    r.close()
    yield reg
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def stack(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory,
          review_database: ReviewDatabase, s3_registry: S3Registry) -> Iterator[Stack]:
    """Triton (`funnel triton`) + the Serve app (`funnel serve --triton external`), with a
    model registry on an S3 API server behind its bundle root."""
    tmp = tmp_path_factory.mktemp("serve")
    config, http_port, grpc_port = write_serve_config(tmp, review_url=review_database.url)
    doc = yaml.safe_load(config.read_text())
    doc["applications"][0]["args"]["registry"] = {"url": s3_registry.url,
                                                  "database_url": s3_registry.database_url}
    config.write_text(yaml.safe_dump(doc))
    s = Stack(url=f"http://127.0.0.1:{http_port}", config=config, bundle=tiny_bundle,
              triton_grpc=f"127.0.0.1:{grpc_port}",
              grpc=f"127.0.0.1:{serve_grpc_port(config)}", review=review_database)
    s.start_triton()
    ready = tmp / "ready.json"
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([*FUNNEL, "serve", "--bundle", str(tiny_bundle), "--config",
                             str(config), "--triton", "external", "--ready-file", str(ready),
                             "--grpc"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **s3_registry.env,
                                 "FUNNEL_ADMIN_TOKEN": ADMIN_TOKEN,
                                 "FUNNEL_CONSOLE_SECRET": CONSOLE_SECRET})
    s.serve_pid = proc.pid
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError("funnel serve did not become ready:\n"
                                     + (tmp / "serve.log").read_text()[-4000:])
            time.sleep(0.5)
        assert json.loads(ready.read_text())["url"] == s.url
        yield s
    finally:
        _stop(proc)
        s.stop_triton()
        log.close()
