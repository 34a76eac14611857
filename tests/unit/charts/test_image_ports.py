"""The ports the chart's containers serve on by default are the ports the image declares
(the Dockerfile's EXPOSE): Serve's HTTP and gRPC, Triton's HTTP, gRPC and metrics (`funnel
triton`'s, from serve/configs/local.yaml), the drift monitor's metrics. Ray's own ports (GCS,
dashboard, agent, client, metrics export) are Ray's defaults and not the image's to declare."""

from __future__ import annotations

from typing import Any

from dockerfile_parse import DockerfileParser

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import one, render_docs

# the Ray container's ports that are Serve's (the chart's names, then and now)
SERVE_PORTS = {"serve", "serve-grpc", "grpc"}


def exposed() -> set[int]:
    """EXPOSE of the Dockerfile's final stage."""
    parser = DockerfileParser(path=str(h.DOCKERFILE), env_replace=False)
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(item)
    ports: set[int] = set()
    for item in stages[-1]:
        if item["instruction"] == "EXPOSE":
            ports |= {int(p.split("/")[0]) for p in item["value"].split()}
    return ports


def chart_ports() -> dict[str, int]:
    """{where: port} of every port the chart's containers serve on with the default values."""
    docs = render_docs({})
    out = {}
    worker = one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    for p in worker["template"]["spec"]["containers"][0]["ports"]:
        if p["name"] in SERVE_PORTS:
            out[f"Ray Serve {p['name']}"] = p["containerPort"]
    for name in ("triton", "drift"):
        pod = one(docs, "Deployment", f"rel-funnel-{name}")["spec"]["template"]["spec"]
        for p in pod["containers"][0]["ports"]:
            out[f"{name} {p['name']}"] = p["containerPort"]
    return out


def test_the_image_exposes_every_port_the_chart_serves_on() -> None:
    ports = chart_ports()
    assert len(ports) == 6, ports  # serve, serve-grpc, Triton's three, drift's metrics
    missing = {where: port for where, port in ports.items() if port not in exposed()}
    assert not missing, f"not in the Dockerfile's EXPOSE {sorted(exposed())}: {missing}"
