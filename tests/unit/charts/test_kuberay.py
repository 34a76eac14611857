"""What the chart relies on in KubeRay (docs/deployment.md lists each behaviour, with the
KubeRay source it was read in): its own probes on every Ray container, the head's token for the
autoscaler, the operator's way into the Ray pods through the NetworkPolicy, the CRD check, pod
templates that a chart upgrade leaves alone, gRPC on the serve Service KubeRay keeps on the
serving cluster, and a RayJob name within KubeRay's limit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import helm_python
import pytest
import yaml

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import one, render_docs

RAYLET = "/api/local_raylet_healthz"
GCS = "/api/gcs_healthz"
PROXY = "/-/healthz"


def ray_groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(head | worker group name, group spec, Ray container) of a RayService or RayJob."""
    cluster = doc["spec"]["rayClusterConfig" if doc["kind"] == "RayService" else "rayClusterSpec"]
    head = cluster["headGroupSpec"]
    yield "head", head, head["template"]["spec"]["containers"][0]
    for g in cluster.get("workerGroupSpecs", []):
        yield g["groupName"], g, g["template"]["spec"]["containers"][0]


def probe_urls(container: dict[str, Any], kind: str) -> list[str]:
    """The URLs an exec probe checks: the arguments after the script and its timeout."""
    cmd = container[kind]["exec"]["command"]
    assert cmd[:3] == ["python", "-I", "-c"], cmd
    return cmd[5:]


# ---- 1. probes ------------------------------------------------------------------------------

def test_every_ray_container_has_the_charts_probes_in_python_not_wget() -> None:
    """KubeRay injects wget probes where a container has none (pod.go,
    initLivenessAndReadinessProbe); the image has no wget, so each Ray container brings its
    own: the raylet (and on the head the GCS), and Serve's proxy for serving workers."""
    docs = render_docs({"training": {"enabled": True}})
    for doc in (one(docs, "RayService"), one(docs, "RayJob")):
        for group, _, c in ray_groups(doc):
            for kind in ("readinessProbe", "livenessProbe"):
                text = " ".join(c[kind]["exec"]["command"])
                assert "wget" not in text and "curl" not in text, (doc["kind"], group, kind)
                assert c[kind]["timeoutSeconds"] >= 2 and c[kind]["periodSeconds"] == 5
            raylet = "http://localhost:52365" + RAYLET
            if group == "head":
                both = [raylet, "http://localhost:8265" + GCS]
                assert probe_urls(c, "readinessProbe") == both, doc["kind"]
                assert probe_urls(c, "livenessProbe") == both, doc["kind"]
            else:
                serving = doc["kind"] == "RayService"
                assert probe_urls(c, "readinessProbe") == (
                    [raylet, "http://localhost:8000" + PROXY] if serving else [raylet])
                assert probe_urls(c, "livenessProbe") == [raylet]
                # KubeRay's: a serving worker leaves the Service at its first failed check
                assert c["readinessProbe"]["failureThreshold"] == (1 if serving else 10)


def test_the_probes_follow_each_groups_ports_and_the_proxy_location() -> None:
    """Where head and worker share one address (ci/containers-values.yaml) a worker's agent
    listens on another port; the probes read it from the group's rayStartParams."""
    docs = render_docs({
        "serve": {"httpPort": 8100},
        "ray": {"head": {"rayStartParams": {"num-cpus": "0", "dashboard-port": "8266"}},
                "workers": [
                    {"name": "a", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                     "rayStartParams": {"dashboard-agent-listen-port": "52366"},
                     "resources": {"limits": {"cpu": "1"}}},
                    {"name": "b", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                     "resources": {"limits": {"cpu": "1"}}}]}})
    groups = {g: c for g, _, c in ray_groups(one(docs, "RayService"))}
    assert probe_urls(groups["head"], "readinessProbe") == [
        "http://localhost:52365" + RAYLET, "http://localhost:8266" + GCS]
    assert probe_urls(groups["a"], "readinessProbe") == [
        "http://localhost:52366" + RAYLET, "http://localhost:8100" + PROXY]
    assert probe_urls(groups["b"], "livenessProbe") == ["http://localhost:52365" + RAYLET]
    # the dashboard port KubeRay talks to is the head container's port named "dashboard"
    ports = {p["name"]: p["containerPort"] for p in groups["head"]["ports"]}
    assert ports["dashboard"] == 8266
    # HeadOnly: the workers run no proxy, so their readiness cannot wait for one
    head_only = one(render_docs({"serve": {"proxyLocation": "HeadOnly"}}), "RayService")
    for group, _, c in ray_groups(head_only):
        assert not any(u.endswith(PROXY) for u in probe_urls(c, "readinessProbe")), group


class _Health(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"no such path"))
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def health_servers(n: int, answers: dict[str, tuple[int, bytes]]) -> Iterator[list[int]]:
    handler = type("Handler", (_Health,), {"answers": answers})
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(n)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield [s.server_address[1] for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def run_probe(container: dict[str, Any], kind: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *container[kind]["exec"]["command"][1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          env={"http_proxy": "http://127.0.0.1:9", "PATH": ""})


def test_the_probe_commands_pass_on_success_and_fail_naming_the_url() -> None:
    """The exact commands the chart renders, run against stand-ins for the raylet's agent, the
    dashboard and Serve's proxy (an http_proxy in the environment must not divert them)."""
    answers = {RAYLET: (200, b"success"), GCS: (200, b"success"), PROXY: (200, b"success")}
    with health_servers(3, answers) as (agent, dashboard, proxy):
        params = {"dashboard-port": str(dashboard), "dashboard-agent-listen-port": str(agent)}
        docs = render_docs({"serve": {"httpPort": proxy}, "ray": {
            "head": {"rayStartParams": params},
            "workers": [{"name": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                         "rayStartParams": params, "resources": {"limits": {"cpu": "1"}}}]}})
        groups = {g: c for g, _, c in ray_groups(one(docs, "RayService"))}
        for group, c in groups.items():
            for kind in ("readinessProbe", "livenessProbe"):
                done = run_probe(c, kind)
                assert done.returncode == 0, (group, kind, done.stderr)
        answers[GCS] = (503, b"GCS is down")
        done = run_probe(groups["head"], "livenessProbe")
        assert done.returncode != 0 and f":{dashboard}{GCS}" in done.stderr, done.stderr
        answers[PROXY] = (200, b"draining")
        done = run_probe(groups["cpu"], "readinessProbe")
        assert done.returncode != 0 and "draining" in done.stderr, done.stderr
        assert run_probe(groups["cpu"], "livenessProbe").returncode == 0


# ---- 2. the autoscaler's token ------------------------------------------------------------

def test_the_head_gets_a_token_for_the_autoscaler_and_no_other_pod_does() -> None:
    """gpu-values.yaml turns KubeRay's in-tree autoscaler on: a sidecar of the head that lists
    pods and patches the RayCluster. KubeRay binds its Role to the head's serviceAccountName
    (raycluster_controller.go, reconcileAutoscalerRoleBinding) but does not create a named
    ServiceAccount: the chart does."""
    docs = h.rendered("gpu-values.yaml")
    service = one(docs, "RayService")
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount", head["serviceAccountName"])
    for doc in docs:
        for where, spec in h.pod_specs(doc):
            if spec is not head:
                assert spec["automountServiceAccountToken"] is False, (doc["kind"], where)
    # a ServiceAccount of the user's: named in the head, not rendered, token still mounted
    own = render_docs({"ray": {"autoscaling": {"enabled": True}},
                       "serviceAccount": {"create": False, "name": "feed-ray"}})
    head = one(own, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["spec"]["serviceAccountName"] == "feed-ray"
    assert head["spec"]["automountServiceAccountToken"] is True
    assert not [d for d in own if d["kind"] == "ServiceAccount"]
    # never the namespace's default ServiceAccount, which every pod that names none runs as
    with pytest.raises(helm_python.HelmError, match=r"serviceAccount\.name: \"default\""):
        render_docs({"ray": {"autoscaling": {"enabled": True}},
                     "serviceAccount": {"create": False}})
    # no autoscaler: no token anywhere
    default = one(render_docs({}), "RayService")["spec"]["rayClusterConfig"]
    assert default["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is False


# ---- 4. the operator through the NetworkPolicy --------------------------------------------

def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has = labels.get(e["key"])
        ok = {"In": has in e.get("values", []), "NotIn": has not in e.get("values", []),
              "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[e["operator"]]
        if not ok:
            return False
    return True


def admits(policy: dict[str, Any], pod: dict[str, str], peer: dict[str, str],
           peer_ns: dict[str, str], port: int) -> bool:
    """Whether the NetworkPolicy, which must select `pod`, lets `peer` (in a namespace labelled
    `peer_ns`) connect to `port`: the Kubernetes semantics of ingress rules."""
    spec = policy["spec"]
    assert _selects(spec["podSelector"], pod), "the policy does not select the pod"
    for rule in spec.get("ingress", []):
        if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
            continue
        if "from" not in rule:
            return True
        for f in rule["from"]:
            in_ns = (_selects(f["namespaceSelector"], peer_ns) if "namespaceSelector" in f
                     else peer_ns.get("kubernetes.io/metadata.name") == "feed")
            if in_ns and _selects(f.get("podSelector"), peer):
                return True
    return False


# the kuberay-operator Helm chart's pod labels (helm-chart/kuberay-operator/templates)
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator",
            "app.kubernetes.io/instance": "kuberay-operator",
            "app.kubernetes.io/component": "kuberay-operator"}
OPERATOR_NS = {"kubernetes.io/metadata.name": "kuberay-system"}


def test_the_operator_reaches_the_head_with_external_traffic_closed() -> None:
    """KubeRay deploys serveConfigV2 on the dashboard (8265) and checks the head's Serve proxy
    on the serving port (GET /-/healthz, rayservice_controller.go updateHeadPodServeLabel);
    with allowExternal=false both must stay open to the operator, and only to it."""
    docs = render_docs({"networkPolicy": {"allowExternal": False}, "ray": {"workers": [
        {"name": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
         "rayStartParams": {"dashboard-agent-listen-port": "52366"},
         "resources": {"limits": {"cpu": "1"}}}]}})
    policy = one(docs, "NetworkPolicy", "rel-funnel-ray")
    groups = {g: spec for g, spec, _ in ray_groups(one(docs, "RayService"))}
    head = {**groups["head"]["template"]["metadata"]["labels"], "ray.io/node-type": "head"}
    worker = {**groups["cpu"]["template"]["metadata"]["labels"], "ray.io/node-type": "worker"}
    for port in (8000, 8265, 52365):
        assert admits(policy, head, OPERATOR, OPERATOR_NS, port), port
    assert admits(policy, worker, OPERATOR, OPERATOR_NS, 52366)
    stranger = {"app": "curl"}
    for port in (8000, 8265, 52365):
        assert not admits(policy, head, stranger, OPERATOR_NS, port), port


# ---- 7. the CRDs ---------------------------------------------------------------------------

# what a cluster's discovery lists without KubeRay (Helm's own list has no kinds)
CLUSTER = ["v1", "v1/Service", "v1/Pod", "apps/v1", "apps/v1/Deployment",
           "networking.k8s.io/v1", "networking.k8s.io/v1/NetworkPolicy"]


def test_an_install_without_the_kuberay_crds_fails_naming_kuberay() -> None:
    with pytest.raises(helm_python.HelmError) as e:
        render_docs({}, api_versions=CLUSTER)
    message = str(e.value)
    assert "KubeRay" in message and "RayService" in message and "kuberay-operator" in message
    assert "kuberay.checkCRDs" in message
    with_ray = [*CLUSTER, "ray.io/v1", "ray.io/v1/RayService"]
    assert one(render_docs({}, api_versions=with_ray), "RayService")
    with pytest.raises(helm_python.HelmError, match="RayJob"):
        render_docs({"training": {"enabled": True}}, api_versions=with_ray)
    assert render_docs({"training": {"enabled": True}},
                       api_versions=[*with_ray, "ray.io/v1/RayJob"])
    assert render_docs({"kuberay": {"checkCRDs": False}}, api_versions=CLUSTER)
    # `helm template` / `helm lint` without a cluster: Helm's list, no kinds, no check
    assert render_docs({"training": {"enabled": True}})
    assert render_docs({}, api_versions=["ray.io/v1/RayService"])


# ---- 8. pod templates that a chart upgrade leaves alone -------------------------------------

def test_a_chart_version_bump_leaves_the_ray_pod_templates_unchanged(tmp_path: Path) -> None:
    """KubeRay builds a new cluster on any pod-template change; the chart's version and
    commonLabels belong on the RayService, not in its pods."""
    bumped = tmp_path / "funnel"
    shutil.copytree(h.CHART, bumped)  # links followed
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"] = "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    values = {"commonLabels": {"team": "feed"}}
    old, new = (one(render_docs(values, chart), "RayService") for chart in (h.CHART, bumped))
    assert old["metadata"]["labels"]["helm.sh/chart"] == "funnel-" + str(
        yaml.safe_load((h.CHART / "Chart.yaml").read_text())["version"])
    assert new["metadata"]["labels"]["helm.sh/chart"] == "funnel-9.9.9"
    assert new["metadata"]["labels"]["team"] == "feed"
    assert old["spec"]["rayClusterConfig"] == new["spec"]["rayClusterConfig"]
    for _, group, _ in ray_groups(new):
        labels = group["template"]["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "team" not in labels, labels
        assert labels["app.kubernetes.io/instance"] == "rel"


# ---- 9. gRPC follows the serving cluster ----------------------------------------------------

def test_grpc_is_on_the_serve_service_kuberay_keeps_on_the_serving_cluster() -> None:
    """KubeRay sets ray.io/serve=true on every RayService worker (pod.go, BuildPod) of either
    cluster during an upgrade, so no Service of the chart's own can tell the serving cluster;
    KubeRay's serve Service selects ray.io/cluster=<serving cluster> and carries the head's
    ports named "serve" and "serve-*" (service.go, BuildServeService, isServingPort)."""
    docs = h.rendered("cpu-only-values.yaml")
    service = one(docs, "RayService")["spec"]
    ports = {p["name"]: p for p in service["serveService"]["spec"]["ports"]}
    assert ports["serve-grpc"] == {"name": "serve-grpc", "port": 9000,
                                   "targetPort": "serve-grpc", "protocol": "TCP",
                                   "appProtocol": "grpc"}
    for group, _, c in ray_groups(one(docs, "RayService")):
        assert {"name": "serve-grpc", "containerPort": 9000, "protocol": "TCP"} in c["ports"]
        assert not any(p["name"] == "grpc" for p in c["ports"]), group
    # no Service of the chart's selects Ray pods: it would span both clusters in an upgrade
    ray_pod = {"app.kubernetes.io/name": "funnel", "app.kubernetes.io/instance": "rel",
               "app.kubernetes.io/component": "ray-worker", "ray.io/serve": "true"}
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"].get("selector") or {}
        assert not all(ray_pod.get(k) == v for k, v in selector.items()), svc["metadata"]


# ---- 10. the RayJob's name ------------------------------------------------------------------

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(("values", "release"), [
    ({"fullnameOverride": "f" * 63}, "rel"),
    ({"fullnameOverride": "feed-ranking-production-europe-west4-blue-deployment"}, "rel"),
    ({}, "a" * 53),  # Helm's longest release name
    ({"nameOverride": "funnel-feed-serving"}, "production-europe-west4"),
])
def test_the_rayjob_name_fits_kuberays_limit(values: dict[str, Any], release: str) -> None:
    """KubeRay refuses a RayJob name over 47 characters (utils/constant.go
    MaxRayJobNameLength, validation.go ValidateRayJobMetadata)."""
    docs = render_docs({**values, "training": {"enabled": True}}, release=release)
    name = one(docs, "RayJob")["metadata"]["name"]
    assert len(name) <= 47 and DNS1035.match(name) and name.endswith("-train"), name


def test_long_rayjob_names_stay_apart_and_short_ones_unchanged() -> None:
    """The hash suffix keeps two releases apart whose names share the kept prefix."""
    prefix = "feed-ranking-production-europe-west4-"
    names = {one(render_docs({"fullnameOverride": prefix + tail, "training": {"enabled": True}}),
                 "RayJob")["metadata"]["name"] for tail in ("blue", "green")}
    assert len(names) == 2 and all(len(n) == 47 for n in names), names
    docs = render_docs({"training": {"enabled": True}})
    assert one(docs, "RayJob")["metadata"]["name"] == "rel-funnel-train"
