"""Rendering the chart (charts/funnel) for the tests, offline: helm-python-sdk embeds Helm's Go
SDK, so no cluster and no helm binary. Not a test module: the chart's test modules share it.

`CHART` is read when a function runs, not when it is defined, so one place names the chart
every helper renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "funnel"
CRDS = ROOT.parent / "shared" / "crds"
LOCAL_CONFIG = ROOT / "serve" / "configs" / "local.yaml"
RULES = ROOT / "monitoring" / "alerts" / "funnel-rules.yaml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "funnel-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
# the newest Kubernetes kubernetes-validate 1.37 knows; the chart's kubeVersion is >=1.29
KUBE_VERSION = "1.37.0"
CUSTOM_GROUPS = ("ray.io/", "monitoring.coreos.com/")


def ci_files() -> list[str]:
    return sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render_files(values: dict[str, Any], chart: Path | None = None, *,
                 api_versions: list[str] | None = None,
                 release: str = "rel") -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included). `api_versions`: what Helm's
    .Capabilities.APIVersions lists, as `helm template --api-versions` sets it; a real
    cluster's discovery lists each served kind ("apps/v1/Deployment"). Chart.render has no
    such option; the library's render call takes it."""
    with helm_python.Chart.load(chart or CHART) as c:
        if api_versions is None:
            return c.render(values, name=release, namespace="feed")
        opts = {"name": release, "namespace": "feed", "api_versions": api_versions}
        out: dict[str, str] = json.loads(_native.call_string(
            "helm_render", c._raw(), json.dumps(values), json.dumps(opts)))
        return out


def render_docs(values: dict[str, Any], chart: Path | None = None, *,
                api_versions: list[str] | None = None,
                release: str = "rel") -> list[dict[str, Any]]:
    """Every object the chart renders with `values` (NOTES.txt left out)."""
    out = render_files(values, chart, api_versions=api_versions, release=release)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


def render_notes(values: dict[str, Any], chart: Path | None = None) -> str:
    out = render_files(values, chart)
    return next(text for path, text in out.items() if path.endswith("/NOTES.txt"))


@cache
def rendered(ci_file: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_docs(ci_values(ci_file)))


def one(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str,
        name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r}"
    return found[0]


def serve_config(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod the object makes."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        yield "pod", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield "template", spec["template"]["spec"]
    elif kind in ("RayService", "RayJob"):
        cluster = spec["rayClusterConfig" if kind == "RayService" else "rayClusterSpec"]
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for g in cluster.get("workerGroupSpecs", []):
            yield f"worker group {g['groupName']}", g["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]


def embedded_files(chart: Path) -> dict[str, bytes]:
    """The chart's non-template files as Helm loads them (links followed)."""
    with helm_python.Chart.load(chart) as c:
        return {f["name"]: f["data"].encode() if isinstance(f["data"], str) else bytes(f["data"])
                for f in c.files}
