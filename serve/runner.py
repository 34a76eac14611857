"""`funnel serve`: local Ray + Triton + the Serve app, stopped cleanly on a signal.

Triton runs in its own process (`python -m funnel triton`), supervised: if it exits while
serving, it is started again after `restart_delay_s`. `--triton external` skips that, for
a Triton run elsewhere (a separate pod in the cluster, or a test that stops and restarts it).

The Serve config file is applied the way `serve run config.yaml` applies it (the same
schema, the same controller call), so the file `make run` uses is the one a RayService takes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from funnel.contracts.bundle import verify_bundle
from serve.config import AppArgs, load_serve_config, parse_app_args
from serve.errors import ServeConfigError
from serve.ports import Port, check_free

log = logging.getLogger("funnel.serve")
Say = Callable[[str], None]


class TritonSupervisor:
    """Keeps one `python -m funnel triton` process alive until `stop()`."""

    def __init__(self, *, bundle: str, config_path: str, say: Say,
                 restart_delay_s: float = 1.0) -> None:
        self._cmd = [sys.executable, "-m", "funnel", "triton", "--bundle", bundle,
                     "--config", config_path]
        self._say = say
        self._delay = restart_delay_s
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="triton-supervisor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            from serve.ranker.server import die_with_parent

            # its own process group, so that stop() reaches tritonserver too; and SIGTERM
            # from the kernel if this process is killed outright (no orphaned Triton)
            self._proc = subprocess.Popen(self._cmd, start_new_session=True,
                                          preexec_fn=die_with_parent)
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            self._say(f"triton exited with code {code}; restarting in {self._delay:.0f}s")
            self._stopping.wait(self._delay)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping.set()
        p = self._proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self._thread.join(timeout_s)


def _wait_http(url: str, *, timeout_s: float, ok: Callable[[int], bool]) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return True
        except OSError as e:
            code = getattr(e, "code", None)
            if code is not None and ok(int(code)):
                return True
        time.sleep(0.5)
    return False


def absolute_sqlite_url(url: str) -> str:
    """`sqlite:///relative.db` -> an absolute path (replicas do not share our cwd)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or ":memory:" in url:
        return url
    return prefix + str(Path(url[len(prefix):]).resolve())


def pull_primary(args: AppArgs, version: str, say: Say) -> str:
    """Bundle `version` from the model registry into the bundle root (every byte checked;
    nothing to do when the root has it): the directory to serve. Exit 2 naming the problem:
    no registry configured, an unknown or retired version, a file that does not match."""
    from serve.bundles import bundle_versions

    bundles = bundle_versions(args)
    try:
        if not bundles.knows(version):  # in the root, or in the registry and not retired
            if bundles.registry is None:
                raise ServeConfigError(
                    f"--bundle-version {version}: not in the bundle root {bundles.root}, and "
                    f"no model registry is configured; set ${args.registry.url_env} (and "
                    f"${args.registry.database_url_env}) or args.registry.url in the Serve "
                    "config")
            raise ServeConfigError(f"--bundle-version {version}: the registry has no such "
                                   "version, or it is retired (`funnel bundle list`)")
        say(f"bundle {version}: in {bundles.root}, from the registry if it lacks it "
            "(checksums checked)")
        return str(bundles.path(version))
    finally:
        bundles.close()


def resolved_config(config_path: str, bundle: str | None, *, ranker_backend: str | None = None,
                    bundle_version: str | None = None, say: Say = lambda _m: None
                    ) -> tuple[dict[str, Any], AppArgs]:
    """The Serve config with the bundle, the moderation policy and a SQLite review database
    made absolute (replicas do not share our cwd); the policy is checked here (exit 2).
    `ranker_backend` ("triton" or "local") overrides args.feed.ranker.backend.
    `bundle_version`: serve that version, pulled from the model registry into the bundle root
    first when the root lacks it (instead of `bundle`)."""
    from serve.app import check_rollout_args
    from serve.moderation.remote import load_serving_policy

    doc, args = load_serve_config(config_path)
    doc = copy.deepcopy(doc)
    app_args = dict(doc["applications"][0].get("args") or {})
    if bundle_version is not None:
        if bundle is not None:
            raise ServeConfigError("--bundle and --bundle-version: give one (a directory, or "
                                   "a version the registry holds)")
        bundle = pull_primary(args, bundle_version, say)  # later versions: the same root
    b = verify_bundle(bundle or args.bundle)  # exit 2 here, naming the bad file
    if b.manifest.get("kind", "serving") != "serving":
        raise ServeConfigError(
            f"{b.path} is a {b.manifest['kind']} bundle (the moderation text model alone): "
            "the feed needs a serving bundle. Serve it under KServe (python -m "
            "serve.moderation.kserve_main --bundle ...), or make a serving bundle with "
            "`funnel train moderation --texts ... --base SERVING_BUNDLE`")
    app_args["bundle"] = str(b.path.resolve())
    moderation = dict(app_args.get("moderation") or {})
    moderation["policy"] = str(Path(args.moderation.policy).resolve())
    app_args["moderation"] = moderation
    review = dict(app_args.get("review") or {})
    review["database_url"] = absolute_sqlite_url(args.review.database_url)
    app_args["review"] = review
    rollout = dict(app_args.get("rollout") or {})
    if isinstance(args.rollout.config, str):
        rollout["config"] = str(Path(args.rollout.config).resolve())
    if args.rollout.bundle_root:
        rollout["bundle_root"] = str(Path(args.rollout.bundle_root).resolve())
    if rollout:
        app_args["rollout"] = rollout
    impressions = dict(app_args.get("impressions") or {})
    url = os.environ.get(args.impressions.url_env) or args.impressions.url
    if "://" not in url:  # a local directory: the replicas do not share our cwd
        impressions["url"] = str(Path(url).resolve())
        app_args["impressions"] = impressions
    if ranker_backend is not None:
        feed = dict(app_args.get("feed") or {})
        feed["ranker"] = {**(feed.get("ranker") or {}), "backend": ranker_backend}
        app_args["feed"] = feed
    doc["applications"][0]["args"] = app_args
    parsed = parse_app_args(app_args)
    if parsed.moderation.enabled:
        load_serving_policy(parsed.moderation.policy, b.manifest)
    check_rollout_args(parsed)  # exit 2 naming the field, before Ray starts
    app = doc["applications"][0]
    absent = absent_deployments(parsed)
    app["deployments"] = [d for d in app.get("deployments") or []
                          if d.get("name") not in absent]
    return doc, parsed


def absent_deployments(args: AppArgs) -> set[str]:
    """Deployments the app leaves out with these args: Serve refuses a config that sets
    options for a deployment the app does not have."""
    out = set()
    if not args.moderation.enabled:
        out.add("ModerationModels")
    if not args.rollout.shadow_scorer:
        out.add("ShadowScorer")
    return out


def serve_ports(doc: dict[str, Any], args: AppArgs, *, triton_local: bool,
                grpc: bool) -> list[Port]:
    """Every port this start would listen on, with the config field that sets it."""
    http = doc.get("http_options") or {}
    out = [Port(http.get("host", "127.0.0.1"), int(http.get("port", 8000)),
                "HTTP, http_options.port")]
    if grpc:
        # Ray Serve's gRPC proxy binds every interface
        out.append(Port("0.0.0.0", int((doc.get("grpc_options") or {}).get("port", 9000)),
                        "gRPC, grpc_options.port"))
    if triton_local:
        out += triton_ports(args)
    return out


def triton_ports(args: AppArgs) -> list[Port]:
    """The ports `funnel triton` listens on, with the config field that sets each."""
    t = args.triton
    return [Port(t.host, t.http_port, "Triton HTTP, args.triton.http_port"),
            Port(t.host, t.grpc_port, "Triton gRPC, args.triton.grpc_port"),
            Port(t.host, t.metrics_port, "Triton metrics, args.triton.metrics_port")]


def next_steps(base: str, *, admin_env: str, admin_on: bool, grpc_note: str) -> list[str]:
    """What `funnel serve` prints once ready: the commands to try next."""
    funnel = Path(sys.executable).parent / "funnel"
    with contextlib.suppress(ValueError):
        funnel = funnel.relative_to(Path.cwd())
    admin = (f"admin routes (/v1/review, /v1/admin/rollout): on, with ${admin_env}"
             if admin_on else
             f"admin routes (/v1/review, /v1/admin/rollout): OFF, ${admin_env} was not set "
             f"when this started; to use them: Ctrl-C, `export {admin_env}=<a long random "
             "string>`, start again")
    return ["try:",
            f"  curl -s -XPOST {base}/v1/feed -d '{{\"user_id\": 5, \"limit\": 10}}'",
            f"  {admin}",
            f"  {grpc_note}",
            f"  the command line: {funnel} --help  (or `source "
            f"{funnel.parent / 'activate'}` to put `funnel` on PATH)"]


def serve_forever(*, config_path: str, bundle: str | None, triton: str, say: Say,
                  ready_file: str | None = None, ingress: str = "proxy",
                  grpc: bool = False, ranker: str | None = None,
                  bundle_version: str | None = None) -> None:
    """Start everything, print where, block until SIGINT/SIGTERM, then stop everything.

    gRPC (funnel.v1 and the Open Inference Protocol) is served only with `grpc=True`: Ray
    Serve's gRPC proxy has no host setting and listens on every interface. `ranker`
    ("triton" or "local") overrides args.feed.ranker.backend; with "local" no Triton runs."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from serve.proxy_mode import apply_ray_serve_env

    # first, and cheap: a second `funnel serve` would share these ports with the first
    raw_doc, raw_args = load_serve_config(config_path)
    grpc = grpc and bool((raw_doc.get("grpc_options") or {}).get("grpc_servicer_functions"))
    if ingress == "haproxy" and grpc:
        raise ServeConfigError(
            f"{config_path}: --ingress haproxy (Ray Serve's high-throughput mode) does not "
            "serve gRPC; use --ingress proxy, or leave out --grpc")
    backend = ranker or raw_args.feed.ranker.backend
    triton_local = triton == "local" and backend == "triton"
    check_free(serve_ports(raw_doc, raw_args, triton_local=triton_local, grpc=grpc))
    doc, args = resolved_config(config_path, bundle, ranker_backend=ranker,
                                bundle_version=bundle_version, say=say)
    try:
        schema = ServeDeploySchema.model_validate(doc)
    except Exception as e:  # pydantic v1/v2 errors of Ray's own schema
        raise ServeConfigError(f"{config_path}: not a valid Ray Serve config: {e}") from e
    admin_env = args.review.admin_token_env
    admin_on = bool(os.environ.get(admin_env))
    if not admin_on:
        say(f"admin routes (/v1/review, /v1/admin/rollout) are off: ${admin_env} is not set "
            "(export it before `funnel serve` to turn them on)")
    metrics_dir = prepare_metrics_dir(doc)
    schema = ServeDeploySchema.model_validate(doc)  # with the replicas' metrics directory
    ingress = apply_ray_serve_env(ingress)  # before ray.init: Ray's processes read it
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    supervisor = None
    if backend == "local":
        say("ranker: in-process TorchScript in each feed replica (ranker.backend local); "
            "no Triton")
    elif triton_local:
        supervisor = TritonSupervisor(bundle=args.bundle, config_path=config_path, say=say)
        say(f"starting Triton (ranker) on grpc {args.triton.host}:{args.triton.grpc_port}")
        supervisor.start()
    try:
        say(f"starting Ray (local) and the Serve app; HTTP ingress: {ingress}")
        ray.init(address="local", include_dashboard=False, log_to_driver=True,
                 configure_logging=False, namespace="funnel")
        for sig in (signal.SIGINT, signal.SIGTERM):  # ray.init installs its own handlers
            signal.signal(sig, on_signal)
        grpc_port = schema.grpc_options.port
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
            grpc_options=schema.grpc_options.model_dump() if grpc else None)
        client.deploy_apps(schema, _blocking=False)
        host, port = schema.http_options.host, schema.http_options.port
        base = f"http://{host}:{port}"
        while not stop.is_set():
            if _wait_http(f"{base}/healthz", timeout_s=2, ok=lambda s: s == 200):
                break
        if not stop.is_set():
            ready = _wait_http(f"{base}/readyz", timeout_s=60, ok=lambda s: s == 200)
            grpc_note = (f"gRPC (funnel.v1, Open Inference Protocol): port {grpc_port}, on "
                         "every network interface (Ray Serve's gRPC proxy has no host setting)"
                         if grpc else "gRPC: off (--grpc serves it, on every interface)")
            say(f"serving on {base}  (POST {base}/v1/feed, POST {base}/v1/moderate, "
                f"GET {base}/readyz)"
                + ("" if ready else "  [not ready yet: see GET /readyz]"))
            for line in next_steps(base, admin_env=admin_env, admin_on=admin_on,
                                   grpc_note=grpc_note):
                say(line)
            if ready_file:
                Path(ready_file).write_text(json.dumps({"url": base, "pid": os.getpid()}))
        stop.wait()
        say("stopping")
    finally:
        with contextlib.suppress(Exception):
            from ray import serve

            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if supervisor is not None:
            supervisor.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        say("stopped")


def prepare_metrics_dir(doc: dict[str, Any]) -> str | None:
    """A directory for prometheus_client's multiprocess mode, given to the app's replicas
    through its runtime_env (monitoring/metrics.py): the environment's, when it names one
    (the Helm chart mounts an emptyDir), else a fresh one, returned for removal at exit."""
    from monitoring.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="funnel-metrics-")
    Path(path).mkdir(parents=True, exist_ok=True)
    app = doc["applications"][0]
    env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env.setdefault(MULTIPROC_ENV, path)
    return None if given else path


def run_triton_process(*, config_path: str, bundle: str | None, say: Say,
                       bundle_version: str | None = None) -> None:
    """`funnel triton`: only Triton, in the foreground, until SIGINT/SIGTERM."""
    from serve.ranker.server import run_triton

    check_free(triton_ports(load_serve_config(config_path)[1]))
    _, args = resolved_config(config_path, bundle, bundle_version=bundle_version, say=say)
    run_triton(args.bundle, args.triton,
               on_ready=lambda: say(f"triton ready: grpc {args.triton.host}:"
                                    f"{args.triton.grpc_port}"))
