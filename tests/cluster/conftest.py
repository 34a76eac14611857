"""The chart's Ray cluster in containers from the built image (`make cluster-test`).

Session fixtures, in the order a cluster comes up:
- `chart`: the chart rendered with ci/containers-values.yaml (helm-python, as in
  tests/unit/charts): the RayService, the RayJob, Triton's Deployment, their ConfigMaps and
  Secrets.
- `cluster`: a Ray head container and a Ray worker container that joins it, from those pod
  specs (tests/cluster/pods.py). The head mounts the bundle volume writable, as the training
  RayJob's head does (the job's driver runs there and writes the bundle); the first worker
  too, as the RayJob's workers do (Tune's trials write their checkpoints under it).
- `trained`: the RayJob's entrypoint submitted to that cluster through the head's Job REST API
  (what KubeRay's submitter does): `funnel train --profile tiny --out /bundles`, trials on the
  worker (the head has num-cpus 0).
- `serving`: the training worker leaves, a serving worker joins with the bundle volume
  read-only (as the RayService's pods mount it), Triton starts from its Deployment's command,
  and the serveConfigV2 goes to the head's Serve REST API (PUT /api/serve/applications/, as
  KubeRay sends it). Ready when the feed is ranked.

Every container is labelled, removed when it stops (--rm), stopped at the end of the session,
and stops by itself after LIFETIME_S whatever happens to this process. Loopback only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster import pods

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "funnel"
VALUES = CHART / "ci" / "containers-values.yaml"
LIFETIME_S = 2400
DASHBOARD = "http://127.0.0.1:8265"
SERVE = "http://127.0.0.1:8000"
GRPC = "127.0.0.1:9000"
NAMESPACE = "feed"


def log(message: str) -> None:
    print(f"cluster: {message}", flush=True)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 2.0) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError, KeyError, ValueError) as e:
            last = e
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


# ---- the chart ----------------------------------------------------------------------------

@dataclass
class Chart:
    objects: pods.Objects
    values: dict[str, Any]

    @property
    def rayservice(self) -> dict[str, Any]:
        return self.objects.get("RayService")

    @property
    def rayjob(self) -> dict[str, Any]:
        return self.objects.get("RayJob")

    @property
    def head_group(self) -> dict[str, Any]:
        return self.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]

    @property
    def worker_group(self) -> dict[str, Any]:
        return self.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]

    @property
    def triton(self) -> dict[str, Any]:
        return next(d for d in self.objects.docs if d["kind"] == "Deployment"
                    and d["metadata"]["name"].endswith("-triton"))

    def serve_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.rayservice["spec"]["serveConfigV2"])


@pytest.fixture(scope="session")
def chart() -> Chart:
    import helm_python

    values = yaml.safe_load(VALUES.read_text())
    with helm_python.Chart.load(CHART) as c:
        out = c.render(values, name="funnel", namespace=NAMESPACE)
    docs = [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]
    return Chart(pods.Objects(docs), values)


# ---- the cluster --------------------------------------------------------------------------

@dataclass
class Cluster:
    chart: Chart
    image: str
    root: Path
    bundles: Path
    data: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    containers: list[str] = field(default_factory=list)
    node_ids: dict[str, str] = field(default_factory=dict)  # container -> Ray node id

    def _mounts(self) -> pods.Mounts:
        claims = {}
        for doc in self.chart.objects.docs:
            if doc["kind"] == "PersistentVolumeClaim":
                name = doc["metadata"]["name"]
                claims[name] = self.bundles if name.endswith("-bundles") else self.data
        return pods.Mounts(self.root / "volumes", claims)

    def start(self, name: str, pod: dict[str, Any], container: dict[str, Any],
              command: list[str], *, writable: Set[str] = frozenset()) -> str:
        full = f"funnel-ct-{self.run_id}-{name}"
        args = pods.run_args(full, self.image, pod=pod, container=container,
                             objects=self.chart.objects, mounts=self._mounts(),
                             command=command, lifetime_s=LIFETIME_S, writable=writable,
                             hosts=self.chart.objects.service_hosts(NAMESPACE))
        log(f"start {name}: {' '.join(command)}")
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
        self.containers.append(full)
        return full

    def start_head(self) -> str:
        group = self.chart.head_group
        c = group["template"]["spec"]["containers"][0]
        cmd = pods.ray_start(group, c, head=True, head_address="")
        name = self.start("head", group["template"]["spec"], c, cmd, writable={"bundles"})
        wait_for("the Ray head's GCS and dashboard",
                 lambda: httpx.get(f"{DASHBOARD}/api/gcs_healthz", timeout=5).status_code == 200,
                 180)
        self.node_ids[name] = wait_for("the head node", self.alive_nodes, 60)[0]["node_id"]
        return name

    @property
    def head_address(self) -> str:
        return f"127.0.0.1:{self.chart.head_group['rayStartParams'].get('port', 6379)}"

    def start_worker(self, name: str, *, bundles_writable: bool) -> str:
        group = self.chart.worker_group
        c = group["template"]["spec"]["containers"][0]
        cmd = pods.ray_start(group, c, head=False, head_address=self.head_address)
        before = {n["node_id"] for n in self.alive_nodes()}
        full = self.start(name, group["template"]["spec"], c, cmd,
                          writable={"bundles"} if bundles_writable else set())
        joined = wait_for(f"worker {name} to join the head",
                          lambda: [n for n in self.alive_nodes() if n["node_id"] not in before],
                          180)
        self.node_ids[full] = joined[0]["node_id"]
        return full

    def alive_nodes(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{DASHBOARD}/api/v0/nodes", params={"limit": 100}, timeout=10)
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def worker_node_ids(self) -> set[str]:
        return {n["node_id"] for n in self.alive_nodes() if not n["is_head_node"]}

    def stop(self, name: str, *, kill: bool = False) -> None:
        if kill:
            podman("kill", "--signal", "KILL", name, check=False)
        else:
            podman("stop", "--time", "30", name, check=False, timeout=90)
        if name in self.containers:
            self.containers.remove(name)

    def logs(self, name: str, tail: int = 80) -> str:
        r = podman("logs", "--tail", str(tail), name, check=False)
        return r.stdout + r.stderr

    def exec(self, name: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return podman("exec", name, *argv, check=False, timeout=timeout)


def _remove_stale() -> None:
    r = podman("ps", "--all", "--quiet", "--filter", f"label={pods.LABEL}", check=False)
    for cid in r.stdout.split():
        podman("rm", "--force", "--time", "5", cid, check=False)


@pytest.fixture(scope="session")
def cluster(chart: Chart, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make cluster-test` needs it (.ci/run installs it)")
    image = chart.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"][
        "spec"]["containers"][0]["image"]
    if podman("image", "exists", image, check=False).returncode != 0:
        pytest.fail(f"no image {image}: run `make image` first")
    _remove_stale()
    root = tmp_path_factory.mktemp("cluster")
    bundles, data = root / "bundles", root / "data"
    for d in (bundles, data):
        d.mkdir()
        pods._own(d, 1000)
    c = Cluster(chart, image, root, bundles, data)
    try:
        c.start_head()
        c.start_worker("worker-train", bundles_writable=True)
        yield c
    finally:
        failed = request.session.testsfailed > 0
        for name in list(c.containers):
            if failed and podman("container", "exists", name, check=False).returncode == 0:
                print(f"---- {name} (last lines)\n{c.logs(name, 30)}")
            c.stop(name)
        _remove_stale()


# ---- training on the cluster --------------------------------------------------------------

@dataclass
class Trained:
    submission_id: str
    job_id: str
    took_s: float
    trial_nodes: set[str]
    worker_nodes: set[str]
    head_node: str
    manifest: dict[str, Any]


@pytest.fixture(scope="session")
def trained(cluster: Cluster) -> Trained:
    entrypoint = cluster.chart.rayjob["spec"]["entrypoint"]
    sid = f"funnel-train-{cluster.run_id}"
    log(f"submit the RayJob's entrypoint: {entrypoint}")
    t0 = time.monotonic()
    r = httpx.post(f"{DASHBOARD}/api/jobs/", json={"entrypoint": entrypoint,
                                                   "submission_id": sid}, timeout=30)
    assert r.status_code == 200, r.text
    head = next(v for k, v in cluster.node_ids.items() if k.endswith("-head"))
    worker_nodes = {v for k, v in cluster.node_ids.items() if k.endswith("-worker-train")}

    def done() -> dict[str, Any] | None:
        info = httpx.get(f"{DASHBOARD}/api/jobs/{sid}", timeout=10).json()
        return info if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

    info = wait_for("the training job", done, 1500, every_s=5)
    took = time.monotonic() - t0
    if info["status"] != "SUCCEEDED":
        logs = httpx.get(f"{DASHBOARD}/api/jobs/{sid}/logs", timeout=30).json()["logs"]
        raise AssertionError(f"training job {info['status']}: {info.get('message')}\n"
                             f"{logs[-4000:]}")
    log(f"trained in {took:.0f} s")
    job_id = info["job_id"]
    actors = httpx.get(f"{DASHBOARD}/api/v0/actors",
                       params={"limit": 10000, "detail": "true",
                               "filter_keys": "job_id", "filter_predicates": "=",
                               "filter_values": job_id}, timeout=30).json()
    rows = actors["data"]["result"]["result"]
    # the trials and their Ray Train workers reserve CPUs; the job's bookkeeping actors
    # (0 CPUs) may run on the head beside the driver
    # (in a placement group the resource is named CPU_group_<index>_<group id>)
    trial_nodes = {a["node_id"] for a in rows if a.get("node_id") and any(
        (k == "CPU" or k.startswith("CPU_group_")) and v > 0
        for k, v in (a.get("required_resources") or {}).items())}
    on_head = sorted({a["class_name"] for a in rows if a.get("node_id") == head})
    log(f"the job's actors: {len(rows)}; on the head (no CPUs): {on_head}")
    manifest = json.loads((cluster.bundles / "latest" / "manifest.json").read_text())
    return Trained(sid, job_id, took, trial_nodes, worker_nodes, head, manifest)


# ---- serving ------------------------------------------------------------------------------

@dataclass
class Serving:
    cluster: Cluster
    worker: str
    triton: str
    ready_s: float


def deploy_serve_config(chart: Chart) -> None:
    """What KubeRay does with serveConfigV2: PUT it, as JSON, to the head's dashboard."""
    r = httpx.put(f"{DASHBOARD}/api/serve/applications/", json=chart.serve_config(), timeout=60)
    assert r.status_code == 200, r.text


def serve_details() -> dict[str, Any]:
    r = httpx.get(f"{DASHBOARD}/api/serve/applications/", timeout=10)
    r.raise_for_status()
    return r.json()


def feed_ok(timeout: float = 10) -> bool:
    r = httpx.post(f"{SERVE}/v1/feed", json={"user_id": 1, "limit": 10}, timeout=timeout)
    return r.status_code == 200 and not r.json()["degraded"]


@pytest.fixture(scope="session")
def serving(cluster: Cluster, trained: Trained) -> Serving:
    t0 = time.monotonic()
    # the training job's worker leaves; a serving worker (bundle volume read-only) joins
    train_worker = next(n for n in cluster.containers if n.endswith("worker-train"))
    cluster.stop(train_worker)
    worker = cluster.start_worker("worker-1", bundles_writable=False)
    dep = cluster.chart.triton["spec"]["template"]["spec"]
    tc = dep["containers"][0]
    triton = cluster.start("triton", dep, tc, [*tc.get("command", []), *tc.get("args", [])])
    port = cluster.chart.values["triton"]["ports"]["http"]
    wait_for("Triton ready",
             lambda: httpx.get(f"http://127.0.0.1:{port}/v2/health/ready",
                               timeout=5).status_code == 200, 300)
    deploy_serve_config(cluster.chart)

    def running() -> bool:
        apps = serve_details()["applications"]
        statuses = {name: a["status"] for name, a in apps.items()}
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            raise AssertionError(f"serve deploy failed: {json.dumps(apps)[:3000]}")
        return bool(statuses) and all(s == "RUNNING" for s in statuses.values())

    try:
        wait_for("the Serve application RUNNING", running, 600, every_s=5)
        wait_for("a ranked feed", feed_ok, 300)
    except AssertionError:
        print(cluster.logs(worker, 200))
        raise
    ready = time.monotonic() - t0
    log(f"serving {ready:.0f} s after training")
    return Serving(cluster, worker, triton, ready)
