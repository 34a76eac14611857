"""The chart's objects beyond the serving stack: PodDisruptionBudgets, the Grafana dashboard's
ConfigMap, and the Ingresses and Gateway API routes to the serve Service."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import KUBE_VERSION, one, render_docs


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# ---- 12. PodDisruptionBudgets -------------------------------------------------------------

def test_disruption_budgets_cover_the_ray_workers_and_triton() -> None:
    docs = render_docs({})
    pdbs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(pdbs) == {"rel-funnel-ray-workers", "rel-funnel-triton"}
    for pdb in pdbs.values():
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        kubernetes_validate.validate(pdb, KUBE_VERSION, strict=True)
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    workers = pdbs["rel-funnel-ray-workers"]["spec"]["selector"]
    for g in cluster["workerGroupSpecs"]:
        assert selects(workers, g["template"]["metadata"]["labels"])
    # the head is one pod: a budget on it would block every drain
    assert not selects(workers, cluster["headGroupSpec"]["template"]["metadata"]["labels"])
    triton = one(docs, "Deployment", "rel-funnel-triton")["spec"]["template"]["metadata"]
    assert selects(pdbs["rel-funnel-triton"]["spec"]["selector"], triton["labels"])


def test_disruption_budgets_are_configurable_and_take_one_bound() -> None:
    docs = render_docs({"ray": {"podDisruptionBudget": {"minAvailable": "50%",
                                                        "maxUnavailable": ""}},
                        "triton": {"podDisruptionBudget": {"enabled": False}}})
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert [p["metadata"]["name"] for p in pdbs] == ["rel-funnel-ray-workers"]
    assert pdbs[0]["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdbs[0]["spec"]
    with pytest.raises(helm_python.HelmError, match=r"ray\.podDisruptionBudget: both"):
        render_docs({"ray": {"podDisruptionBudget": {"minAvailable": 1}}})


# ---- 13. the Grafana dashboard ------------------------------------------------------------

LINK = Path("files") / "funnel-dashboard.json"


def test_the_grafana_dashboard_ships_unchanged_from_its_one_source(tmp_path: Path) -> None:
    """files/funnel-dashboard.json links to monitoring/grafana/funnel-dashboard.json (so the two
    cannot drift); the packaged chart carries its content."""
    link = h.CHART / LINK
    assert link.is_symlink()
    assert (link.parent / os.readlink(link)).resolve() == h.DASHBOARD.resolve()
    with helm_python.Chart.load(h.CHART) as c:
        package = Path(c.save(tmp_path))
    for chart in (h.CHART, package):
        assert h.embedded_files(chart)[LINK.as_posix()] == h.DASHBOARD.read_bytes(), chart


def test_the_grafana_dashboard_configmap_carries_the_sidecars_label() -> None:
    assert not [d for d in render_docs({}) if d["metadata"]["name"].endswith("-dashboard")]
    docs = h.rendered("gpu-values.yaml")
    cm = one(docs, "ConfigMap", "rel-funnel-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Funnel"}
    text = cm["data"]["funnel-dashboard.json"]
    assert text == h.DASHBOARD.read_text()
    assert json.loads(text)["uid"] == "funnel-overview"
    # another sidecar label, another namespace
    cm = one(render_docs({"monitoring": {"grafanaDashboard": {
        "enabled": True, "labels": {"dashboards": "funnel"}, "namespace": "monitoring"}}}),
        "ConfigMap", "rel-funnel-grafana-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dashboards"] == "funnel"


# ---- 14. Ingress and Gateway API routes ---------------------------------------------------

def test_ingresses_route_to_the_serve_service_kuberay_creates() -> None:
    docs = h.rendered("cpu-only-values.yaml")
    service = one(docs, "RayService")["spec"]["serveService"]
    ports = {p["name"] for p in service["spec"]["ports"]}
    http, grpc = (one(docs, "Ingress", f"rel-funnel-{k}") for k in ("http", "grpc"))
    for ing, host, port in ((http, "feed.example.com", "serve"),
                            (grpc, "grpc.feed.example.com", "serve-grpc")):
        kubernetes_validate.validate(ing, KUBE_VERSION, strict=True)
        assert ing["spec"]["ingressClassName"] == "nginx"
        [rule] = ing["spec"]["rules"]
        assert rule["host"] == host and ing["spec"]["tls"][0]["hosts"] == [host]
        [path] = rule["http"]["paths"]
        assert path["backend"]["service"] == {"name": service["metadata"]["name"],
                                              "port": {"name": port}}
        assert port in ports
    annotations = grpc["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    # off by default; one host-less rule when no host is given
    assert not [d for d in render_docs({}) if d["kind"] == "Ingress"]
    [any_host] = one(render_docs({"serve": {"kubernetesIngress": {"http": {"enabled": True}}}}),
                     "Ingress")["spec"]["rules"]
    assert "host" not in any_host


def test_gateway_routes_attach_the_serve_service_to_a_gateway() -> None:
    parent = [{"name": "web", "namespace": "gateway-system", "sectionName": "https"}]
    docs = render_docs({"serve": {"gatewayRoutes": {
        "http": {"enabled": True, "parentRefs": parent, "hostnames": ["feed.example.com"]},
        "grpc": {"enabled": True, "parentRefs": parent}}}})
    http, grpc = one(docs, "HTTPRoute"), one(docs, "GRPCRoute")
    for route in (http, grpc):
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"] == parent
    assert http["spec"]["hostnames"] == ["feed.example.com"]
    assert http["spec"]["rules"] == [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": "rel-funnel-serve", "port": 8000}]}]
    assert grpc["spec"]["rules"] == [{"backendRefs": [{"name": "rel-funnel-serve", "port": 9000}]}]
    assert not [d for d in render_docs({}) if d["kind"] in ("HTTPRoute", "GRPCRoute")]


@pytest.mark.parametrize(("values", "named"), [
    ({"serve": {"grpc": {"enabled": False},
                "kubernetesIngress": {"grpc": {"enabled": True}}}},
     "serve.kubernetesIngress.grpc.enabled"),
    ({"serve": {"grpc": {"enabled": False},
                "gatewayRoutes": {"grpc": {"enabled": True, "parentRefs": [{"name": "g"}]}}}},
     "serve.gatewayRoutes.grpc.enabled"),
    ({"serve": {"gatewayRoutes": {"http": {"enabled": True}}}},
     "serve.gatewayRoutes.http.parentRefs"),
])
def test_routes_that_cannot_work_fail_naming_the_value(values: dict[str, Any],
                                                       named: str) -> None:
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values)
    assert named in str(e.value), str(e.value)
