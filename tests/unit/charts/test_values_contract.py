"""What the values accept and what they turn into: Serve autoscaling, the image reference, the
volumes' access modes, and the values the schema (and validateValues, for a render that skips
the schema) refuses, naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import one, pod_specs, render_docs, render_notes, serve_config


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in serve_config(docs)["applications"][0]["deployments"]}


# ---- 3. Serve autoscaling -------------------------------------------------------------------

# Ray's own config models use pydantic-v1-style Field extras
@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
def test_an_autoscaling_config_replaces_the_replica_count() -> None:
    """Ray refuses an integer num_replicas beside an autoscaling_config
    (ray.serve.schema.DeploymentSchema.validate_num_replicas_and_autoscaling_config), and the
    local config and the chart's defaults both give FeedIngress one."""
    from ray.serve.schema import ServeDeploySchema

    scaling = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 32}
    docs = render_docs({"serve": {"deployments": {
        "FeedIngress": {"autoscaling_config": scaling, "max_ongoing_requests": 48}}}})
    feed = deployments(docs)["FeedIngress"]
    assert "num_replicas" not in feed, feed
    assert feed["autoscaling_config"] == scaling and feed["max_ongoing_requests"] == 48
    ServeDeploySchema.model_validate(serve_config(docs))
    # fixed replicas stay as they were
    assert deployments(render_docs({}))["FeedIngress"]["num_replicas"] == 2


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
def test_num_replicas_auto_is_serve_autoscaling() -> None:
    from ray.serve.schema import ServeDeploySchema

    docs = render_docs({"serve": {"deployments": {
        "ModerationModels": {"num_replicas": "auto"},
        "ShadowScorer": {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 2}}}}})
    got = deployments(docs)
    assert got["ModerationModels"]["num_replicas"] == "auto"
    assert got["ShadowScorer"]["num_replicas"] == "auto"
    assert got["ShadowScorer"]["autoscaling_config"] == {"max_replicas": 2}
    assert got["RolloutController"]["num_replicas"] == 1
    schema = ServeDeploySchema.model_validate(serve_config(docs))
    scaled = {d.name for d in schema.applications[0].deployments if d.is_autoscaling_configured()}
    assert scaled == {"ModerationModels", "ShadowScorer"}


# ---- 5. the image reference -----------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
GPU_DIGEST = "sha256:" + "b" * 64


def images(docs: list[dict[str, Any]]) -> dict[str, str]:
    """{container name: image} of every container the chart renders."""
    out = {}
    for doc in docs:
        for _, spec in pod_specs(doc):
            for c in spec.get("initContainers", []) + spec["containers"]:
                out[f"{doc['kind']}/{c['name']}"] = c["image"]
    return out


def test_the_image_is_registry_repository_and_tag_or_digest() -> None:
    gpu = {"triton": {"gpu": {"enabled": True}, "resources": {"limits": {"nvidia.com/gpu": 1}}}}
    tagged = images(render_docs({**gpu, "image": {
        "registry": "registry.example.com:5000", "repository": "ml/funnel", "tag": "1.2.3"}}))
    assert tagged["RayService/ray-head"] == "registry.example.com:5000/ml/funnel:1.2.3"
    assert tagged["Deployment/triton"] == "registry.example.com:5000/ml/funnel:1.2.3-cuda"
    pinned = images(render_docs({**gpu, "image": {
        "registry": "registry.example.com", "repository": "funnel", "tag": "1.2.3",
        "digest": DIGEST, "gpuDigest": GPU_DIGEST}}))
    assert pinned["RayService/ray-worker"] == f"registry.example.com/funnel@{DIGEST}"
    assert pinned["Deployment/drift"] == f"registry.example.com/funnel@{DIGEST}"
    assert pinned["Deployment/triton"] == f"registry.example.com/funnel@{GPU_DIGEST}"
    # a repository that names its registry itself, as the ci files do
    assert set(images(h.rendered("cpu-only-values.yaml")).values()) == {
        "registry.example.com/funnel:0.1.0"}


def test_notes_name_the_image_and_say_to_push_it_when_it_has_no_registry() -> None:
    notes = render_notes({})
    assert "Image: funnel:0.1.0" in notes
    assert "docker.io/library/funnel" in notes and "`make image`" in notes
    assert "image.registry" in notes and "image.repository" in notes
    for values in ({"image": {"registry": "registry.example.com"}},
                   {"image": {"repository": "localhost:5000/funnel"}}):
        notes = render_notes(values)
        assert "make image" not in notes and "Image: " in notes, values


# ---- 6. volumes ---------------------------------------------------------------------------

def test_volumes_default_to_read_write_once_and_take_modes_and_class() -> None:
    """ReadWriteMany, the old default, is not offered by the default storage classes of most
    clusters (the PVC stays Pending); ReadWriteOnce is, and NOTES.txt says when it is not
    enough (pods on several nodes)."""
    pvcs = {d["metadata"]["name"]: d["spec"] for d in render_docs({})
            if d["kind"] == "PersistentVolumeClaim"}
    assert set(pvcs) == {"rel-funnel-bundles", "rel-funnel-data"}
    for name, spec in pvcs.items():
        assert spec["accessModes"] == ["ReadWriteOnce"], name
        assert "storageClassName" not in spec, name
    assert "ReadWriteOnce volumes: rel-funnel-bundles" in render_notes({})
    rwx = {"accessModes": ["ReadWriteMany"], "storageClass": "nfs-client"}
    values = {"storage": {"bundles": rwx, "data": rwx}}
    for spec in (d["spec"] for d in render_docs(values) if d["kind"] == "PersistentVolumeClaim"):
        assert spec["accessModes"] == ["ReadWriteMany"]
        assert spec["storageClassName"] == "nfs-client"
    assert "ReadWriteOnce" not in render_notes(values)


# ---- 11. values the schema refuses --------------------------------------------------------

# case -> (values, named by validateValues, named by the schema: its JSON pointer)
BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "image tag with a space": ({"image": {"tag": "1.0 beta"}}, "image.tag", "/image/tag"),
    "image repository in capitals": (
        {"image": {"repository": "Registry.Example.com/Funnel App"}}, "image.repository",
        "/image/repository"),
    "image registry with a scheme": (
        {"image": {"registry": "https://registry.example.com"}}, "image.registry",
        "/image/registry"),
    "image digest that is a tag": ({"image": {"digest": "latest"}}, "image.digest",
                                   "/image/digest"),
    "ray version with a suffix": ({"ray": {"version": "2.60.0; rm -rf /"}}, "ray.version",
                                  "/ray/version"),
    "pod as root": ({"podSecurityContext": {"runAsUser": 0}}, "podSecurityContext.runAsUser",
                    "/podSecurityContext/runAsUser"),
    "container as root": ({"containerSecurityContext": {"runAsUser": 0}},
                          "containerSecurityContext.runAsUser",
                          "/containerSecurityContext/runAsUser"),
    "pod may run as root": ({"podSecurityContext": {"runAsNonRoot": False}},
                            "podSecurityContext.runAsNonRoot",
                            "/podSecurityContext/runAsNonRoot"),
    "container may run as root": ({"containerSecurityContext": {"runAsNonRoot": False}},
                                  "containerSecurityContext.runAsNonRoot",
                                  "/containerSecurityContext/runAsNonRoot"),
    "privileged container": ({"containerSecurityContext": {"privileged": True}},
                             "containerSecurityContext.privileged",
                             "/containerSecurityContext/privileged"),
    "privilege escalation": ({"containerSecurityContext": {"allowPrivilegeEscalation": True}},
                             "containerSecurityContext.allowPrivilegeEscalation",
                             "/containerSecurityContext/allowPrivilegeEscalation"),
    "env name with a dash": ({"extraEnv": [{"name": "MY-VAR", "value": "1"}]},
                             "extraEnv[0].name", "/extraEnv/0/name"),
    "env without a name": ({"extraEnv": [{"value": "1"}]}, "extraEnv[0].name", "/extraEnv/0"),
    "env with value and valueFrom": (
        {"extraEnv": [{"name": "A", "value": "1",
                       "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        "extraEnv[0]", "/extraEnv/0"),
}




@pytest.mark.parametrize("schema", [True, False], ids=["schema", "validateValues"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_fail_naming_the_value(case: str, schema: bool,
                                          chart_without_schema: Path) -> None:
    values, dotted, pointer = BAD[case]
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values, h.CHART if schema else chart_without_schema)
    message = str(e.value)
    assert (pointer if schema else dotted) in message, message


@pytest.mark.parametrize("schema", [True, False], ids=["schema", "validateValues"])
def test_num_replicas_takes_a_count_or_auto_only(schema: bool,
                                                 chart_without_schema: Path) -> None:
    values = {"serve": {"deployments": {"FeedIngress": {"num_replicas": "many"}}}}
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values, h.CHART if schema else chart_without_schema)
    named = "serve.deployments.FeedIngress.num_replicas"
    assert (("/" + named.replace(".", "/")) if schema else named) in str(e.value)


def test_the_closed_schemas_still_take_what_a_cluster_needs() -> None:
    values = {
        "extraEnv": [{"name": "LOG_LEVEL", "value": "debug"},
                     {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "podSecurityContext": {"runAsUser": 2000, "runAsGroup": 0, "fsGroup": 2000,
                               "supplementalGroups": [3000],
                               "seccompProfile": {"type": "RuntimeDefault"}},
        "containerSecurityContext": {"runAsUser": 2000, "readOnlyRootFilesystem": True,
                                     "allowPrivilegeEscalation": False, "privileged": False,
                                     "capabilities": {"drop": ["ALL"]}},
        "image": {"registry": "localhost:5000", "repository": "team/funnel_x",
                  "tag": "v1.2.3_rc-1"},
    }
    head = one(render_docs(values), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["NODE"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert head["template"]["spec"]["securityContext"]["runAsUser"] == 2000
